"""moto_server with its IAM enforcement, given what moto leaves out and logging every decision.

`python tests/moto_iam_server.py -H 127.0.0.1 -p PORT` runs moto_server. moto's enforcement
(INITIAL_NO_AUTH_ACTION_COUNT, here switched on and off at run time through
/moto-api/reset-auth) checks every signed request against the policies of the IAM user or
assumed role whose keys signed it. It is basic (moto/iam/access_control.py):
- the action is "<service>:<operation>", so two operations whose IAM action has another name
  would need a policy AWS rejects; IAM_ACTION renames them as AWS's Service Authorization
  Reference does (Lambda's Invoke is lambda:InvokeFunction; S3's HEAD of a bucket,
  s3:ListBucket);
- only S3 requests carry their resource ARN; every other request is checked against "*", which
  no ARN-scoped statement matches, so resource_arn() gives Lambda, SageMaker, CloudWatch Logs,
  ECR and IAM requests the ARN AWS evaluates (the resource types of the same reference);
- signatures are recomputed over moto's parsed request, which fails for REST GETs (Lambda's
  reads), so checked() skips that check: the access key still decides the principal;
- conditions are not evaluated (a statement with a Condition applies as if it held), nor are
  the actions a request implies (iam:PassRole, Lambda reading the zip from S3), resource
  policies, or S3's 403-instead-of-404 for a missing key without s3:ListBucket.

With COUGHLAB_IAM_DECISIONS set, each decision is appended to that file as a JSON line:
principal, action, resource, allowed, and the operation named by the request's
X-Coughlab-Operation header (tests/iam_enforced.py adds it), so a test can say which actions the
engine checked and compare them with its own map.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from urllib.parse import parse_qs, unquote, urlsplit

from moto.core.authorization import ActionAuthenticatorMixin
from moto.server import main

DECISIONS = os.environ.get("COUGHLAB_IAM_DECISIONS")
OPERATION_HEADER = "X-Coughlab-Operation"
ACCOUNT = "123456789012"  # moto's default account
# moto's "<service>:<operation>" -> the IAM action AWS evaluates for that operation.
IAM_ACTION = {"lambda:Invoke": "lambda:InvokeFunction", "s3:HeadBucket": "s3:ListBucket"}
_lock = threading.Lock()


def lambda_arn(region: str, path: str, query: dict, body: bytes) -> str:
    """Lambda's function ARN, qualified when the request names a version or alias."""
    parts = [unquote(part) for part in path.strip("/").split("/")]
    if len(parts) > 2 and parts[1] == "tags":
        return "/".join(parts[2:])
    if parts[1:] == ["functions"] and body:  # CreateFunction names it in its body
        parts.append(json.loads(body).get("FunctionName", "*"))
    if len(parts) < 3 or parts[1] != "functions":
        return "*"
    name = parts[2].rsplit(":", 1)[-1] if parts[2].startswith("arn:") else parts[2]
    qualifier = query.get("Qualifier", [None])[0]
    if len(parts) > 4 and parts[3] == "aliases":
        qualifier = parts[4]
    arn = f"arn:aws:lambda:{region}:{ACCOUNT}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


def resource_arn(request) -> str:
    """The ARN AWS authorises this request against, for the services moto passes "*" for."""
    service, action, region = request._service, request._action, request._region
    url = urlsplit(request._path)
    if service == "lambda":
        return lambda_arn(region, url.path, parse_qs(url.query), request._body)
    if service in ("sagemaker", "logs", "ecr"):
        try:
            body = json.loads(request._body or b"{}")
        except ValueError:
            return "*"
        if service == "sagemaker" and "TrainingJobName" in body:
            return (f"arn:aws:sagemaker:{region}:{ACCOUNT}:training-job/"
                    f"{body['TrainingJobName'].lower()}")
        if service == "logs" and "logGroupName" in body:
            group = f"arn:aws:logs:{region}:{ACCOUNT}:log-group:{body['logGroupName']}"
            if action == "logs:GetLogEvents":
                return f"{group}:log-stream:{body['logStreamName']}"
            return f"{group}:*"  # the form IAM evaluates for log-group actions
        if service == "ecr" and "repositoryName" in body:
            return f"arn:aws:ecr:{region}:{ACCOUNT}:repository/{body['repositoryName']}"
        return "*"
    if service == "iam":
        data = request._data
        if "RoleName" in data:
            return f"arn:aws:iam::{ACCOUNT}:role/{data['RoleName'][0]}"
        if "UserName" in data:
            return f"arn:aws:iam::{ACCOUNT}:user/{data['UserName'][0]}"
        if "Url" in data:
            return f"arn:aws:iam::{ACCOUNT}:oidc-provider/{urlsplit(data['Url'][0]).netloc}"
    return "*"


def log(request, resource: str, allowed: bool) -> None:
    if not DECISIONS:
        return
    record = {"principal": request._access_key.arn, "action": request._action,
              "resource": resource, "allowed": allowed,
              "operation": request._headers.get(OPERATION_HEADER)}
    with _lock, open(DECISIONS, "a") as out:
        out.write(json.dumps(record) + "\n")


def checked(request_class: type) -> type:
    """`request_class` with AWS's action names, logging each decision."""

    class Checked(request_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._action = IAM_ACTION.get(self._action, self._action)

        def check_signature(self) -> None:
            """Skipped: moto recomputes SigV4 over the request as it parsed it, which does not
            reproduce a REST GET's (the query or headers become its payload), so Lambda's reads
            fail there; which key signed still decides the principal."""

        def check_action_permitted(self, resource: str) -> None:
            if resource == "*" and self._service != "s3":
                resource = resource_arn(self)
            try:
                super().check_action_permitted(resource)
            except Exception:
                log(self, resource, False)
                raise
            log(self, resource, True)

    return Checked


def install() -> None:
    original = ActionAuthenticatorMixin._authenticate_and_authorize_action

    def authorize(self, iam_request_cls: type, resource: str = "*") -> None:
        original(self, checked(iam_request_cls), resource)

    ActionAuthenticatorMixin._authenticate_and_authorize_action = authorize


if __name__ == "__main__":
    install()
    main(sys.argv[1:])
