"""coughlab.aws.deploy: release gate, offline zip builder, and the AWS calls against moto_server.

moto's Lambda invoke does not run handlers (it answers from a queue the test fills:
queue_lambda_results), so the zip's contents are exercised in-process (extracted and imported;
tests/test_lambda_runtime.py runs the zip under the runtime interface client, and
tests/test_image_layout.py the container image's layout, as non-root users) and the AWS side
checks create/update/publish/smoke test/alias, the URL and the concurrency cap.
"""
import base64
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import botocore.waiter
import numpy as np
import pytest
import soundfile as sf
from botocore.awsrequest import AWSResponse
from botocore.exceptions import WaiterError
from botocore.stub import Stubber

from coughlab.aws import deploy
from coughlab.aws.deploy import __main__ as cli
from coughlab.aws.deploy import access, gate, package, release

from conftest import queue_lambda_results

pytestmark = pytest.mark.usefixtures("deploy_compiles_no_bytecode")  # fake dependencies

ROOT = Path(__file__).resolve().parents[1]
HANDLER = ROOT / "lambda" / "handler.py"
LAMBDA_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
    "Action": "sts:AssumeRole"}]}


def write_model(model_dir: Path, onnx: bytes = b"onnx graph", **meta_changes) -> Path:
    """A model dir as export-lambda writes it (fake graph bytes; the gate never loads them)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "model.onnx").write_bytes(onnx)
    meta = {"onnx_file": "model.onnx", "version": hashlib.sha256(onnx).hexdigest()[:12],
            "parity": {"passed": True, "clips": 2, "tolerance": 1e-4},
            "test_metrics": {"roc_auc": 0.9, "pr_auc": 0.9, "sensitivity": 0.8,
                             "specificity": 0.8, "n": 40}} | meta_changes
    (model_dir / "model.json").write_text(json.dumps(meta))
    return model_dir


def write_deps(deps: Path) -> Path:
    """A pip --target folder in miniature: a package, a native lib, a console script, bytecode."""
    (deps / "fakenp" / "__pycache__").mkdir(parents=True)
    (deps / "fakenp" / "__init__.py").write_text("VALUE = 1\n")
    (deps / "fakenp" / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\0" * 10)
    (deps / "fakenp" / "_core.so").write_bytes(b"\x7fELF" + b"\0" * 100)
    (deps / "fakenp" / "_core.so").chmod(0o755)
    (deps / "fakenp-1.0.dist-info").mkdir()
    (deps / "fakenp-1.0.dist-info" / "METADATA").write_text("Name: fakenp\n")
    (deps / "bin").mkdir()
    (deps / "bin" / "fakenp-config").write_text("#!/host/python\n")
    return deps


def fake_wheel(dest: Path, name: str, tag: str) -> Path:
    """A minimal valid wheel, so pip's cross-platform install is tested without the network."""
    dist = f"{name}-1.0.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 1\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{dist}/WHEEL": ("Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\n"
                               f"Tag: {tag}\n")}
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}-1.0-{tag}.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, text in files.items():
            zf.writestr(member, text)
        zf.writestr(f"{dist}/RECORD", "".join(f"{m},,\n" for m in [*files, f"{dist}/RECORD"]))
    return path


def commit_all(repo: Path) -> str:
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit",
                    "-q", "--allow-empty", "-m", "commit"], cwd=repo, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()


def committed_repo(repo: Path, pipeline: bool = False) -> Path:
    """A git + DVC checkout with everything committed, as the deploy gate wants it; with
    `pipeline`, one reproduced stage (in.txt -> out.txt) whose dvc.lock is committed."""
    repo.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    for args in (["init", "-q"], ["config", "core.analytics", "false"]):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True)
    if pipeline:
        (repo / "in.txt").write_text("one\n")
        (repo / "dvc.yaml").write_text("stages:\n  copy:\n    cmd: cp in.txt out.txt\n"
                                       "    deps: [in.txt]\n    outs: [out.txt]\n")
        subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=repo, check=True)
    commit_all(repo)
    return repo


def record_model(repo: Path) -> None:
    """Commit repo/build/lambda as the export-lambda stage's output, as `dvc repro` records it
    (dvc.lock, and the DVC cache that `dvc status` checks)."""
    (repo / "dvc.yaml").write_text("stages:\n  export-lambda:\n    cmd: python -c pass\n"
                                   "    outs: [build/lambda]\n")
    subprocess.run([sys.executable, "-m", "dvc", "commit", "-q", "-f", "export-lambda"],
                   cwd=repo, check=True)
    commit_all(repo)


def model_in(repo: Path, onnx: bytes = b"onnx graph", **meta_changes) -> Path:
    """A model built into the repo's build/lambda and recorded as the pipeline's (dvc.lock,
    committed): the only kind the gate ships. Returns the model folder."""
    model_dir = write_model(repo / "build" / "lambda", onnx, **meta_changes)
    record_model(repo)
    return model_dir


@pytest.fixture(scope="module")
def clean_repo(tmp_path_factory) -> Path:
    """A clean checkout whose pipeline built write_model's default model (so a copy of that
    model elsewhere, byte for byte the same, passes the gate too)."""
    repo = committed_repo(tmp_path_factory.mktemp("clean-repo"))
    model_in(repo)
    return repo


def wav_base64(seconds=1.5, sr=16000) -> str:
    buf = io.BytesIO()
    wave = np.random.default_rng(0).standard_normal(int(sr * seconds)) * 0.1
    sf.write(buf, wave.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return base64.b64encode(buf.getvalue()).decode()


# --- release gate -------------------------------------------------------------------------

def swap_graph(model_dir):
    (model_dir / "model.onnx").write_bytes(b"a different graph")


def drop(name):
    return lambda model_dir: (model_dir / name).unlink()


def rewrite_meta(**changes):
    def apply(model_dir):
        meta = json.loads((model_dir / "model.json").read_text())
        (model_dir / "model.json").write_text(json.dumps(meta | changes))
    return apply


@pytest.mark.parametrize("break_model,message", [
    (rewrite_meta(parity={"passed": False, "clips": 2, "tolerance": 1e-4}),
     "disagree beyond tolerance 0.0001"),
    (rewrite_meta(parity=None), "never checked against the pipeline"),
    (rewrite_meta(test_metrics={"roc_auc": 0.55}), "ROC-AUC 0.5500 is below the minimum 0.7"),
    (rewrite_meta(test_metrics={}), "no test_metrics.roc_auc"),
    (swap_graph, "is not the model"),
    (drop("model.onnx"), "model.onnx not found"),
    (drop("model.json"), "model.json not found"),
    (lambda model_dir: (model_dir / "model.json").write_text('{"version": "ab'), "not valid JSON"),
])
def test_gate_refuses_bad_or_mismatched_models(tmp_path, break_model, message):
    model_dir = write_model(tmp_path / "lambda")
    break_model(model_dir)
    with pytest.raises(deploy.DeployRefused, match=message):
        gate.check_release(model_dir, gate.read_model_meta(model_dir), min_roc_auc=0.7)


def test_refused_model_never_reaches_aws(aws_env, tmp_path, capsys):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="coughlab-deploy")
    model_dir = write_model(tmp_path / "lambda",
                            parity={"passed": False, "clips": 2, "tolerance": 1e-4})
    with pytest.raises(SystemExit,
                       match="deploy refused: the Lambda handler and the pipeline disagree"):
        cli.main(["--bucket", "coughlab-deploy", "--role", "arn:aws:iam::123456789012:role/x",
                  "--model-dir", str(model_dir), "--deps-dir", str(write_deps(tmp_path / "deps")),
                  "--build-dir", str(tmp_path / "build")])
    assert s3.list_objects_v2(Bucket="coughlab-deploy")["KeyCount"] == 0
    assert boto3.client("lambda").list_functions()["Functions"] == []
    assert not (tmp_path / "build").exists()


