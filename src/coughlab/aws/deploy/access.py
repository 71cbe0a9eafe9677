"""Who can reach the released alias, and how much it may cost: the Function URL and its cap.

The alias's Function URL (GET: the recording page, POST: the API) gets CORS limited to its own
origin (with auth NONE anyone may invoke it, with AWS_IAM only SigV4-signed callers); then the
function's reserved concurrency is capped where the account's limits allow it (AWS keeps 100
unreserved), or the cap is removed when asked.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from coughlab.aws.deploy import DeployError
from coughlab.aws.deploy.release import FunctionSettings
from coughlab.aws.errors import explain

URL_AUTH_TYPES = ("NONE", "AWS_IAM")
DEFAULT_RESERVED_CONCURRENCY = 10
UNRESERVED_MINIMUM = 100  # concurrent executions AWS keeps unreserved in every account
# Statements granting the public a NONE-auth URL: AWS requires both actions for function URLs.
PUBLIC_URL_STATEMENTS = {
    "coughlab-public-url": {"Action": "lambda:InvokeFunctionUrl", "FunctionUrlAuthType": "NONE"},
    "coughlab-public-url-invoke": {"Action": "lambda:InvokeFunction",
                                   "InvokedViaFunctionUrl": True},
}


@dataclass(frozen=True)
class UrlSettings:
    auth_type: str  # NONE: anyone with the URL; AWS_IAM: only SigV4-signed callers
    # The most concurrent executions: bounds what the URL can cost. None: no cap (removed).
    reserved_concurrency: int | None


def cap_concurrency(lam, name: str, limit: int | None) -> str:
    """Reserve `limit` concurrent executions, which is also their ceiling: requests beyond it
    get 429 instead of starting more (billed) instances. Returns what now bounds the function.

    The account's limits are read first: AWS refuses a reservation that would leave fewer than
    100 unreserved executions (new accounts often have a total of 10), and then the function
    is bounded by what is unreserved anyway, so it gets no cap and the line says why.
    """
    reserved = lam.get_function_concurrency(FunctionName=name).get("ReservedConcurrentExecutions")
    if limit is None:
        if reserved is not None:
            lam.delete_function_concurrency(FunctionName=name)
        return "no reserved concurrency (removed as asked)" if reserved is not None else \
            "no reserved concurrency (as asked)"
    if limit == reserved:
        return f"at most {limit} concurrent executions"
    account = lam.get_account_settings()["AccountLimit"]
    # What this function already reserves returns to the unreserved pool when it changes.
    unreserved = account["UnreservedConcurrentExecutions"] + (reserved or 0)
    if unreserved - limit < UNRESERVED_MINIMUM:
        if reserved is not None:  # an old cap the account can no longer afford stays as it is
            return (f"at most {reserved} concurrent executions (kept: reserving {limit} would "
                    f"leave {unreserved - limit} of the account's "
                    f"{account['ConcurrentExecutions']} unreserved, AWS keeps at least "
                    f"{UNRESERVED_MINIMUM})")
        return (f"no reserved concurrency: reserving {limit} would leave {unreserved - limit} of "
                f"the account's {account['ConcurrentExecutions']} concurrent executions "
                f"unreserved and AWS keeps at least {UNRESERVED_MINIMUM}, so the account's "
                f"{unreserved} unreserved executions bound it; to cap it, request a higher "
                "Lambda 'Concurrent executions' quota at "
                "https://console.aws.amazon.com/servicequotas/home/services/lambda/quotas")
    lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=limit)
    return f"at most {limit} concurrent executions"


def url_origin(function_url: str) -> str:
    """https://abc.lambda-url.eu-west-1.on.aws/ -> https://abc.lambda-url.eu-west-1.on.aws"""
    return function_url.rstrip("/")


def own_origin_cors(function_url: str) -> dict:
    """CORS letting only the URL's own page (GET it, POST audio) call it from a browser."""
    return {"AllowOrigins": [url_origin(function_url)], "AllowMethods": ["GET", "POST"],
            "AllowHeaders": ["content-type"], "MaxAge": 3600}


def ensure_function_url(lam, name: str, alias: str, auth_type: str) -> str:
    """Create the alias's Function URL if it has none, then set its auth and CORS.

    The URL is only known once it exists, so CORS (limited to that URL's origin) is set by an
    update after the create. Returns the URL.
    """
    try:
        function_url = lam.get_function_url_config(FunctionName=name,
                                                   Qualifier=alias)["FunctionUrl"]
    except lam.exceptions.ResourceNotFoundException:
        function_url = lam.create_function_url_config(
            FunctionName=name, Qualifier=alias, AuthType=auth_type)["FunctionUrl"]
    lam.update_function_url_config(FunctionName=name, Qualifier=alias, AuthType=auth_type,
                                   Cors=own_origin_cors(function_url))
    return function_url


def policy_statement_ids(lam, name: str, alias: str) -> set[str]:
    try:
        policy = lam.get_policy(FunctionName=name, Qualifier=alias)["Policy"]
    except lam.exceptions.ResourceNotFoundException:  # no resource policy yet
        return set()
    return {statement.get("Sid") for statement in json.loads(policy)["Statement"]}


def set_public_invoke(lam, name: str, alias: str, public: bool) -> None:
    """Let anyone invoke the alias through its URL (public), or take that permission away."""
    present = policy_statement_ids(lam, name, alias)
    for sid, grant in PUBLIC_URL_STATEMENTS.items():
        if public and sid not in present:
            lam.add_permission(FunctionName=name, Qualifier=alias, StatementId=sid,
                               Principal="*", **grant)
        elif not public and sid in present:
            lam.remove_permission(FunctionName=name, Qualifier=alias, StatementId=sid)


class CapFailed(DeployError):
    """The Function URL exists, but setting the concurrency cap failed."""


def publish_url(fn: FunctionSettings, url: UrlSettings,
                region: str | None = None) -> tuple[str, str]:
    """Expose the alias through its Function URL, then cap concurrency; returns (URL, cap line).

    The URL comes first so that a cap the account refuses cannot leave the deploy without one;
    a failed cap raises CapFailed naming the URL.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    lam = boto3.client("lambda", region_name=region)
    function_url = ensure_function_url(lam, fn.name, fn.alias, url.auth_type)
    set_public_invoke(lam, fn.name, fn.alias, public=url.auth_type == "NONE")
    try:
        return function_url, cap_concurrency(lam, fn.name, url.reserved_concurrency)
    except (BotoCoreError, ClientError) as err:
        raise CapFailed(f"Function URL {function_url} is up, but the concurrency cap was not "
                        f"set: {explain(err)}") from None
