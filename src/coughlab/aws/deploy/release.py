"""Lambda releases: upload, publish a version, smoke-test it, then move the alias; rollback.

Each step only after the previous one succeeded: upload the zip to S3 (or point at an ECR
image), create or update the function and wait until Lambda has applied it, tag the function
with the git commit and model version (Lambda tags functions, not versions), publish a version
whose description names both, wait until it is Active, smoke-invoke that version (the page GET
and one bundled clip POST, which must score with this model) and only then move the alias; a
failed smoke test leaves the alias where it was. The alias's description keeps the versions it
served, newest first, so a rollback can move it back. `python -m coughlab.trace
<model_version>` goes on from there.
"""
from __future__ import annotations

import io
import json
import re
import wave
from dataclasses import dataclass

from coughlab.aws.deploy import DeployError
from coughlab.aws.deploy.package import RUNTIME, Package
from coughlab.function_url import function_url_event
from coughlab.progress import progress_bar

DESCRIPTION_LIMIT = 256  # characters Lambda allows in a version's or an alias's description
ALIAS_HISTORY_PREFIX = "coughlab history:"  # alias description: versions it served, newest first
SMOKE_SAMPLE_RATE = 16000
# What version_description writes: a version the deploy published after the gate.
RELEASED_DESCRIPTION = re.compile(r"model \S+, git [0-9a-f]{40}, ")
# The smoke requests carry a fixed id and time: every deploy sends the same bytes.
SMOKE_REQUEST_TIME = 0.0


@dataclass(frozen=True)
class FunctionSettings:
    name: str
    role: str | None
    memory_mb: int
    timeout_s: int
    alias: str


def version_description(meta: dict, code: str) -> str:
    """A published version's description: model, git commit and code, within Lambda's limit."""
    return f"model {meta['version']}, git {meta['git_commit']}, {code}"[:DESCRIPTION_LIMIT]


def release_tags(meta: dict) -> dict[str, str]:
    """Function tags naming what $LATEST now holds (Lambda cannot tag versions or aliases)."""
    return {"coughlab:git_commit": meta["git_commit"], "coughlab:model_version": meta["version"]}


def tag_function(lam, name: str, tags: dict[str, str]) -> None:
    arn = lam.get_function_configuration(FunctionName=name)["FunctionArn"]
    lam.tag_resource(Resource=":".join(arn.split(":")[:7]), Tags=tags)  # unqualified ARN


def upload(s3, package: Package, bucket: str, key: str) -> None:
    """Upload the zip; an AWS refusal surfaces as botocore's ClientError, not boto3's wrapper."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError

    with progress_bar(total=package.zipped_bytes, desc=f"s3://{bucket}/{key}", unit="B",
                      unit_scale=True, leave=False) as bar:
        try:
            s3.upload_file(str(package.path), bucket, key, Callback=bar.update)
        except S3UploadFailedError as err:  # boto3 raises it while handling the ClientError
            if isinstance(err.__context__, ClientError):
                raise err.__context__ from None
            raise


def function_exists(lam, name: str) -> bool:
    try:
        lam.get_function(FunctionName=name)
    except lam.exceptions.ResourceNotFoundException:
        return False
    return True


def install_code(lam, fn: FunctionSettings, code: dict, exists: bool) -> str:
    """Create the function, or update its code and settings; wait until Lambda is done.

    `code` is {"S3Bucket", "S3Key"} for a zip or {"ImageUri"} for a container image.
    Returns the CodeSha256 Lambda computed for the code it now holds.
    """
    is_image = "ImageUri" in code
    settings = {"MemorySize": fn.memory_mb, "Timeout": fn.timeout_s}
    if not is_image:  # an image brings its own runtime and CMD
        settings |= {"Runtime": RUNTIME, "Handler": "handler.handler"}
    if not exists:
        created = lam.create_function(FunctionName=fn.name, Role=fn.role, Architectures=["x86_64"],
                                      PackageType="Image" if is_image else "Zip", Code=code,
                                      **settings)
        lam.get_waiter("function_active_v2").wait(FunctionName=fn.name)
        return created["CodeSha256"]
    updated = lam.update_function_code(FunctionName=fn.name, Architectures=["x86_64"], **code)
    lam.get_waiter("function_updated_v2").wait(FunctionName=fn.name)
    lam.update_function_configuration(FunctionName=fn.name, **settings)
    lam.get_waiter("function_updated_v2").wait(FunctionName=fn.name)
    return updated["CodeSha256"]


class SmokeTestFailed(DeployError):
    """The new version did not answer the smoke requests as it should; the alias did not move."""


def alias_history(description: str) -> list[str]:
    """The versions an alias served, newest first, from its description (see point_alias)."""
    if not description.startswith(ALIAS_HISTORY_PREFIX):
        return []
    return description[len(ALIAS_HISTORY_PREFIX):].split()


def is_published_version(version: str) -> bool:
    """A number Lambda gave a published version; not $LATEST, an alias or anything else."""
    return version.isascii() and version.isdigit() and not version.startswith("0")


def history_description(versions: list[str]) -> str:
    """`coughlab history: 7 5 3`, cut to what fits Lambda's 256-character alias description."""
    kept: list[str] = []
    for version in versions:
        if len(" ".join([ALIAS_HISTORY_PREFIX, *kept, version])) > DESCRIPTION_LIMIT:
            break
        kept.append(version)
    return " ".join([ALIAS_HISTORY_PREFIX, *kept])