# --- zip builder (offline) ----------------------------------------------------------------

def test_zip_layout_is_lambda_ready_and_reproducible(tmp_path):
    deps = write_deps(tmp_path / "deps")
    model_dir = write_model(tmp_path / "lambda")
    first = package.build_zip(deps, HANDLER, model_dir, tmp_path / "a.zip", python=None)
    second = package.build_zip(deps, HANDLER, model_dir, tmp_path / "b.zip", python=None)
    assert first.sha256 == second.sha256
    assert first.code_sha256 == base64.b64encode(hashlib.sha256((tmp_path / "a.zip").read_bytes())
                                                 .digest()).decode()
    with zipfile.ZipFile(first.path) as zf:
        names = set(zf.namelist())
        core_mode = zf.getinfo("fakenp/_core.so").external_attr >> 16
    assert names == {"handler.py", "page.html", "model/model.json", "model/model.onnx",
                     "fakenp/__init__.py", "fakenp/_core.so", "fakenp-1.0.dist-info/METADATA"}
    assert core_mode & 0o777 == 0o755
    shipped = [HANDLER, HANDLER.parent / "page.html", model_dir / "model.json",
               model_dir / "model.onnx", deps / "fakenp" / "__init__.py",
               deps / "fakenp" / "_core.so",
               deps / "fakenp-1.0.dist-info" / "METADATA"]
    assert first.unzipped_bytes == sum(p.stat().st_size for p in shipped)


def test_zip_over_the_unzipped_limit_is_refused_and_not_written(tmp_path):
    model_dir = write_model(tmp_path / "lambda")
    with pytest.raises(deploy.DeployError, match="over Lambda's 0.0 MiB limit"):
        package.build_zip(write_deps(tmp_path / "deps"), HANDLER, model_dir, tmp_path / "f.zip",
                          python=None, max_unzipped_bytes=1000)
    assert list(tmp_path.glob("*.zip")) == [] and list(tmp_path.glob(".f.zip*")) == []


def test_dependency_named_like_the_handler_is_refused(tmp_path):
    deps = write_deps(tmp_path / "deps")
    (deps / "handler.py").write_text("print('shadow')\n")
    with pytest.raises(deploy.DeployError, match="shadow the handler"):
        package.build_zip(deps, HANDLER, write_model(tmp_path / "lambda"), tmp_path / "f.zip",
                          python=None)


def test_unzipped_package_serves_requests(exported_model, tmp_path, monkeypatch):
    """The zip's layout is what the handler expects: model/ next to handler.py, no MODEL_DIR."""
    (tmp_path / "deps").mkdir()
    built = package.build_zip(tmp_path / "deps", HANDLER, exported_model["lambda_dir"],
                              tmp_path / "function.zip", python=None)
    task_root = tmp_path / "var-task"
    with zipfile.ZipFile(built.path) as zf:
        zf.extractall(task_root)
    monkeypatch.delenv("MODEL_DIR", raising=False)
    spec = importlib.util.spec_from_file_location("unzipped_handler", task_root / "handler.py")
    handler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handler)
    assert handler.MODEL_DIR == task_root / "model"
    response = handler.handler({"body": wav_base64(), "isBase64Encoded": True,
                                "headers": {"content-type": "audio/wav"}})
    assert response["statusCode"] == 200
    result = json.loads(response["body"])
    assert 0.0 <= result["p_positive"] <= 1.0
    assert result["model_version"] == json.loads(
        (exported_model["lambda_dir"] / "model.json").read_text())["version"]
    page = handler.handler({"requestContext": {"http": {"method": "GET"}}})  # page.html shipped
    assert page["statusCode"] == 200 and "MediaRecorder" in page["body"]
    card = handler.handler({"requestContext": {"http": {"method": "GET"}},  # the page links it
                            "rawQueryString": "model_card"})
    assert card["statusCode"] == 200 and "\n# Model card" in card["body"]  # after its metadata


@pytest.fixture(scope="module")
def runtime_python():
    python = package.find_python()
    if python is None:
        pytest.skip(f"no CPython {package.PYTHON_VERSION} here (the Lambda runtime's): "
                    f"install one, e.g. `pyenv install {package.PYTHON_VERSION}`")
    return python


def handler_importing(tmp_path: Path, at_load: str, lazily: str) -> Path:
    handler = tmp_path / "src" / "handler.py"
    handler.parent.mkdir()
    handler.write_text(f"import json\nimport {at_load}\n\n\ndef handler(event, context=None):"
                       f"\n    import {lazily}\n    return {{}}\n")
    (handler.parent / "page.html").write_text("<!doctype html>\n")  # zipped beside it
    return handler


