"""Ship build/lambda as a python3.12 Lambda: S3, a new published version, then the alias `live`.

Order of work, each step only after the previous one succeeded:
1. release gate: model.json must describe this model.onnx, with handler-vs-pipeline parity within
   its tolerance and test ROC-AUC at or above --min-roc-auc; the git tree must be clean and
   `dvc status` must find nothing out of date (so dvc.lock describes what ships and the commit
   reproduces it); otherwise nothing is built or sent;
2. dependencies: the pinned lambda/requirements.txt installed for manylinux_2_28 x86_64 CPython
   3.12 by pip's cross-platform mode (cached under --build-dir, keyed by the pins);
3. zip: dependencies + handler.py at the root + model/{model.onnx,model.json} (model.json with
   the deploying `git_commit` added, which every response names), byte-for-byte reproducible,
   refused if it would unzip past Lambda's 250 MB (it goes up via S3, so the 50 MB
   direct-upload cap does not apply);
4. AWS: upload to S3, create or update the function and wait until Lambda has applied it,
   tag the function with the git commit and model version (Lambda tags functions, not
   versions), publish a version whose description names both, wait until it is Active,
   smoke-invoke that version (the page GET and one bundled clip POST, which must score with
   this model) and only then move the alias; a failed smoke test leaves the alias where it
   was. `python -m coughlab.trace <model_version>` goes on from there;
5. access: create or update the alias's Function URL (GET: the recording page, POST: the
   API) with CORS limited to its own origin (with --url-auth NONE anyone may invoke it, with
   AWS_IAM only SigV4-signed callers), then cap the function's reserved concurrency where the
   account's limits allow it (AWS keeps 100 unreserved), or remove the cap with
   --reserved-concurrency none.

--rollback moves the alias back to the version it served before the last deploy (the alias's
description keeps that history), without building or gating anything.

With --image-uri, steps 2-3 are replaced by an image built from docker/lambda.Dockerfile and
pushed to ECR; the gate and steps 4-5 are the same (its smoke test also checks that the image
serves the model build/lambda describes).

AWS settings come from flags or COUGHLAB_LAMBDA_* / AWS_REGION; credentials from the usual
boto3 chain (environment, ~/.aws, instance role).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import wave
import zipfile
from dataclasses import dataclass
from pathlib import Path

from coughlab.atomic import atomic_dir, atomic_file, atomic_write_text
from coughlab.aws_errors import explain
from coughlab.digest import model_version, sha256_file
from coughlab.progress import progress_bar

MODEL_DIR = Path("build/lambda")
HANDLER = Path("lambda/handler.py")
REQUIREMENTS = Path("lambda/requirements.txt")
BUILD_DIR = Path("build/deploy")
RUNTIME = "python3.12"
PYTHON_VERSION = "3.12"
# pip widens only the legacy manylinux2014/2010 tags to older ones, so list every tag a
# glibc-2.28 target can load (the python3.12 runtime, Amazon Linux 2023, has glibc 2.34).
WHEEL_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)] + [
    "manylinux2014_x86_64"]
# Console scripts (their shebangs name this machine's python) and bytecode are useless there.
SKIPPED_DEPENDENCY_PARTS = {"bin", "__pycache__"}
MIB = 2**20
UNZIPPED_LIMIT = 250 * MIB  # Lambda's "250 MB" cap on the unzipped deployment package
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: same inputs, same zip, same CodeSha256
DEFAULT_MIN_ROC_AUC = 0.7
DESCRIPTION_LIMIT = 256  # characters Lambda allows in a version's description
URL_AUTH_TYPES = ("NONE", "AWS_IAM")
DEFAULT_RESERVED_CONCURRENCY = 10
UNRESERVED_MINIMUM = 100  # concurrent executions AWS keeps unreserved in every account
ALIAS_HISTORY_PREFIX = "coughlab history:"  # alias description: versions it served, newest first
SMOKE_SAMPLE_RATE = 16000
# Statements granting the public a NONE-auth URL: AWS requires both actions for function URLs.
PUBLIC_URL_STATEMENTS = {
    "coughlab-public-url": {"Action": "lambda:InvokeFunctionUrl", "FunctionUrlAuthType": "NONE"},
    "coughlab-public-url-invoke": {"Action": "lambda:InvokeFunction", "InvokedViaFunctionUrl": True},
}


class DeployError(Exception):
    """Deployment cannot go on; the message says why and what to do."""


class DeployRefused(DeployError):
    """The release gate rejected the model; nothing was built or sent to AWS."""


@dataclass(frozen=True)
class Package:
    path: Path
    sha256: str
    zipped_bytes: int
    unzipped_bytes: int

    @property
    def code_sha256(self) -> str:
        """The zip's digest as Lambda reports it (base64), to check AWS got these bytes."""
        return base64.b64encode(bytes.fromhex(self.sha256)).decode()