def current_alias(lam, name: str, alias: str) -> dict | None:
    try:
        return lam.get_alias(FunctionName=name, Name=alias)
    except lam.exceptions.ResourceNotFoundException:
        return None


def point_alias(lam, name: str, alias: str, version: str, current: dict | None) -> None:
    """Move (or create) the alias, recording the version it served before in its history."""
    if current is None:
        lam.create_alias(FunctionName=name, Name=alias, FunctionVersion=version,
                         Description=history_description([version]))
        return
    if current["FunctionVersion"] == version:  # Lambda re-published the same code and settings
        return
    served = current["FunctionVersion"]
    history = alias_history(current.get("Description", "")) or [served]
    if history[0] != served:  # moved by hand since: start from there
        history = [served, *history]
    # Only published versions go on: $LATEST or a hand-written word never becomes a rollback
    # target, however the alias was moved.
    history = [number for number in history if is_published_version(number)]
    lam.update_alias(FunctionName=name, Name=alias, FunctionVersion=version,
                     Description=history_description([version, *history]))


def smoke_clip(seconds: float = 1.5) -> bytes:
    """A deterministic cough-like wav (three decaying bursts, 16 kHz PCM16) for the smoke POST."""
    import numpy as np

    t = np.arange(int(SMOKE_SAMPLE_RATE * seconds)) / SMOKE_SAMPLE_RATE
    bursts = sum(np.exp(-25 * np.clip(t - start, 0, None)) * (t >= start)
                 for start in (0.1, 0.5, 0.9))
    tone = np.sin(2 * np.pi * 350 * t) + 0.5 * np.sin(2 * np.pi * 1330 * t)
    pcm = np.round(0.4 * 32767 * bursts * tone / 1.5).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SMOKE_SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def smoke_events() -> list[dict]:
    """The two requests of the smoke test, as the Function URL would hand them over: the page,
    then the bundled clip."""
    fixed = {"now": SMOKE_REQUEST_TIME}
    return [function_url_event("GET", request_id="coughlab-smoke-get", **fixed),
            function_url_event("POST", "/", {"content-type": "audio/wav"}, smoke_clip(),
                               request_id="coughlab-smoke-post", **fixed)]