def test_the_zip_carries_runtime_bytecode_of_what_the_handler_imports(tmp_path,
                                                                      runtime_python):
    """Lambda's task root is read-only, so shipped .py files are compiled at every cold start:
    the zip holds CPython 3.12 bytecode (unchecked-hash: valid whatever the unzipped files'
    dates) of handler.py and of every dependency module it imports, at load or lazily, and
    none of what it never imports or of this machine's bytecode."""
    deps = write_deps(tmp_path / "deps")
    for name in ("lazydep", "unused"):
        (deps / name).mkdir()
        (deps / name / "__init__.py").write_text("from . import part\n")
        (deps / name / "part.py").write_text("VALUE = 2\n")
    handler = handler_importing(tmp_path, at_load="fakenp", lazily="lazydep")
    model_dir = write_model(tmp_path / "lambda")
    first = package.build_zip(deps, handler, model_dir, tmp_path / "a.zip", python=runtime_python)
    second = package.build_zip(deps, handler, model_dir, tmp_path / "b.zip",
                               python=runtime_python)
    assert first.sha256 == second.sha256
    with zipfile.ZipFile(first.path) as zf:
        bytecode = {name: zf.read(name) for name in zf.namelist() if name.endswith(".pyc")}
    assert set(bytecode) == {"__pycache__/handler.cpython-312.pyc",
                             "fakenp/__pycache__/__init__.cpython-312.pyc",
                             "lazydep/__pycache__/__init__.cpython-312.pyc",
                             "lazydep/__pycache__/part.cpython-312.pyc"}
    magic = subprocess.run([runtime_python, "-c", "import importlib.util, sys; "
                            "sys.stdout.write(importlib.util.MAGIC_NUMBER.hex())"],
                           capture_output=True, text=True, check=True).stdout
    for pyc in bytecode.values():
        assert pyc[:4].hex() == magic and int.from_bytes(pyc[4:8], "little") == 0b01
    assert b"/tmp" not in b"".join(bytecode.values())  # no path of the building machine


def test_dependencies_the_handler_cannot_import_with_are_refused(tmp_path, runtime_python):
    handler = handler_importing(tmp_path, at_load="numpy_not_shipped", lazily="json")
    with pytest.raises(deploy.DeployError, match="handler.py does not import under python3.12.*"
                       "numpy_not_shipped"):
        package.build_zip(write_deps(tmp_path / "deps"), handler, write_model(tmp_path / "lambda"),
                          tmp_path / "f.zip", python=runtime_python)
    assert not (tmp_path / "f.zip").exists()


def test_dependencies_are_cross_built_for_the_lambda_platform_and_cached(tmp_path):
    wheels = tmp_path / "wheels"
    # Only a CPython 3.12 manylinux_2_17 wheel exists: this host (3.11) could not use it,
    # the Lambda runtime can.
    wheel = fake_wheel(wheels, "fakenative", "cp312-cp312-manylinux_2_17_x86_64")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"--no-index\n--find-links {wheels}\n{hashed_pin(wheel)}\n")
    deps = package.ensure_dependencies(requirements, tmp_path / "cache")
    assert (deps / "fakenative" / "__init__.py").read_text() == "VALUE = 1\n"
    for wheel in wheels.iterdir():  # a second pip run would now fail: the cache must be used
        wheel.unlink()
    assert package.ensure_dependencies(requirements, tmp_path / "cache") == deps


def test_wheel_the_lambda_cannot_load_fails_the_build(tmp_path):
    wheels = tmp_path / "wheels"
    host_only = f"cp{sys.version_info.major}{sys.version_info.minor}"
    built = {"hostonly": fake_wheel(wheels, "hostonly",
                                    f"{host_only}-{host_only}-manylinux_2_17_x86_64"),
             "newglibc": fake_wheel(wheels, "newglibc", "cp312-cp312-manylinux_2_34_x86_64")}
    for name, wheel in built.items():
        requirements = tmp_path / f"{name}.txt"
        requirements.write_text(f"--no-index\n--find-links {wheels}\n{hashed_pin(wheel)}\n")
        with pytest.raises(deploy.DeployError, match="pip could not install"):
            package.ensure_dependencies(requirements, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def hashed_pin(wheel: Path, digest: str | None = None) -> str:
    name = wheel.name.split("-")[0]
    return f"{name}==1.0 --hash=sha256:{digest or hashlib.sha256(wheel.read_bytes()).hexdigest()}"


@pytest.mark.parametrize("pin", ["wrong hash", "no hash"])
def test_a_wheel_not_matching_its_pinned_hash_fails_the_build(tmp_path, pin):
    wheels = tmp_path / "wheels"
    wheel = fake_wheel(wheels, "fakenative", "cp312-cp312-manylinux_2_17_x86_64")
    line = hashed_pin(wheel, "0" * 64) if pin == "wrong hash" else "fakenative==1.0"
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"--no-index\n--find-links {wheels}\n{line}\n")
    with pytest.raises(deploy.DeployError, match="pip could not install"):
        package.ensure_dependencies(requirements, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_lambda_requirements_pin_every_wheel_by_version_and_hash():
    text = (Path(__file__).resolve().parents[1] / "lambda" / "requirements.txt").read_text()
    pins = [line for line in text.replace("\\\n", " ").splitlines()
            if line.strip() and not line.startswith("#")]
    assert {p.split("==")[0] for p in pins} >= {"onnxruntime", "numpy", "soundfile", "soxr", "av"}
    for pin in pins:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[^ ]+ +--hash=sha256:[0-9a-f]{64}", pin), pin


# --- AWS calls (moto_server) --------------------------------------------------------------

ACCOUNT_CONCURRENCY = 1000  # tests/conftest.py starts moto_server with this Lambda quota


def moto_account_settings(**_):
    """GetAccountSettings as Lambda answers it, from moto's functions (moto 5.2.5 lacks it)."""
    lam = boto3.client("lambda")
    reserved = sum(lam.get_function_concurrency(FunctionName=f["FunctionName"]).get(
        "ReservedConcurrentExecutions") or 0 for f in lam.list_functions()["Functions"])
    parsed = {"AccountLimit": {"ConcurrentExecutions": ACCOUNT_CONCURRENCY,
                               "UnreservedConcurrentExecutions": ACCOUNT_CONCURRENCY - reserved}}
    return AWSResponse("https://lambda.us-east-1.amazonaws.com", 200, {}, None), parsed


@pytest.fixture
def aws_target(aws_env, clean_repo, monkeypatch, tmp_path):
    """An IAM role Lambda can assume and a bucket for the zips, in an empty moto; a clean repo
    of this test's own (model_in changes its model)."""
    session = boto3.session.Session()
    session.events.register("before-call.lambda.GetAccountSettings", moto_account_settings)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", session)
    role = boto3.client("iam").create_role(
        RoleName="coughlab-lambda",
        AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST))["Role"]["Arn"]
    boto3.client("s3").create_bucket(Bucket="coughlab-deploy")
    repo = Path(shutil.copytree(clean_repo, tmp_path / "repo", symlinks=True))
    return {"role": role, "bucket": "coughlab-deploy", "repo": repo, "moto": aws_env}


PAGE_ANSWER = {"statusCode": 200, "headers": {"Content-Type": "text/html; charset=utf-8"},
               "body": "<!doctype html><title>coughlab</title>"}