@dataclass(frozen=True)
class FunctionSettings:
    name: str
    role: str | None
    memory_mb: int
    timeout_s: int
    alias: str


def read_model_meta(model_dir: Path) -> dict:
    path = model_dir / "model.json"
    if not path.is_file():
        raise DeployRefused(f"{path} not found: run `make repro` (or `make pull`) first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DeployRefused(f"{path} is not valid JSON ({err}); restore it with "
                            "`dvc checkout build/lambda` or re-run export-lambda") from None


def check_release(model_dir: Path, meta: dict, min_roc_auc: float) -> None:
    """Refuse a model that is not the one model.json describes, or that fails parity or AUC."""
    if "onnx_file" not in meta:
        raise DeployRefused(f"{model_dir}/model.json names no onnx_file; re-run export-lambda")
    onnx_path = model_dir / meta["onnx_file"]
    if not onnx_path.is_file():
        raise DeployRefused(f"{onnx_path} not found: run `make repro` (or `make pull`) first")
    digest = model_version(onnx_path)
    if digest != meta.get("version"):
        raise DeployRefused(f"{onnx_path} (sha256 {digest}) is not the model {model_dir}/model.json "
                            f"describes (version {meta.get('version')}); re-run `make repro`")
    # export-lambda records the gate's machine-independent facts only (the residual depends
    # on the CPU's onnxruntime kernels and goes to its log): passed, tolerance, clips.
    parity = meta.get("parity") or {}
    if parity.get("tolerance") is None or not parity.get("clips"):
        raise DeployRefused("model.json has no parity.tolerance/parity.clips: the "
                            "model was never checked against the pipeline; re-run export-lambda")
    if parity.get("passed") is not True:
        raise DeployRefused(f"the Lambda handler and the pipeline disagree beyond tolerance "
                            f"{parity['tolerance']:g} (parity.passed is not true)")
    roc_auc = (meta.get("test_metrics") or {}).get("roc_auc")
    if roc_auc is None:
        raise DeployRefused("model.json has no test_metrics.roc_auc; re-run evaluate and export-lambda")
    if not roc_auc >= min_roc_auc:
        raise DeployRefused(f"test ROC-AUC {roc_auc:.4f} is below the minimum {min_roc_auc:g} "
                            "(--min-roc-auc / COUGHLAB_MIN_ROC_AUC)")


def git_commit(repo: Path) -> str:
    result = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise DeployRefused(f"{repo} is not a git checkout with a commit ({result.stderr.strip()}): "
                            "deploy from the repository, so the Lambda can name its commit")
    return result.stdout.strip()


def uncommitted_changes(repo: Path) -> list[str]:
    """`git status --porcelain` lines: modified, staged and untracked (not ignored) files."""
    result = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"],
                            capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def dvc_out_of_date(repo: Path) -> list[str]:
    """What `dvc status` finds changed against dvc.lock and the .dvc files, one line each."""
    result = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise DeployRefused(f"`dvc status` failed in {repo}: {result.stderr.strip()}")
    lines = []
    for stage, changes in json.loads(result.stdout or "{}").items():
        for change in changes:
            if isinstance(change, str):
                lines.append(f"{stage}: {change}")
                continue
            for kind, paths in change.items():
                details = (", ".join(f"{path} {state}" for path, state in paths.items())
                           if isinstance(paths, dict) else paths)
                lines.append(f"{stage}: {kind}: {details}")
    return lines


