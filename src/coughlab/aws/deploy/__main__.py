"""Ship build/lambda as a python3.12 Lambda: S3, a new published version, then the alias `live`.

Order of work, each step only after the previous one succeeded:
1. release gate: model.json must describe this model.onnx, with handler-vs-pipeline parity within
   its tolerance and test ROC-AUC at or above --min-roc-auc, its fields of the types
   export-lambda writes and the files it names plain files of --model-dir; the git tree must be
   clean and `dvc status` must find nothing out of date (so dvc.lock describes what ships and
   the commit reproduces it), and --model-dir must be the build/lambda that dvc.lock records
   (the model the pipeline built); otherwise nothing is built or sent;
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
description keeps that history), without building or gating anything: only to a published
version number other than the one served now, that the deploy released (its description names
the gated model and commit).

With --image-uri, steps 2-3 are replaced by an image built from docker/lambda.Dockerfile and
pushed to ECR; the gate and steps 4-5 are the same (its smoke test also checks that the image
serves the model build/lambda describes).

AWS settings come from flags or COUGHLAB_LAMBDA_* / AWS_REGION; credentials from the usual
boto3 chain (environment, ~/.aws, instance role).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from coughlab.aws.deploy import DeployError, DeployRefused
from coughlab.aws.deploy.access import (
    DEFAULT_RESERVED_CONCURRENCY,
    UNRESERVED_MINIMUM,
    URL_AUTH_TYPES,
    CapFailed,
    UrlSettings,
    publish_url,
)
from coughlab.aws.deploy.gate import (
    DEFAULT_MIN_ROC_AUC,
    EXPORT_OUT,
    check_release,
    read_model_meta,
    require_pipeline_model,
    require_reproducible,
)
from coughlab.aws.deploy.package import (
    BUILD_DIR,
    HANDLER,
    MIB,
    REQUIREMENTS,
    UNZIPPED_LIMIT,
    build_zip,
    ensure_dependencies,
    runtime_python,
)
from coughlab.aws.deploy.release import FunctionSettings, deploy_image, deploy_zip, rollback
from coughlab.aws.errors import explain

MODEL_DIR = Path("build/lambda")


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
        prog="python -m coughlab.aws.deploy", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--function", default=env("COUGHLAB_LAMBDA_FUNCTION", "coughlab"),
                        help="Lambda function name (COUGHLAB_LAMBDA_FUNCTION; default %(default)s)")
    parser.add_argument("--bucket", default=env("COUGHLAB_LAMBDA_BUCKET"),
                        help="existing S3 bucket for the zip (COUGHLAB_LAMBDA_BUCKET; required "
                        "to deploy a zip)")
    parser.add_argument("--prefix", default="lambda", help="S3 key prefix (default %(default)s)")
    parser.add_argument("--role", default=env("COUGHLAB_LAMBDA_ROLE"),
                        help="IAM role ARN for the function; needed only to create it "
                        "(COUGHLAB_LAMBDA_ROLE)")
    parser.add_argument("--region", default=env("AWS_REGION"),
                        help="AWS region (AWS_REGION; else boto3's default)")
    parser.add_argument("--memory", type=int, default=int(env("COUGHLAB_LAMBDA_MEMORY", 1024)),
                        help="memory in MB (COUGHLAB_LAMBDA_MEMORY; default %(default)s)")
    parser.add_argument("--timeout", type=int, default=int(env("COUGHLAB_LAMBDA_TIMEOUT", 30)),
                        help="timeout in seconds (COUGHLAB_LAMBDA_TIMEOUT; default %(default)s)")
    parser.add_argument("--alias", default=env("COUGHLAB_LAMBDA_ALIAS", "live"),
                        help="alias moved to the new version (COUGHLAB_LAMBDA_ALIAS; "
                        "default %(default)s)")
    parser.add_argument("--url-auth", choices=URL_AUTH_TYPES,
                        default=env("COUGHLAB_LAMBDA_URL_AUTH", "NONE"),
                        help="Function URL auth: NONE (public: the recording page works in any "
                        "browser) or AWS_IAM (SigV4-signed callers only) "
                        "(COUGHLAB_LAMBDA_URL_AUTH; default %(default)s)")
    parser.add_argument("--reserved-concurrency", type=concurrency_cap,
                        default=env("COUGHLAB_LAMBDA_RESERVED_CONCURRENCY",
                                    str(DEFAULT_RESERVED_CONCURRENCY)),
                        help="cap on concurrent executions, so a public URL cannot run up an "
                        "unbounded bill; `none` for no cap (removes an earlier one). Set only "
                        f"where the account keeps {UNRESERVED_MINIMUM} unreserved, else deploy "
                        "says why not (COUGHLAB_LAMBDA_RESERVED_CONCURRENCY; default %(default)s)")
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
                      help="deploy this ECR image (built from docker/lambda.Dockerfile) "
                      "instead of a zip")
    mode.add_argument("--rollback", action="store_true",
                      help="move the alias back to the version it served before the last deploy "
                      "(`make rollback-lambda`); no gate, nothing built")
    args = parser.parse_args(argv)
    if not (args.check_only or args.zip_only or args.image_uri or args.rollback or args.bucket):
        parser.error("--bucket (or COUGHLAB_LAMBDA_BUCKET) is required to deploy a zip")
    return args


def function_settings(args: argparse.Namespace) -> FunctionSettings:
    """The function the flags name, with the settings a create or update gives it."""
    return FunctionSettings(args.function, args.role, args.memory, args.timeout, args.alias)


def run(args: argparse.Namespace, fn: FunctionSettings) -> str | None:
    """Gate, then build and/or deploy as the flags ask; returns the published version, if any."""
    meta = read_model_meta(args.model_dir)
    check_release(args.model_dir, meta, args.min_roc_auc)
    meta = meta | {"git_commit": require_reproducible(args.repo)}
    require_pipeline_model(args.repo, args.model_dir)
    print(f"deploy: model {meta['version']} passes the gate (test ROC-AUC "
          f"{meta['test_metrics']['roc_auc']:.4f}, parity within {meta['parity']['tolerance']:g} "
          f"on {meta['parity']['clips']} clips, "
          f"git {meta['git_commit']} clean and matching dvc.lock, the model its {EXPORT_OUT})")
    if args.check_only:
        return None
    if args.image_uri:
        return deploy_image(args.image_uri, meta, fn, args.region)
    deps = args.deps_dir or ensure_dependencies(args.requirements, args.build_dir)
    package = build_zip(deps, args.handler, args.model_dir, args.build_dir / "function.zip",
                        python=runtime_python(), git_commit=meta["git_commit"])
    print(f"deploy: {package.path} {package.zipped_bytes / MIB:.1f} MiB zipped, "
          f"{package.unzipped_bytes / MIB:.1f} MiB unzipped (limit {UNZIPPED_LIMIT / MIB:.0f} MiB)")
    if args.zip_only:
        return None
    return deploy_zip(package, meta, fn, args.bucket, args.prefix, args.region)


def main(argv: list[str] | None = None) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    args = parse_args(argv)
    fn = function_settings(args)
    if args.rollback:
        return main_rollback(args, fn)
    try:
        version = run(args, fn)
    except DeployRefused as err:
        sys.exit(f"deploy refused: {err}")
    except DeployError as err:
        sys.exit(f"deploy failed: {err}")
    except (BotoCoreError, ClientError) as err:
        sys.exit(f"deploy failed: {explain(err)}; alias {args.alias} not moved")
    if version is not None:
        print(f"deploy: {args.function} version {version} is Active and passed its smoke test; "
              f"alias {args.alias} -> {version}")
        announce_url(args, fn)


def main_rollback(args: argparse.Namespace, fn: FunctionSettings) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        was, now = rollback(fn, args.region)
    except DeployError as err:
        sys.exit(f"rollback failed: {err}")
    except (BotoCoreError, ClientError) as err:
        sys.exit(f"rollback failed: {explain(err)}; alias {args.alias} not moved")
    print(f"deploy: rolled back {args.function} alias {args.alias}: version {was} -> {now}")


def announce_url(args: argparse.Namespace, fn: FunctionSettings) -> None:
    """Publish the alias's Function URL (after the release: the alias must exist) and print it."""
    from botocore.exceptions import BotoCoreError, ClientError

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