def scored_answer(model_dir: Path, p_positive: float = 0.25) -> dict:
    """What a working handler answers to the smoke clip: a probability from this model."""
    version = json.loads((model_dir / "model.json").read_text())["version"]
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
            "body": json.dumps({"p_positive": p_positive, "label": "negative",
                                "threshold": 0.5, "model_version": version})}


def target_args(target: dict) -> list[str]:
    """deploy's command-line flags that point it at the moto target's bucket, role and repo."""
    return ["--bucket", target["bucket"], "--role", target["role"], "--repo", str(target["repo"])]


def healthy(target: dict, model_dir: Path) -> None:
    """The next deploy's new version answers its smoke test as a working handler would."""
    queue_lambda_results(target["moto"], PAGE_ANSWER, scored_answer(model_dir))


def deploy_cli(tmp_path, model_dir, *extra):
    cli.main(["--function", "coughlab-test", "--model-dir", str(model_dir),
                 "--deps-dir", str(tmp_path / "deps"), "--build-dir", str(tmp_path / "build"),
                 *extra])


def test_first_deploy_creates_later_ones_update_and_alias_follows(aws_target, tmp_path, capsys):
    write_deps(tmp_path / "deps")
    model_dir = model_in(aws_target["repo"], onnx=b"graph one")
    args = ["--bucket", aws_target["bucket"], "--role", aws_target["role"], "--memory", "2048",
            "--repo", str(aws_target["repo"])]
    lam = boto3.client("lambda")

    healthy(aws_target, model_dir)
    deploy_cli(tmp_path, model_dir, *args)
    out = capsys.readouterr().out
    assert "coughlab-test version 1 is Active and passed its smoke test; alias live -> 1" in out
    first_sha = lam.get_function_configuration(FunctionName="coughlab-test",
                                               Qualifier="1")["CodeSha256"]
    config = lam.get_function(FunctionName="coughlab-test")["Configuration"]
    assert (config["Runtime"], config["Handler"], config["MemorySize"]) == (
        "python3.12", "handler.handler", 2048)
    package_sha = hashlib.sha256((tmp_path / "build" / "function.zip").read_bytes()).hexdigest()
    key = f"lambda/coughlab-test/{package_sha[:16]}.zip"
    assert boto3.client("s3").head_object(Bucket=aws_target["bucket"], Key=key)["ContentLength"] > 0

    model_in(aws_target["repo"], onnx=b"graph two")
    healthy(aws_target, model_dir)
    deploy_cli(tmp_path, model_dir, *args)
    out = capsys.readouterr().out
    assert "version 2 is Active and passed its smoke test; alias live -> 2" in out
    assert lam.get_alias(FunctionName="coughlab-test", Name="live")["FunctionVersion"] == "2"
    second_sha = lam.get_function_configuration(FunctionName="coughlab-test",
                                                Qualifier="2")["CodeSha256"]
    assert second_sha != first_sha
    assert lam.get_function_configuration(FunctionName="coughlab-test",
                                          Qualifier="1")["CodeSha256"] == first_sha


def test_creating_a_function_needs_a_role_and_uploads_nothing_without_one(aws_target, tmp_path):
    write_deps(tmp_path / "deps")
    with pytest.raises(SystemExit, match="does not exist; pass --role"):
        deploy_cli(tmp_path, write_model(tmp_path / "lambda"), "--bucket", aws_target["bucket"],
                   "--repo", str(aws_target["repo"]))
    assert boto3.client("s3").list_objects_v2(Bucket=aws_target["bucket"])["KeyCount"] == 0


def test_container_image_deploy(aws_target, tmp_path, capsys):
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/coughlab:bfe50bcff612"
    model_dir = write_model(tmp_path / "lambda")
    healthy(aws_target, model_dir)
    deploy_cli(tmp_path, model_dir, "--image-uri", image,
               "--role", aws_target["role"], "--repo", str(aws_target["repo"]))
    out = capsys.readouterr().out
    assert "version 1 is Active and passed its smoke test; alias live -> 1" in out
    function = boto3.client("lambda").get_function(FunctionName="coughlab-test")
    assert function["Code"]["ImageUri"] == image
    assert function["Configuration"]["PackageType"] == "Image"
    assert not (tmp_path / "build").exists()  # no zip built for an image


# --- ordering: the alias moves only after the version is Active (botocore Stubber) --------