def require_reproducible(repo: Path) -> str:
    """The commit to deploy from; refuse a dirty tree or a dvc.lock the workspace does not match.

    Only then does the commit name exactly the code, params and dvc.lock that made the model.
    """
    commit = git_commit(repo)
    dirty = uncommitted_changes(repo)
    if dirty:
        raise DeployRefused("the git tree has uncommitted changes; commit or stash them so the "
                            "Lambda names a commit that holds its code:\n  " + "\n  ".join(dirty))
    stale = dvc_out_of_date(repo)
    if stale:
        raise DeployRefused("dvc.lock does not match the workspace (`dvc status`); run "
                            "`dvc repro` (or `dvc pull`) and commit dvc.lock:\n  " + "\n  ".join(stale))
    return commit


def stamp_git_commit(model_json: Path, commit: str, out: Path) -> Path:
    """A copy of model.json with `git_commit` added, for the package; the original is untouched."""
    meta = json.loads(model_json.read_text()) | {"git_commit": commit}
    atomic_write_text(out, json.dumps(meta, indent=2) + "\n")
    return out


def version_description(meta: dict, code: str) -> str:
    """A published version's description: model, git commit and code, within Lambda's limit."""
    return f"model {meta['version']}, git {meta['git_commit']}, {code}"[:DESCRIPTION_LIMIT]


def release_tags(meta: dict) -> dict[str, str]:
    """Function tags naming what $LATEST now holds (Lambda cannot tag versions or aliases)."""
    return {"coughlab:git_commit": meta["git_commit"], "coughlab:model_version": meta["version"]}


def tag_function(lam, name: str, tags: dict[str, str]) -> None:
    arn = lam.get_function_configuration(FunctionName=name)["FunctionArn"]
    lam.tag_resource(Resource=":".join(arn.split(":")[:7]), Tags=tags)  # unqualified ARN


def pip_install_command(requirements: Path, target: Path) -> list[str]:
    """pip installing the Lambda's wheels for linux x86_64 CPython 3.12, whatever the host.

    --require-hashes: every wheel must match the sha256 pinned in the requirements file.
    """
    platforms = [arg for tag in WHEEL_PLATFORMS for arg in ("--platform", tag)]
    return [sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
            "--disable-pip-version-check", "--require-hashes", "--only-binary=:all:",
            "--implementation", "cp",
            "--python-version", PYTHON_VERSION, *platforms, "--target", str(target),
            "-r", str(requirements)]


def ensure_dependencies(requirements: Path, cache_root: Path) -> Path:
    """The installed wheels for `requirements`, built once per distinct pin set and reused."""
    key = hashlib.sha256("\n".join([requirements.read_text(), PYTHON_VERSION, *WHEEL_PLATFORMS])
                         .encode()).hexdigest()[:16]
    target = cache_root / f"deps-{key}"
    if target.is_dir():
        print(f"deploy: reusing cached dependencies {target}")
        return target
    print(f"deploy: installing {requirements} for {RUNTIME} manylinux x86_64 into {target}")
    with atomic_dir(target) as tmp:
        result = subprocess.run(pip_install_command(requirements, tmp))
        if result.returncode != 0:
            raise DeployError(f"pip could not install {requirements} for {RUNTIME} "
                              f"manylinux x86_64 (exit {result.returncode}); see pip's output above")
    return target


def package_entries(deps_dir: Path, handler: Path, model_dir: Path, meta: dict) -> dict[str, Path]:
    """Archive name -> source file: the dependencies, then handler.py and model/ at the root."""
    entries = {p.relative_to(deps_dir).as_posix(): p for p in sorted(deps_dir.rglob("*"))
               if p.is_file() and not SKIPPED_DEPENDENCY_PARTS & set(p.relative_to(deps_dir).parts)}
    ours = {"handler.py": handler, "page.html": handler.parent / "page.html",
            "model/model.json": model_dir / "model.json",
            f"model/{meta['onnx_file']}": model_dir / meta["onnx_file"]}
    if meta.get("model_card"):  # served at GET ?model_card, linked from the page
        ours[f"model/{meta['model_card']}"] = model_dir / meta["model_card"]
    clashes = [name for name in entries if name in ours or name.startswith("model/")]
    if clashes:
        raise DeployError(f"{deps_dir} holds files that would shadow the handler or model: {clashes}")
    return entries | ours


