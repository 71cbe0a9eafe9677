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
   versions), publish a version whose description names both, wait until it is Active, and
   only then move the alias. `python -m coughlab.trace <model_version>` goes on from there;
5. access: cap the function's reserved concurrency, then create or update the alias's
   Function URL (GET: the recording page, POST: the API) with CORS limited to its own origin;
   with --url-auth NONE anyone may invoke it, with AWS_IAM only SigV4-signed callers.

With --image-uri, steps 2-3 are replaced by an image built from docker/lambda.Dockerfile and
pushed to ECR; the gate and step 4 are the same.

AWS settings come from flags or COUGHLAB_LAMBDA_* / AWS_REGION; credentials from the usual
boto3 chain (environment, ~/.aws, instance role).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from coughlab.atomic import atomic_dir, atomic_file, atomic_write_text
from coughlab.digest import model_version, sha256_file

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
          tqdm(total=unzipped, desc="zip", unit="B", unit_scale=True, leave=False) as bar):
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
    with tqdm(total=package.zipped_bytes, desc=f"s3://{bucket}/{key}", unit="B",
              unit_scale=True, leave=False) as bar:
        s3.upload_file(str(package.path), bucket, key, Callback=bar.update)


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


def point_alias(lam, name: str, alias: str, version: str) -> None:
    try:
        lam.get_alias(FunctionName=name, Name=alias)
    except lam.exceptions.ResourceNotFoundException:
        lam.create_alias(FunctionName=name, Name=alias, FunctionVersion=version)
    else:
        lam.update_alias(FunctionName=name, Name=alias, FunctionVersion=version)


def release(lam, fn: FunctionSettings, code_sha256: str, description: str) -> str:
    """Publish $LATEST (only if it still holds our code) and move the alias once it is Active.

    A version that fails to become Active raises botocore's WaiterError and the alias keeps
    serving the previous version. Returns the new version.
    """
    version = lam.publish_version(FunctionName=fn.name, CodeSha256=code_sha256,
                                  Description=description)["Version"]
    lam.get_waiter("published_version_active").wait(FunctionName=fn.name, Qualifier=version)
    point_alias(lam, fn.name, fn.alias, version)
    return version


def require_role_to_create(lam, fn: FunctionSettings) -> bool:
    """Whether the function exists; a missing one can only be created with a role."""
    exists = function_exists(lam, fn.name)
    if not exists and not fn.role:
        raise DeployError(f"Lambda function {fn.name!r} does not exist; pass --role "
                          "(COUGHLAB_LAMBDA_ROLE), an IAM role ARN Lambda can assume, to create it")
    return exists


def deploy_zip(package: Package, meta: dict, fn: FunctionSettings, bucket: str, prefix: str,
               region: str | None = None) -> str:
    """Ship `package` via S3 and move the alias to the new version; returns that version."""
    import boto3

    s3 = boto3.client("s3", region_name=region)
    lam = boto3.client("lambda", region_name=region)
    exists = require_role_to_create(lam, fn)
    key = f"{prefix.strip('/')}/{fn.name}/{package.sha256[:16]}.zip"
    upload(s3, package, bucket, key)
    code_sha256 = install_code(lam, fn, {"S3Bucket": bucket, "S3Key": key}, exists)
    if code_sha256 != package.code_sha256:
        raise DeployError(f"Lambda holds code {code_sha256}, not the zip just built "
                          f"({package.code_sha256}): s3://{bucket}/{key} changed; alias not moved")
    tag_function(lam, fn.name, release_tags(meta))
    return release(lam, fn, code_sha256, version_description(meta, f"zip {package.sha256[:12]}"))


def deploy_image(image_uri: str, meta: dict, fn: FunctionSettings, region: str | None = None) -> str:
    """Point the function at an ECR image and move the alias to the new version."""
    import boto3

    lam = boto3.client("lambda", region_name=region)
    exists = require_role_to_create(lam, fn)
    code_sha256 = install_code(lam, fn, {"ImageUri": image_uri}, exists)
    tag_function(lam, fn.name, release_tags(meta))
    return release(lam, fn, code_sha256, version_description(meta, f"image {image_uri}"))


@dataclass(frozen=True)
class UrlSettings:
    auth_type: str  # NONE: anyone with the URL; AWS_IAM: only SigV4-signed callers
    reserved_concurrency: int  # the most concurrent executions: bounds what the URL can cost


def cap_concurrency(lam, name: str, limit: int) -> None:
    """Reserve `limit` concurrent executions, which is also their ceiling: requests beyond it
    get 429 instead of starting more (billed) instances."""
    lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=limit)


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


def publish_url(fn: FunctionSettings, url: UrlSettings, region: str | None = None) -> str:
    """Cap concurrency first, then expose the alias through its Function URL; returns the URL."""
    import boto3

    lam = boto3.client("lambda", region_name=region)
    cap_concurrency(lam, fn.name, url.reserved_concurrency)
    function_url = ensure_function_url(lam, fn.name, fn.alias, url.auth_type)
    set_public_invoke(lam, fn.name, fn.alias, public=url.auth_type == "NONE")
    return function_url


def positive_int(text: str) -> int:
    """argparse type for a count of at least 1 (a reserved concurrency of 0 throttles everything)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
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
    parser.add_argument("--reserved-concurrency", type=positive_int,
                        default=env("COUGHLAB_LAMBDA_RESERVED_CONCURRENCY",
                                    DEFAULT_RESERVED_CONCURRENCY),
                        help="cap on concurrent executions, so a public URL cannot run up an "
                        "unbounded bill (COUGHLAB_LAMBDA_RESERVED_CONCURRENCY; default %(default)s)")
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
    args = parser.parse_args(argv)
    if not (args.check_only or args.zip_only or args.image_uri or args.bucket):
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
    try:
        version = run(args)
    except DeployRefused as err:
        sys.exit(f"deploy refused: {err}")
    except DeployError as err:
        sys.exit(f"deploy failed: {err}")
    except (BotoCoreError, ClientError) as err:
        sys.exit(f"deploy failed: AWS error: {err}; alias {args.alias} not moved")
    if version is not None:
        print(f"deploy: {args.function} version {version} is Active; alias {args.alias} -> {version}")
        announce_url(args)


def announce_url(args: argparse.Namespace) -> None:
    """Publish the alias's Function URL (after the release: the alias must exist) and print it."""
    from botocore.exceptions import BotoCoreError, ClientError

    fn = FunctionSettings(args.function, args.role, args.memory, args.timeout, args.alias)
    try:
        function_url = publish_url(fn, UrlSettings(args.url_auth, args.reserved_concurrency),
                                   args.region)
    except (BotoCoreError, ClientError) as err:
        sys.exit(f"deploy failed after the release (alias {args.alias} moved): could not set "
                 f"the concurrency cap or the Function URL: {err}")
    page = "open it in a browser to record a cough" if args.url_auth == "NONE" else \
        "callers must sign requests with SigV4"
    print(f"deploy: Function URL {function_url} (auth {args.url_auth}, at most "
          f"{args.reserved_concurrency} concurrent executions); {page}")


if __name__ == "__main__":
    main()