@pytest.fixture
def stubbed_lambda(monkeypatch):
    """A Lambda client answering from a script, in order; waiter sleeps are recorded, not slept."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    sleeps = []
    monkeypatch.setattr(botocore.waiter.time, "sleep", sleeps.append)
    client = boto3.client("lambda", region_name="us-east-1")
    with Stubber(client) as stubber:
        yield client, stubber, sleeps


FN = release.FunctionSettings("coughlab", None, 1024, 30, "live")
SHA = base64.b64encode(b"\1" * 32).decode()


def expect_publish_then_states(stubber, version, states):
    stubber.add_response("publish_version", {"Version": version},
                         {"FunctionName": "coughlab", "CodeSha256": SHA, "Description": "model x"})
    for state in states:
        stubber.add_response("get_function_configuration", {"State": state, "Version": version},
                             {"FunctionName": "coughlab", "Qualifier": version})


def expect_invocations(stubber, version, *answers):
    for event, answer in zip(release.smoke_events(), answers):
        stubber.add_response("invoke", {"StatusCode": 200, "Payload": streamed(answer)},
                             {"FunctionName": "coughlab", "Qualifier": version,
                              "Payload": json.dumps(event).encode()})


def test_the_smoke_requests_are_function_url_events_from_the_builder_serve_uses():
    """One builder: what `make serve` hands the handler is what the smoke test sends Lambda."""
    from coughlab import function_url, serve

    assert serve.function_url_event is function_url.function_url_event
    assert release.function_url_event is function_url.function_url_event
    page, clip = release.smoke_events()
    assert release.smoke_events() == [page, clip]  # the same bytes every deploy
    assert (page["requestContext"]["http"]["method"], "body" in page) == ("GET", False)
    assert clip["isBase64Encoded"] and base64.b64decode(clip["body"]) == release.smoke_clip()


MODEL_X = {"statusCode": 200, "body": json.dumps({"p_positive": 0.4, "model_version": "x"})}


def streamed(answer) -> object:
    from botocore.response import StreamingBody

    raw = json.dumps(answer).encode()
    return StreamingBody(io.BytesIO(raw), len(raw))


def test_alias_moves_only_after_the_version_is_active_and_answers(stubbed_lambda):
    client, stubber, sleeps = stubbed_lambda
    expect_publish_then_states(stubber, "7", ["Pending", "Pending", "Active"])
    stubber.add_response("get_alias", {"Name": "live", "FunctionVersion": "6"},
                         {"FunctionName": "coughlab", "Name": "live"})
    expect_invocations(stubber, "7", PAGE_ANSWER, MODEL_X)
    stubber.add_response("update_alias", {"Name": "live", "FunctionVersion": "7"},
                         {"FunctionName": "coughlab", "Name": "live", "FunctionVersion": "7",
                          "Description": "coughlab history: 7 6"})
    assert release.release(client, FN, SHA, "model x", "x") == "7"
    stubber.assert_no_pending_responses()
    assert len(sleeps) == 2  # polled until Active before touching the alias


def test_alias_stays_when_the_version_fails(stubbed_lambda):
    client, stubber, _ = stubbed_lambda
    expect_publish_then_states(stubber, "8", ["Pending", "Failed"])
    # No get_alias/update_alias is scripted: calling either would be an unexpected call.
    with pytest.raises(WaiterError, match="Failed"):
        release.release(client, FN, SHA, "model x", "x")
    stubber.assert_no_pending_responses()


# --- provenance: deploy only committed, reproduced models, and name the commit -------------

def test_deploy_refuses_a_dirty_tree_and_names_what_is_dirty(tmp_path):
    repo = committed_repo(tmp_path / "repo")
    (repo / ".dvcignore").write_text("# changed\n")
    (repo / "notes.txt").write_text("untracked\n")
    with pytest.raises(SystemExit,
                       match=r"uncommitted changes(.|\n)* M \.dvcignore\n  \?\? notes\.txt"):
        cli.main(["--zip-only", "--repo", str(repo),
                  "--model-dir", str(write_model(tmp_path / "lambda")),
                  "--deps-dir", str(write_deps(tmp_path / "deps")),
                  "--build-dir", str(tmp_path / "build")])
    assert not (tmp_path / "build").exists()


def change_output(repo):
    (repo / "out.txt").write_text("edited after dvc repro\n")  # git-ignored: the tree stays clean


def commit_changed_dependency(repo):
    (repo / "in.txt").write_text("two\n")
    commit_all(repo)  # committed, but dvc.lock still records "one"


@pytest.mark.parametrize("make_stale,message", [
    (change_output, "copy: changed outs: out.txt modified"),
    (commit_changed_dependency, "copy: changed deps: in.txt modified"),
])
def test_deploy_refuses_a_dvc_lock_that_does_not_match_the_workspace(tmp_path, make_stale, message):
    repo = committed_repo(tmp_path / "repo", pipeline=True)
    assert gate.require_reproducible(repo)  # clean right after dvc repro + commit
    make_stale(repo)
    with pytest.raises(SystemExit, match=f"dvc.lock does not match the workspace(.|\\n)*{message}"):
        cli.main(["--check-only", "--repo", str(repo),
                     "--model-dir", str(write_model(tmp_path / "lambda"))])


def test_outside_a_git_checkout_deploy_refuses(tmp_path):
    with pytest.raises(SystemExit, match="is not a git checkout with a commit"):
        cli.main(["--check-only", "--repo", str(tmp_path),
                     "--model-dir", str(write_model(tmp_path / "lambda"))])


def test_shipped_model_json_names_the_deploying_commit(clean_repo, tmp_path):
    model_dir = write_model(tmp_path / "lambda")
    original = (model_dir / "model.json").read_text()
    cli.main(["--zip-only", "--repo", str(clean_repo), "--model-dir", str(model_dir),
              "--deps-dir", str(write_deps(tmp_path / "deps")),
              "--build-dir", str(tmp_path / "build")])
    with zipfile.ZipFile(tmp_path / "build" / "function.zip") as zf:
        shipped = json.loads(zf.read("model/model.json"))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clean_repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert shipped == json.loads(original) | {"git_commit": head}
    assert (model_dir / "model.json").read_text() == original  # the DVC output is untouched


def test_function_is_tagged_and_version_described_with_commit_and_model(aws_target, tmp_path):
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/coughlab:bfe50bcff612"
    model_dir = write_model(tmp_path / "lambda")
    healthy(aws_target, model_dir)
    deploy_cli(tmp_path, model_dir, "--image-uri", image, "--role", aws_target["role"],
               "--repo", str(aws_target["repo"]))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=aws_target["repo"], capture_output=True,
                          text=True, check=True).stdout.strip()
    version = json.loads((model_dir / "model.json").read_text())["version"]
    lam = boto3.client("lambda")
    arn = lam.get_function_configuration(FunctionName="coughlab-test")["FunctionArn"]
    tags = lam.list_tags(Resource=arn)["Tags"]
    assert {k: tags[k] for k in ("coughlab:git_commit", "coughlab:model_version")} == {
        "coughlab:git_commit": head, "coughlab:model_version": version}
    assert lam.get_function_configuration(FunctionName="coughlab-test", Qualifier="1")[
        "Description"] == f"model {version}, git {head}, image {image}"


def test_tags_go_on_the_unqualified_function_arn(stubbed_lambda):
    client, stubber, _ = stubbed_lambda
    arn = "arn:aws:lambda:us-east-1:123456789012:function:coughlab"
    stubber.add_response("get_function_configuration", {"FunctionArn": f"{arn}:$LATEST"},
                         {"FunctionName": "coughlab"})
    tags = {"coughlab:git_commit": "c" * 40, "coughlab:model_version": "a" * 12}
    stubber.add_response("tag_resource", {}, {"Resource": arn, "Tags": tags})
    release.tag_function(client, "coughlab", release.release_tags({"git_commit": "c" * 40,
                                                                 "version": "a" * 12}))
    stubber.assert_no_pending_responses()


def test_version_description_fits_lambdas_limit():
    meta = {"version": "a" * 12, "git_commit": "c" * 40}
    assert release.version_description(meta, "zip 0123456789ab") == (
        f"model {'a' * 12}, git {'c' * 40}, zip 0123456789ab")
    assert len(release.version_description(meta, "image " + "x" * 300)) == 256


# --- Function URL, public access and the concurrency cap ------------------------------------

def function_url_state(lam, name="coughlab-test", alias="live"):
    config = {key: value for key, value in
              lam.get_function_url_config(FunctionName=name, Qualifier=alias).items()
              if key in ("FunctionUrl", "AuthType", "Cors")}
    try:
        policy = json.loads(lam.get_policy(FunctionName=name, Qualifier=alias)["Policy"])
        sids = sorted(statement["Sid"] for statement in policy["Statement"])
    except lam.exceptions.ResourceNotFoundException:
        sids = []
    return config, sids


def test_deploy_publishes_a_capped_url_whose_cors_allows_only_itself(aws_target, tmp_path, capsys):
    write_deps(tmp_path / "deps")
    model_dir = model_in(aws_target["repo"], onnx=b"graph one")
    args = ["--bucket", aws_target["bucket"], "--role", aws_target["role"],
            "--reserved-concurrency", "3", "--repo", str(aws_target["repo"])]
    lam = boto3.client("lambda")

    healthy(aws_target, model_dir)
    deploy_cli(tmp_path, model_dir, *args)
    config, sids = function_url_state(lam)
    function_url = config["FunctionUrl"]
    out = capsys.readouterr().out
    assert f"Function URL {function_url} (auth NONE, at most 3 concurrent" in out
    assert config["AuthType"] == "NONE"
    assert config["Cors"]["AllowOrigins"] == [function_url.rstrip("/")]
    assert set(config["Cors"]["AllowMethods"]) == {"GET", "POST"}
    assert sids == ["coughlab-public-url", "coughlab-public-url-invoke"]
    concurrency = lam.get_function_concurrency(FunctionName="coughlab-test")
    assert concurrency["ReservedConcurrentExecutions"] == 3

    model_in(aws_target["repo"], onnx=b"graph two")  # a redeploy: same URL, nothing granted twice
    healthy(aws_target, model_dir)
    deploy_cli(tmp_path, model_dir, *args)
    assert function_url_state(lam) == (config, sids)


def test_iam_auth_takes_the_public_permission_away(aws_target, tmp_path, capsys):
    write_deps(tmp_path / "deps")
    model_dir = write_model(tmp_path / "lambda")
    args = target_args(aws_target)
    lam = boto3.client("lambda")
    healthy(aws_target, model_dir)
    deploy_cli(tmp_path, model_dir, *args)
    assert function_url_state(lam)[1] == ["coughlab-public-url", "coughlab-public-url-invoke"]

    healthy(aws_target, model_dir)
    deploy_cli(tmp_path, model_dir, *args, "--url-auth", "AWS_IAM")
    config, sids = function_url_state(lam)
    assert (config["AuthType"], sids) == ("AWS_IAM", [])
    assert "auth AWS_IAM" in capsys.readouterr().out
    concurrency = lam.get_function_concurrency(FunctionName="coughlab-test")
    assert concurrency["ReservedConcurrentExecutions"] == access.DEFAULT_RESERVED_CONCURRENCY


@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_concurrency_cap_below_one_is_refused(value, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--check-only", "--reserved-concurrency", value])
    assert "must be at least 1" in capsys.readouterr().err


URL = "https://abc123.lambda-url.us-east-1.on.aws/"
CORS = {"AllowOrigins": ["https://abc123.lambda-url.us-east-1.on.aws"],
        "AllowMethods": ["GET", "POST"], "AllowHeaders": ["content-type"], "MaxAge": 3600}


def expect_url_created(stubber):
    """The first URL: create (URL unknown), CORS for that URL, both public grants."""
    url_params = {"FunctionName": "coughlab", "Qualifier": "live"}
    stubber.add_client_error("get_function_url_config", "ResourceNotFoundException",
                             http_status_code=404, expected_params=url_params)
    url_config = {"FunctionUrl": URL,
                  "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:coughlab",
                  "AuthType": "NONE", "CreationTime": "2026-01-01T00:00:00Z"}
    stubber.add_response("create_function_url_config", url_config,
                         url_params | {"AuthType": "NONE"})
    stubber.add_response("update_function_url_config",
                         url_config | {"Cors": CORS, "LastModifiedTime": "2026-01-01T00:00:01Z"},
                         url_params | {"AuthType": "NONE", "Cors": CORS})
    stubber.add_client_error("get_policy", "ResourceNotFoundException", http_status_code=404,
                             expected_params=url_params)
    stubber.add_response("add_permission", {"Statement": "{}"}, url_params | {
        "StatementId": "coughlab-public-url", "Principal": "*",
        "Action": "lambda:InvokeFunctionUrl", "FunctionUrlAuthType": "NONE"})
    stubber.add_response("add_permission", {"Statement": "{}"}, url_params | {
        "StatementId": "coughlab-public-url-invoke", "Principal": "*",
        "Action": "lambda:InvokeFunction", "InvokedViaFunctionUrl": True})


def expect_account(stubber, total, unreserved, reserved=None):
    stubber.add_response("get_function_concurrency",
                         {} if reserved is None else {"ReservedConcurrentExecutions": reserved},
                         {"FunctionName": "coughlab"})
    stubber.add_response("get_account_settings", {"AccountLimit": {
        "ConcurrentExecutions": total, "UnreservedConcurrentExecutions": unreserved}}, {})


def test_first_url_is_created_then_limited_to_its_origin_then_capped(stubbed_lambda, monkeypatch):
    """The exact calls, in order: the URL and its grants, then the account's limits, the cap."""
    client, stubber, _ = stubbed_lambda
    monkeypatch.setattr(boto3, "client", lambda *a, **k: client)
    expect_url_created(stubber)
    expect_account(stubber, total=1000, unreserved=1000)
    stubber.add_response("put_function_concurrency", {"ReservedConcurrentExecutions": 5},
                         {"FunctionName": "coughlab", "ReservedConcurrentExecutions": 5})
    assert access.publish_url(FN, access.UrlSettings("NONE", 5)) == (
        URL, "at most 5 concurrent executions")
    stubber.assert_no_pending_responses()