def invoke(lam, name: str, version: str, event: dict) -> dict:
    """Invoke one version synchronously; its response (statusCode, headers, body)."""
    answer = lam.invoke(FunctionName=name, Qualifier=version, Payload=json.dumps(event).encode())
    payload = answer["Payload"].read()
    if "FunctionError" in answer:
        raise SmokeTestFailed(f"the function raised ({answer['FunctionError']}): "
                              f"{payload.decode(errors='replace')[:300]}")
    try:
        response = json.loads(payload)
    except json.JSONDecodeError:
        response = None
    if not (isinstance(response, dict) and "statusCode" in response):
        raise SmokeTestFailed(f"the answer is not an HTTP response: {payload[:300]!r}")
    return response


def header(response: dict, name: str) -> str:
    headers = response.get("headers") or {}
    return next((str(v) for k, v in headers.items() if k.lower() == name), "")


def smoke_test(lam, name: str, version: str, model_version: str) -> str:
    """GET the page and POST the smoke clip to `version`; raise SmokeTestFailed unless both work.

    The POST must score with the model the gate passed (model_version), so a version that
    imports, answers and serves the right model is the only kind the alias moves to.
    """
    page_request, clip_request = smoke_events()
    page = invoke(lam, name, version, page_request)
    if page["statusCode"] != 200 or not header(page, "content-type").startswith("text/html"):
        raise SmokeTestFailed(f"GET / answered {page['statusCode']} "
                              f"{header(page, 'content-type') or 'without a Content-Type'}, "
                              "not the recording page")
    scored = invoke(lam, name, version, clip_request)
    try:
        result = json.loads(scored.get("body") or "")
    except json.JSONDecodeError:
        result = {}
    if scored["statusCode"] != 200 or not isinstance(result, dict):
        raise SmokeTestFailed(f"POST of the smoke clip answered {scored['statusCode']}: "
                              f"{str(scored.get('body'))[:300]}")
    p_positive = result.get("p_positive")
    if not (isinstance(p_positive, (int, float)) and 0 <= p_positive <= 1):
        raise SmokeTestFailed(f"POST of the smoke clip gave no probability: {result}")
    if result.get("model_version") != model_version:
        raise SmokeTestFailed(f"the version serves model {result.get('model_version')}, not "
                              f"{model_version} that passed the gate")
    return f"page OK, smoke clip p_positive {p_positive:.3f} from model {model_version}"


def release(lam, fn: FunctionSettings, code_sha256: str, description: str,
            model_version: str) -> str:
    """Publish $LATEST (only if it still holds our code), smoke-test it once it is Active, and
    only then move the alias.

    A version that fails to become Active (botocore's WaiterError) or its smoke test
    (SmokeTestFailed, which names the version and where the alias stays) leaves the alias
    serving what it served. Returns the new version.
    """
    version = lam.publish_version(FunctionName=fn.name, CodeSha256=code_sha256,
                                  Description=description)["Version"]
    lam.get_waiter("published_version_active").wait(FunctionName=fn.name, Qualifier=version)
    current = current_alias(lam, fn.name, fn.alias)
    try:
        print(f"deploy: smoke test of version {version}: "
              f"{smoke_test(lam, fn.name, version, model_version)}")
    except SmokeTestFailed as err:
        stays = (f"alias {fn.alias} stays on version {current['FunctionVersion']}" if current
                 else f"alias {fn.alias} not created")
        raise SmokeTestFailed(f"version {version} failed its smoke test: {err}; {stays}") from None
    point_alias(lam, fn.name, fn.alias, version, current)
    return version