def build_zip(deps_dir: Path, handler: Path, model_dir: Path, out: Path,
              max_unzipped_bytes: int = UNZIPPED_LIMIT, git_commit: str | None = None) -> Package:
    """Write the deployment zip (atomically, reproducibly); refuse one Lambda would reject.

    With `git_commit` (run() always passes it, after the gate) the shipped model.json names it.
    """
    meta = read_model_meta(model_dir)
    entries = package_entries(deps_dir, handler, model_dir, meta)
    if git_commit is not None:
        entries["model/model.json"] = stamp_git_commit(
            model_dir / "model.json", git_commit, out.with_name(f"{out.stem}.model.json"))
    unzipped = sum(path.stat().st_size for path in entries.values())
    if unzipped > max_unzipped_bytes:
        raise DeployError(f"the package would unzip to {unzipped / MIB:.1f} MiB, over Lambda's "
                          f"{max_unzipped_bytes / MIB:.1f} MiB limit; use the container image "
                          "(docker/lambda.Dockerfile, --image-uri) instead")
    with (atomic_file(out) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf,
          progress_bar(total=unzipped, desc="zip", unit="B", unit_scale=True, leave=False) as bar):
        for name, path in entries.items():
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            executable = path.stat().st_mode & stat.S_IXUSR
            info.external_attr = (stat.S_IFREG | (0o755 if executable else 0o644)) << 16
            with path.open("rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            bar.update(path.stat().st_size)
    return Package(out, sha256_file(out), out.stat().st_size, unzipped)


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
    history = alias_history(current.get("Description", "")) or [current["FunctionVersion"]]
    if history[0] != current["FunctionVersion"]:  # moved by hand since: start from there
        history = [current["FunctionVersion"], *history]
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


def function_url_event(method: str, body: bytes | None = None, content_type: str | None = None) -> dict:
    """A Function URL request (payload format 2.0) as Lambda hands it to the handler."""
    event = {"version": "2.0", "routeKey": "$default", "rawPath": "/", "rawQueryString": "",
             "headers": {"content-type": content_type} if content_type else {},
             "requestContext": {"http": {"method": method, "path": "/"}},
             "isBase64Encoded": False}
    if body is not None:
        event |= {"body": base64.b64encode(body).decode(), "isBase64Encoded": True}
    return event


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
    page = invoke(lam, name, version, function_url_event("GET"))
    if page["statusCode"] != 200 or not header(page, "content-type").startswith("text/html"):
        raise SmokeTestFailed(f"GET / answered {page['statusCode']} "
                              f"{header(page, 'content-type') or 'without a Content-Type'}, "
                              "not the recording page")
    scored = invoke(lam, name, version, function_url_event("POST", smoke_clip(), "audio/wav"))
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
    """Move the alias back to the version it served before; returns (from, to)."""
    import boto3

    lam = boto3.client("lambda", region_name=region)
    current = current_alias(lam, fn.name, fn.alias)
    if current is None:
        raise DeployError(f"{fn.name} has no alias {fn.alias!r}: nothing to roll back")
    history = alias_history(current.get("Description", ""))
    if history[:1] != [current["FunctionVersion"]] or len(history) < 2:
        raise DeployError(f"alias {fn.alias} -> version {current['FunctionVersion']} records no "
                          "earlier version to go back to; move it by hand with `aws lambda "
                          "update-alias --function-version N`")
    lam.update_alias(FunctionName=fn.name, Name=fn.alias, FunctionVersion=history[1],
                     Description=history_description(history[1:]))
    return history[0], history[1]


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


def deploy_image(image_uri: str, meta: dict, fn: FunctionSettings, region: str | None = None) -> str:
    """Point the function at an ECR image and move the alias to the new version."""
    import boto3

    lam = lambda_client(region, fn.timeout_s)
    exists = require_role_to_create(lam, fn)
    code_sha256 = install_code(lam, fn, {"ImageUri": image_uri}, exists)
    tag_function(lam, fn.name, release_tags(meta))
    return release(lam, fn, code_sha256, version_description(meta, f"image {image_uri}"),
                   meta["version"])


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
        function_url = lam.get_function_url_config(FunctionName=name, Qualifier=alias)["FunctionUrl"]
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


def publish_url(fn: FunctionSettings, url: UrlSettings, region: str | None = None) -> tuple[str, str]:
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


def concurrency_cap(text: str) -> int | None:
    """argparse type: a count of at least 1 (0 would throttle everything), or `none` for no cap."""
    if text.strip().lower() == "none":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 or `none`, not {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="python -m coughlab.deploy", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--function", default=env("COUGHLAB_LAMBDA_FUNCTION", "coughlab"),
                        help="Lambda function name (COUGHLAB_LAMBDA_FUNCTION; default %(default)s)")
    parser.add_argument("--bucket", default=env("COUGHLAB_LAMBDA_BUCKET"),
                        help="existing S3 bucket for the zip (COUGHLAB_LAMBDA_BUCKET; required "
                        "to deploy a zip)")
    parser.add_argument("--prefix", default="lambda", help="S3 key prefix (default %(default)s)")
    parser.add_argument("--role", default=env("COUGHLAB_LAMBDA_ROLE"),
                        help="IAM role ARN for the function; needed only to create it (COUGHLAB_LAMBDA_ROLE)")
    parser.add_argument("--region", default=env("AWS_REGION"),
                        help="AWS region (AWS_REGION; else boto3's default)")
    parser.add_argument("--memory", type=int, default=int(env("COUGHLAB_LAMBDA_MEMORY", 1024)),
                        help="memory in MB (COUGHLAB_LAMBDA_MEMORY; default %(default)s)")
    parser.add_argument("--timeout", type=int, default=int(env("COUGHLAB_LAMBDA_TIMEOUT", 30)),
                        help="timeout in seconds (COUGHLAB_LAMBDA_TIMEOUT; default %(default)s)")
    parser.add_argument("--alias", default=env("COUGHLAB_LAMBDA_ALIAS", "live"),
                        help="alias moved to the new version (COUGHLAB_LAMBDA_ALIAS; default %(default)s)")
    parser.add_argument("--url-auth", choices=URL_AUTH_TYPES,
                        default=env("COUGHLAB_LAMBDA_URL_AUTH", "NONE"),
                        help="Function URL auth: NONE (public: the recording page works in any "
                        "browser) or AWS_IAM (SigV4-signed callers only) (COUGHLAB_LAMBDA_URL_AUTH; "
                        "default %(default)s)")
    parser.add_argument("--reserved-concurrency", type=concurrency_cap,
                        default=env("COUGHLAB_LAMBDA_RESERVED_CONCURRENCY",
                                    str(DEFAULT_RESERVED_CONCURRENCY)),
                        help="cap on concurrent executions, so a public URL cannot run up an "
                        "unbounded bill; `none` for no cap (removes an earlier one). Set only where "
                        f"the account keeps {UNRESERVED_MINIMUM} unreserved, else deploy says why "
                        "not (COUGHLAB_LAMBDA_RESERVED_CONCURRENCY; default %(default)s)")
    parser.add_argument("--min-roc-auc", type=float,
                        default=float(env("COUGHLAB_MIN_ROC_AUC", DEFAULT_MIN_ROC_AUC)),
                        help="refuse models whose test ROC-AUC is lower (COUGHLAB_MIN_ROC_AUC; "
                        "default %(default)s)")
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR,
                        help="export-lambda's output (default %(default)s)")
    parser.add_argument("--handler", type=Path, default=HANDLER,
                        help="the Lambda handler, zipped as handler.py (default %(default)s)")
    parser.add_argument("--requirements", type=Path, default=REQUIREMENTS,
                        help="pinned Lambda dependencies (default %(default)s)")
    parser.add_argument("--build-dir", type=Path, default=BUILD_DIR,
                        help="where the zip and the cached dependencies go (default %(default)s)")
    parser.add_argument("--repo", type=Path, default=Path("."),
                        help="the git + DVC checkout that must be clean, whose commit is shipped "
                        "(default: here)")
    parser.add_argument("--deps-dir", type=Path,
                        help="use this already-installed dependency folder instead of running pip")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check-only", action="store_true",
                      help="only run the release gate (e.g. before building the container image)")
    mode.add_argument("--zip-only", action="store_true",
                      help="run the gate and build the zip, but do not touch AWS")
    mode.add_argument("--image-uri",
                      help="deploy this ECR image (built from docker/lambda.Dockerfile) instead of a zip")
    mode.add_argument("--rollback", action="store_true",
                      help="move the alias back to the version it served before the last deploy "
                      "(`make rollback-lambda`); no gate, nothing built")
    args = parser.parse_args(argv)
    if not (args.check_only or args.zip_only or args.image_uri or args.rollback or args.bucket):
        parser.error("--bucket (or COUGHLAB_LAMBDA_BUCKET) is required to deploy a zip")
    return args