# --- outputs that leave the machine are readable there (the container image runs as non-root) --

def file_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_atomic_outputs_get_explicit_modes_whatever_the_umask(tmp_path):
    from coughlab.atomic import atomic_dir, atomic_file, atomic_write_text

    saved = os.umask(0o077)  # a private umask, and mkstemp/mkdtemp's own 0600/0700
    try:
        with atomic_dir(tmp_path / "lambda") as tmp, atomic_file(tmp / "model.onnx") as fh:
            fh.write(b"graph")
        atomic_write_text(tmp_path / "record.json", "{}")
    finally:
        os.umask(saved)
    assert file_mode(tmp_path / "lambda") == 0o755
    assert file_mode(tmp_path / "lambda" / "model.onnx") == 0o644
    assert file_mode(tmp_path / "record.json") == 0o644


# --- smoke test before the alias moves, and rollback ----------------------------------------

def test_a_version_failing_its_smoke_test_leaves_live_where_it_was(aws_target, tmp_path):
    write_deps(tmp_path / "deps")
    model_dir = model_in(aws_target["repo"], onnx=b"graph one")
    args = target_args(aws_target)
    healthy(aws_target, model_dir)
    deploy_cli(tmp_path, model_dir, *args)

    model_in(aws_target["repo"], onnx=b"graph two")
    broken = {"statusCode": 500, "headers": {"Content-Type": "application/json"},
              "body": json.dumps({"error": "internal_error", "message": "the model failed"})}
    queue_lambda_results(aws_target["moto"], PAGE_ANSWER, broken)
    with pytest.raises(SystemExit, match=r"version 2 failed its smoke test: POST of the smoke clip "
                       r"answered 500.*; alias live stays on version 1"):
        deploy_cli(tmp_path, model_dir, *args)
    lam = boto3.client("lambda")
    assert lam.get_alias(FunctionName="coughlab-test", Name="live")["FunctionVersion"] == "1"
    assert lam.get_function_url_config(FunctionName="coughlab-test",
                                       Qualifier="live")["FunctionUrl"]