def rollback(fn: FunctionSettings, region: str | None = None) -> tuple[str, str]:
    """Move the alias back to the version it served before; returns (from, to).

    Only to a published version the deploy released: one the history names by its number,
    other than the one served now, that still exists with the description a deploy gives it
    (so it passed the gate, and its smoke test before the alias first moved to it).
    """
    import boto3

    lam = boto3.client("lambda", region_name=region)
    current = current_alias(lam, fn.name, fn.alias)
    if current is None:
        if not function_exists(lam, fn.name):
            raise DeployError(f"Lambda function {fn.name!r} does not exist"
                              f"{f' in {region}' if region else ''}: nothing to roll back")
        raise DeployError(f"{fn.name} has no alias {fn.alias!r}: nothing to roll back")
    description = current.get("Description", "")
    history = alias_history(description)
    unpublished = [version for version in history if not is_published_version(version)]
    if unpublished:
        raise DeployError(f"alias {fn.alias}'s history ({description!r}) names "
                          f"{unpublished[0]!r}, which is not a published version number; "
                          "move it by hand with `aws lambda update-alias --function-version N`")
    served = current["FunctionVersion"]
    earlier = [version for version in history[1:] if version != served]
    if history[:1] != [served] or not earlier:
        raise DeployError(f"alias {fn.alias} -> version {served} records no earlier version to "
                          "go back to; move it by hand with `aws lambda update-alias "
                          "--function-version N`")
    target = earlier[0]
    require_released(lam, fn.name, target)
    lam.update_alias(FunctionName=fn.name, Name=fn.alias, FunctionVersion=target,
                     Description=history_description(history[history.index(target):]))
    return served, target


def require_released(lam, name: str, version: str) -> None:
    """Refuse a version that no longer exists or that the deploy did not publish."""
    try:
        described = lam.get_function_configuration(FunctionName=name, Qualifier=version)
    except lam.exceptions.ResourceNotFoundException:
        raise DeployError(f"version {version} of {name} no longer exists; move the alias by "
                          "hand with `aws lambda update-alias --function-version N`") from None
    if not RELEASED_DESCRIPTION.match(described.get("Description", "")):
        raise DeployError(f"version {version} of {name} was not published by the deploy (its "
                          f"description {described.get('Description', '')!r} names no gated "
                          "model and commit); not rolling back to it")


def require_role_to_create(lam, fn: FunctionSettings) -> bool:
    """Whether the function exists; a missing one can only be created with a role."""
    exists = function_exists(lam, fn.name)
    if not exists and not fn.role:
        raise DeployError(f"Lambda function {fn.name!r} does not exist; pass --role "
                          "(COUGHLAB_LAMBDA_ROLE), an IAM role ARN Lambda can assume, to create it")
    return exists


def lambda_client(region: str | None, timeout_s: int):
    """A Lambda client whose read timeout outlasts a synchronous invoke of the function."""
    import boto3
    from botocore.config import Config

    return boto3.client("lambda", region_name=region,
                        config=Config(read_timeout=max(60, timeout_s + 30)))


def deploy_zip(package: Package, meta: dict, fn: FunctionSettings, bucket: str, prefix: str,
               region: str | None = None) -> str:
    """Ship `package` via S3 and move the alias to the new version; returns that version."""
    import boto3

    s3 = boto3.client("s3", region_name=region)
    lam = lambda_client(region, fn.timeout_s)
    exists = require_role_to_create(lam, fn)
    key = f"{prefix.strip('/')}/{fn.name}/{package.sha256[:16]}.zip"
    upload(s3, package, bucket, key)
    code_sha256 = install_code(lam, fn, {"S3Bucket": bucket, "S3Key": key}, exists)
    if code_sha256 != package.code_sha256:
        raise DeployError(f"Lambda holds code {code_sha256}, not the zip just built "
                          f"({package.code_sha256}): s3://{bucket}/{key} changed; alias not moved")
    tag_function(lam, fn.name, release_tags(meta))
    return release(lam, fn, code_sha256, version_description(meta, f"zip {package.sha256[:12]}"),
                   meta["version"])


def deploy_image(image_uri: str, meta: dict, fn: FunctionSettings,
                 region: str | None = None) -> str:
    """Point the function at an ECR image and move the alias to the new version."""
    lam = lambda_client(region, fn.timeout_s)
    exists = require_role_to_create(lam, fn)
    code_sha256 = install_code(lam, fn, {"ImageUri": image_uri}, exists)
    tag_function(lam, fn.name, release_tags(meta))
    return release(lam, fn, code_sha256, version_description(meta, f"image {image_uri}"),
                   meta["version"])