def run(args: argparse.Namespace) -> str | None:
    """Gate, then build and/or deploy as the flags ask; returns the published version, if any."""
    meta = read_model_meta(args.model_dir)
    check_release(args.model_dir, meta, args.min_roc_auc)
    meta = meta | {"git_commit": require_reproducible(args.repo)}
    print(f"deploy: model {meta['version']} passes the gate (test ROC-AUC "
          f"{meta['test_metrics']['roc_auc']:.4f}, parity within {meta['parity']['tolerance']:g} "
          f"on {meta['parity']['clips']} clips, "
          f"git {meta['git_commit']} clean and matching dvc.lock)")
    if args.check_only:
        return None
    fn = FunctionSettings(args.function, args.role, args.memory, args.timeout, args.alias)
    if args.image_uri:
        return deploy_image(args.image_uri, meta, fn, args.region)
    deps = args.deps_dir or ensure_dependencies(args.requirements, args.build_dir)
    package = build_zip(deps, args.handler, args.model_dir, args.build_dir / "function.zip",
                        git_commit=meta["git_commit"])
    print(f"deploy: {package.path} {package.zipped_bytes / MIB:.1f} MiB zipped, "
          f"{package.unzipped_bytes / MIB:.1f} MiB unzipped (limit {UNZIPPED_LIMIT / MIB:.0f} MiB)")
    if args.zip_only:
        return None
    return deploy_zip(package, meta, fn, args.bucket, args.prefix, args.region)