@pytest.mark.parametrize("page,scored,problem", [
    ({"statusCode": 502, "body": ""}, None, "GET / answered 502 without a Content-Type"),
    (PAGE_ANSWER, {"statusCode": 200, "body": json.dumps({"p_positive": 0.1,
                                                          "model_version": "0ld0ld0ld0ld"})},
     "the version serves model 0ld0ld0ld0ld, not"),
    (PAGE_ANSWER, {"statusCode": 200, "body": json.dumps({"label": "negative"})},
     "POST of the smoke clip gave no probability"),
])
def test_a_first_deploy_failing_its_smoke_test_creates_no_alias(aws_target, tmp_path, page,
                                                                 scored, problem):
    model_dir = write_model(tmp_path / "lambda")
    queue_lambda_results(aws_target["moto"], *[a for a in (page, scored) if a is not None])
    with pytest.raises(SystemExit, match=f"version 1 failed its smoke test: {problem}"
                       ".*; alias live not created"):
        deploy_cli(tmp_path, model_dir, "--image-uri", "123456789012.dkr.ecr.us-east-1."
                   "amazonaws.com/coughlab:1", "--role", aws_target["role"],
                   "--repo", str(aws_target["repo"]))
    with pytest.raises(boto3.client("lambda").exceptions.ResourceNotFoundException):
        boto3.client("lambda").get_alias(FunctionName="coughlab-test", Name="live")


def test_a_version_that_cannot_import_fails_the_smoke_test(stubbed_lambda):
    client, stubber, _ = stubbed_lambda
    error = {"errorMessage": "Unable to import module 'handler': No module named 'soxr'",
             "errorType": "Runtime.ImportModuleError"}
    stubber.add_response("invoke", {"StatusCode": 200, "FunctionError": "Unhandled",
                                    "Payload": streamed(error)})
    with pytest.raises(release.SmokeTestFailed,
                       match="the function raised.*No module named 'soxr'"):
        release.smoke_test(client, "coughlab", "4", "x")


def make_rollback(target: dict) -> subprocess.CompletedProcess:
    """`make rollback-lambda` for the test function, against moto_server, with this venv."""
    venv = Path(sys.executable).parent.parent
    env = os.environ | {"COUGHLAB_LAMBDA_FUNCTION": "coughlab-test",
                        "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "-o", "install",
                           f"VENV={venv}", "rollback-lambda"], cwd=ROOT, env=env,
                          capture_output=True, text=True)


def test_make_rollback_lambda_moves_live_back_past_versions_that_never_went_live(aws_target,
                                                                                 tmp_path):
    write_deps(tmp_path / "deps")
    model_dir = model_in(aws_target["repo"], onnx=b"graph one")
    args = target_args(aws_target)
    for graph in (b"graph one", b"graph two"):
        model_in(aws_target["repo"], onnx=graph)
        healthy(aws_target, model_dir)
        deploy_cli(tmp_path, model_dir, *args)
    model_in(aws_target["repo"], onnx=b"graph three")
    queue_lambda_results(aws_target["moto"], {"statusCode": 500, "body": ""})
    with pytest.raises(SystemExit, match="version 3 failed its smoke test"):
        deploy_cli(tmp_path, model_dir, *args)
    lam = boto3.client("lambda")

    rolled = make_rollback(aws_target)
    assert rolled.returncode == 0, rolled.stderr
    assert "rolled back coughlab-test alias live: version 2 -> 1" in rolled.stdout
    assert lam.get_alias(FunctionName="coughlab-test", Name="live")["FunctionVersion"] == "1"
    again = make_rollback(aws_target)
    assert again.returncode != 0
    assert "alias live -> version 1 records no earlier version" in again.stderr
    assert lam.get_alias(FunctionName="coughlab-test", Name="live")["FunctionVersion"] == "1"


def test_alias_history_fits_lambdas_description_limit():
    versions = [str(n) for n in range(1000, 0, -1)]
    description = release.history_description(versions)
    assert len(description) <= 256
    assert release.alias_history(description) == versions[:len(release.alias_history(description))]
    assert release.alias_history("set by hand") == []


# --- reserved concurrency within the account's limits ---------------------------------------

def test_a_new_account_gets_its_url_and_no_cap_it_cannot_afford(stubbed_lambda, monkeypatch):
    """New accounts start with 10 concurrent executions; AWS keeps 100 unreserved."""
    client, stubber, _ = stubbed_lambda
    monkeypatch.setattr(boto3, "client", lambda *a, **k: client)
    expect_url_created(stubber)
    expect_account(stubber, total=10, unreserved=10)
    # No put_function_concurrency scripted: calling it would be an unexpected call.
    function_url, cap = access.publish_url(FN, access.UrlSettings("NONE", 10))
    stubber.assert_no_pending_responses()
    assert function_url == URL
    assert "no reserved concurrency: reserving 10 would leave 0 of the account's 10" in cap
    assert "'Concurrent executions' quota" in cap and "services/lambda/quotas" in cap


def other_function(lam, role: str, name: str = "someone-else") -> str:
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as zf:
        zf.writestr("index.py", "def handler(event, context):\n    return 1\n")
    lam.create_function(FunctionName=name, Runtime="python3.12", Role=role, Handler="index.handler",
                        Code={"ZipFile": code.getvalue()})
    return name


def test_cap_respects_what_other_functions_reserve_and_none_removes_it(aws_target, tmp_path,
                                                                       capsys):
    write_deps(tmp_path / "deps")
    model_dir = write_model(tmp_path / "lambda")
    args = target_args(aws_target)
    lam = boto3.client("lambda")
    healthy(aws_target, model_dir)
    deploy_cli(tmp_path, model_dir, *args, "--reserved-concurrency", "10")
    assert lam.get_function_concurrency(FunctionName="coughlab-test")[
        "ReservedConcurrentExecutions"] == 10

    healthy(aws_target, model_dir)
    deploy_cli(tmp_path, model_dir, *args, "--reserved-concurrency", "none")
    assert "ReservedConcurrentExecutions" not in {
        k for k, v in lam.get_function_concurrency(FunctionName="coughlab-test").items() if v}
    assert "no reserved concurrency (removed as asked)" in capsys.readouterr().out

    other = other_function(lam, aws_target["role"])
    lam.put_function_concurrency(FunctionName=other, ReservedConcurrentExecutions=895)
    healthy(aws_target, model_dir)
    deploy_cli(tmp_path, model_dir, *args, "--reserved-concurrency", "10")
    out = capsys.readouterr().out
    assert "no reserved concurrency: reserving 10 would leave 95 of the account's 1000" in out
    assert re.search(r"Function URL https?://\S+ \(auth NONE, no reserved concurrency", out)
    assert not lam.get_function_concurrency(FunctionName="coughlab-test").get(
        "ReservedConcurrentExecutions")


def announce(argv: list[str]) -> None:
    """The CLI's Function URL step (after a release) for the flags `argv`."""
    args = cli.parse_args(argv)
    cli.announce_url(args, cli.function_settings(args))


def test_a_refused_cap_still_leaves_the_url_and_says_what_to_do(stubbed_lambda, monkeypatch,
                                                                capsys):
    client, stubber, _ = stubbed_lambda
    monkeypatch.setattr(boto3, "client", lambda *a, **k: client)
    expect_url_created(stubber)
    expect_account(stubber, total=1000, unreserved=1000)
    stubber.add_client_error("put_function_concurrency", "AccessDeniedException",
                             http_status_code=403,
                             service_message="User: arn:aws:iam::123456789012:user/dev is not "
                             "authorized to perform: lambda:PutFunctionConcurrency on resource: "
                             "arn:aws:lambda:us-east-1:123456789012:function:coughlab")
    with pytest.raises(SystemExit) as exit_info:
        announce(["--function", "coughlab", "--bucket", "b"])
    message = str(exit_info.value)
    assert message.startswith("deploy failed after the release (alias live moved): Function URL "
                              f"{URL} is up, but the concurrency cap was not set: access denied: "
                              "PutFunctionConcurrency needs lambda:PutFunctionConcurrency")
    assert "\n" not in message
    stubber.assert_no_pending_responses()


# --- every AWS error reaching deploy is one clear line --------------------------------------

def test_access_denied_on_the_grant_names_the_action(stubbed_lambda, monkeypatch):
    """The old README policy's failure: the URL is made, then GetPolicy is denied."""
    client, stubber, _ = stubbed_lambda
    monkeypatch.setattr(boto3, "client", lambda *a, **k: client)
    stubber.add_response("get_function_url_config", {
        "FunctionUrl": URL,
        "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:coughlab",
        "AuthType": "NONE", "CreationTime": "2026-01-01T00:00:00Z",
        "LastModifiedTime": "2026-01-01T00:00:00Z"})
    stubber.add_response("update_function_url_config", {
        "FunctionUrl": URL,
        "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:coughlab",
        "AuthType": "NONE", "CreationTime": "2026-01-01T00:00:00Z",
        "LastModifiedTime": "2026-01-01T00:00:00Z"})
    stubber.add_client_error("get_policy", "AccessDeniedException", http_status_code=403,
                             service_message="User: arn:aws:iam::123456789012:user/dev is not "
                             "authorized to perform: lambda:GetPolicy on resource: "
                             "arn:aws:lambda:us-east-1:123456789012:function:coughlab:live because "
                             "no identity-based policy allows the lambda:GetPolicy action")
    with pytest.raises(SystemExit) as exit_info:
        announce(["--function", "coughlab", "--bucket", "b"])
    assert str(exit_info.value) == (
        "deploy failed after the release (alias live moved): could not set up the Function URL: "
        "access denied: GetPolicy needs lambda:GetPolicy on arn:aws:lambda:us-east-1:123456789012:"
        "function:coughlab:live, which the policy of the identity you run as does not allow; add "
        "it (docs/iam.md lists each policy)")


def test_a_missing_bucket_is_one_line_not_a_traceback(aws_target, tmp_path):
    write_deps(tmp_path / "deps")
    with pytest.raises(SystemExit) as exit_info:
        deploy_cli(tmp_path, write_model(tmp_path / "lambda"), "--bucket", "no-such-bucket",
                   "--role", aws_target["role"], "--repo", str(aws_target["repo"]))
    message = str(exit_info.value)
    assert message.startswith("deploy failed: AWS PutObject failed: NoSuchBucket")
    assert message.endswith("; alias live not moved") and "\n" not in message


def test_a_quota_error_names_the_quota_and_where_to_ask(stubbed_lambda, monkeypatch, clean_repo,
                                                       tmp_path):
    client, stubber, _ = stubbed_lambda
    monkeypatch.setattr(boto3, "client", lambda *a, **k: client)
    stubber.add_response("get_function", {"Configuration": {"FunctionName": "coughlab"}})
    stubber.add_client_error("update_function_code", "CodeStorageExceededException",
                             http_status_code=400, service_message="Code storage limit exceeded.")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--function", "coughlab", "--image-uri", "123456789012.dkr.ecr.us-east-1."
                     "amazonaws.com/coughlab:1", "--repo", str(clean_repo),
                     "--model-dir", str(write_model(tmp_path / "lambda"))])
    assert str(exit_info.value) == (
        "deploy failed: UpdateFunctionCode hit the quota 'Function and layer storage' "
        "(CodeStorageExceededException: Code storage limit exceeded.); request an increase in the "
        "Service Quotas console: https://console.aws.amazon.com/servicequotas/home/services/lambda/"
        "quotas; alias live not moved")


def test_history_follows_the_alias_and_a_republished_version_changes_nothing(stubbed_lambda):
    client, stubber, _ = stubbed_lambda
    moved_by_hand = {"Name": "live", "FunctionVersion": "4", "Description": "coughlab history: 6 5"}
    stubber.add_response("update_alias", {"Name": "live", "FunctionVersion": "7"},
                         {"FunctionName": "coughlab", "Name": "live", "FunctionVersion": "7",
                          "Description": "coughlab history: 7 4 6 5"})
    release.point_alias(client, "coughlab", "live", "7", moved_by_hand)
    release.point_alias(client, "coughlab", "live", "7", {"Name": "live", "FunctionVersion": "7"})
    stubber.assert_no_pending_responses()  # the second call made no request