def main(argv: list[str] | None = None) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    args = parse_args(argv)
    if args.rollback:
        return main_rollback(args)
    try:
        version = run(args)
    except DeployRefused as err:
        sys.exit(f"deploy refused: {err}")
    except DeployError as err:
        sys.exit(f"deploy failed: {err}")
    except (BotoCoreError, ClientError) as err:
        sys.exit(f"deploy failed: {explain(err)}; alias {args.alias} not moved")
    if version is not None:
        print(f"deploy: {args.function} version {version} is Active and passed its smoke test; "
              f"alias {args.alias} -> {version}")
        announce_url(args)


def main_rollback(args: argparse.Namespace) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    fn = FunctionSettings(args.function, args.role, args.memory, args.timeout, args.alias)
    try:
        was, now = rollback(fn, args.region)
    except DeployError as err:
        sys.exit(f"rollback failed: {err}")
    except (BotoCoreError, ClientError) as err:
        sys.exit(f"rollback failed: {explain(err)}; alias {args.alias} not moved")
    print(f"deploy: rolled back {args.function} alias {args.alias}: version {was} -> {now}")


def announce_url(args: argparse.Namespace) -> None:
    """Publish the alias's Function URL (after the release: the alias must exist) and print it."""
    from botocore.exceptions import BotoCoreError, ClientError

    fn = FunctionSettings(args.function, args.role, args.memory, args.timeout, args.alias)
    try:
        function_url, cap = publish_url(fn, UrlSettings(args.url_auth, args.reserved_concurrency),
                                        args.region)
    except CapFailed as err:
        sys.exit(f"deploy failed after the release (alias {args.alias} moved): {err}")
    except (BotoCoreError, ClientError) as err:
        sys.exit(f"deploy failed after the release (alias {args.alias} moved): could not set "
                 f"up the Function URL: {explain(err)}")
    page = "open it in a browser to record a cough" if args.url_auth == "NONE" else \
        "callers must sign requests with SigV4"
    print(f"deploy: Function URL {function_url} (auth {args.url_auth}, {cap}); {page}")


if __name__ == "__main__":
    main()
