"""coughlab.deploy: release gate, offline zip builder, and the AWS calls against moto_server.

moto's Lambda invoke does not run handlers, so the zip's contents are exercised in-process
(extracted and imported) and the AWS side only checks create/update/publish/alias.
"""
import base64
import hashlib
import importlib.util
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import boto3
import botocore.waiter
import numpy as np
import pytest
import soundfile as sf
from botocore.exceptions import WaiterError
from botocore.stub import Stubber

from coughlab import deploy

ROOT = Path(__file__).resolve().parents[1]
HANDLER = ROOT / "lambda" / "handler.py"
LAMBDA_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


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
             f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: {tag}\n"}
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


@pytest.fixture(scope="module")
def clean_repo(tmp_path_factory) -> Path:
    return committed_repo(tmp_path_factory.mktemp("clean-repo"))


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
        deploy.check_release(model_dir, deploy.read_model_meta(model_dir), min_roc_auc=0.7)


def test_refused_model_never_reaches_aws(aws_env, tmp_path, capsys):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="coughlab-deploy")
    model_dir = write_model(tmp_path / "lambda", parity={"passed": False, "clips": 2, "tolerance": 1e-4})
    with pytest.raises(SystemExit, match="deploy refused: the Lambda handler and the pipeline disagree"):
        deploy.main(["--bucket", "coughlab-deploy", "--role", "arn:aws:iam::123456789012:role/x",
                     "--model-dir", str(model_dir), "--deps-dir", str(write_deps(tmp_path / "deps")),
                     "--build-dir", str(tmp_path / "build")])
    assert s3.list_objects_v2(Bucket="coughlab-deploy")["KeyCount"] == 0
    assert boto3.client("lambda").list_functions()["Functions"] == []
    assert not (tmp_path / "build").exists()


# --- zip builder (offline) ----------------------------------------------------------------

def test_zip_layout_is_lambda_ready_and_reproducible(tmp_path):
    deps = write_deps(tmp_path / "deps")
    model_dir = write_model(tmp_path / "lambda")
    first = deploy.build_zip(deps, HANDLER, model_dir, tmp_path / "a.zip")
    second = deploy.build_zip(deps, HANDLER, model_dir, tmp_path / "b.zip")
    assert first.sha256 == second.sha256
    assert first.code_sha256 == base64.b64encode(hashlib.sha256((tmp_path / "a.zip").read_bytes())
                                                 .digest()).decode()
    with zipfile.ZipFile(first.path) as zf:
        names = set(zf.namelist())
        core_mode = zf.getinfo("fakenp/_core.so").external_attr >> 16
    assert names == {"handler.py", "page.html", "model/model.json", "model/model.onnx", "fakenp/__init__.py",
                     "fakenp/_core.so", "fakenp-1.0.dist-info/METADATA"}
    assert core_mode & 0o777 == 0o755
    shipped = [HANDLER, HANDLER.parent / "page.html", model_dir / "model.json", model_dir / "model.onnx",
               deps / "fakenp" / "__init__.py", deps / "fakenp" / "_core.so",
               deps / "fakenp-1.0.dist-info" / "METADATA"]
    assert first.unzipped_bytes == sum(p.stat().st_size for p in shipped)


def test_zip_over_the_unzipped_limit_is_refused_and_not_written(tmp_path):
    model_dir = write_model(tmp_path / "lambda")
    with pytest.raises(deploy.DeployError, match="over Lambda's 0.0 MiB limit"):
        deploy.build_zip(write_deps(tmp_path / "deps"), HANDLER, model_dir, tmp_path / "f.zip",
                         max_unzipped_bytes=1000)
    assert list(tmp_path.glob("*.zip")) == [] and list(tmp_path.glob(".f.zip*")) == []


def test_dependency_named_like_the_handler_is_refused(tmp_path):
    deps = write_deps(tmp_path / "deps")
    (deps / "handler.py").write_text("print('shadow')\n")
    with pytest.raises(deploy.DeployError, match="shadow the handler"):
        deploy.build_zip(deps, HANDLER, write_model(tmp_path / "lambda"), tmp_path / "f.zip")


def test_unzipped_package_serves_requests(exported_model, tmp_path, monkeypatch):
    """The zip's layout is what the handler expects: model/ next to handler.py, no MODEL_DIR."""
    (tmp_path / "deps").mkdir()
    package = deploy.build_zip(tmp_path / "deps", HANDLER, exported_model["lambda_dir"],
                               tmp_path / "function.zip")
    task_root = tmp_path / "var-task"
    with zipfile.ZipFile(package.path) as zf:
        zf.extractall(task_root)
    monkeypatch.delenv("MODEL_DIR", raising=False)
    spec = importlib.util.spec_from_file_location("unzipped_handler", task_root / "handler.py")
    handler = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handler)
    assert handler.MODEL_DIR == task_root / "model"
    response = handler.handler({"body": wav_base64(), "isBase64Encoded": True})
    assert response["statusCode"] == 200
    result = json.loads(response["body"])
    assert 0.0 <= result["p_positive"] <= 1.0
    assert result["model_version"] == json.loads(
        (exported_model["lambda_dir"] / "model.json").read_text())["version"]
    page = handler.handler({"requestContext": {"http": {"method": "GET"}}})  # page.html shipped
    assert page["statusCode"] == 200 and "MediaRecorder" in page["body"]
    card = handler.handler({"requestContext": {"http": {"method": "GET"}},  # the page links it
                            "rawQueryString": "model_card"})
    assert card["statusCode"] == 200 and card["body"].startswith("# Model card")


def test_dependencies_are_cross_built_for_the_lambda_platform_and_cached(tmp_path):
    wheels = tmp_path / "wheels"
    # Only a CPython 3.12 manylinux_2_17 wheel exists: this host (3.11) could not use it,
    # the Lambda runtime can.
    wheel = fake_wheel(wheels, "fakenative", "cp312-cp312-manylinux_2_17_x86_64")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"--no-index\n--find-links {wheels}\n{hashed_pin(wheel)}\n")
    deps = deploy.ensure_dependencies(requirements, tmp_path / "cache")
    assert (deps / "fakenative" / "__init__.py").read_text() == "VALUE = 1\n"
    for wheel in wheels.iterdir():  # a second pip run would now fail: the cache must be used
        wheel.unlink()
    assert deploy.ensure_dependencies(requirements, tmp_path / "cache") == deps


def test_wheel_the_lambda_cannot_load_fails_the_build(tmp_path):
    wheels = tmp_path / "wheels"
    host_only = f"cp{sys.version_info.major}{sys.version_info.minor}"
    built = {"hostonly": fake_wheel(wheels, "hostonly", f"{host_only}-{host_only}-manylinux_2_17_x86_64"),
             "newglibc": fake_wheel(wheels, "newglibc", "cp312-cp312-manylinux_2_34_x86_64")}
    for name, wheel in built.items():
        requirements = tmp_path / f"{name}.txt"
        requirements.write_text(f"--no-index\n--find-links {wheels}\n{hashed_pin(wheel)}\n")
        with pytest.raises(deploy.DeployError, match="pip could not install"):
            deploy.ensure_dependencies(requirements, tmp_path / "cache")
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
        deploy.ensure_dependencies(requirements, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_lambda_requirements_pin_every_wheel_by_version_and_hash():
    text = (Path(__file__).resolve().parents[1] / "lambda" / "requirements.txt").read_text()
    pins = [line for line in text.replace("\\\n", " ").splitlines()
            if line.strip() and not line.startswith("#")]
    assert {p.split("==")[0] for p in pins} >= {"onnxruntime", "numpy", "soundfile", "soxr", "av"}
    for pin in pins:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[^ ]+ +--hash=sha256:[0-9a-f]{64}", pin), pin


# --- AWS calls (moto_server) --------------------------------------------------------------

@pytest.fixture
def aws_target(aws_env, clean_repo):
    """An IAM role Lambda can assume and a bucket for the zips, in an empty moto; a clean repo."""
    role = boto3.client("iam").create_role(
        RoleName="coughlab-lambda", AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST))["Role"]["Arn"]
    boto3.client("s3").create_bucket(Bucket="coughlab-deploy")
    return {"role": role, "bucket": "coughlab-deploy", "repo": str(clean_repo)}


def deploy_cli(tmp_path, model_dir, *extra):
    deploy.main(["--function", "coughlab-test", "--model-dir", str(model_dir),
                 "--deps-dir", str(tmp_path / "deps"), "--build-dir", str(tmp_path / "build"),
                 *extra])


def test_first_deploy_creates_later_ones_update_and_alias_follows(aws_target, tmp_path, capsys):
    write_deps(tmp_path / "deps")
    model_dir = write_model(tmp_path / "lambda", onnx=b"graph one")
    args = ["--bucket", aws_target["bucket"], "--role", aws_target["role"], "--memory", "2048",
            "--repo", aws_target["repo"]]
    lam = boto3.client("lambda")

    deploy_cli(tmp_path, model_dir, *args)
    assert "coughlab-test version 1 is Active; alias live -> 1" in capsys.readouterr().out
    first_sha = lam.get_function_configuration(FunctionName="coughlab-test", Qualifier="1")["CodeSha256"]
    config = lam.get_function(FunctionName="coughlab-test")["Configuration"]
    assert (config["Runtime"], config["Handler"], config["MemorySize"]) == (
        "python3.12", "handler.handler", 2048)
    package_sha = hashlib.sha256((tmp_path / "build" / "function.zip").read_bytes()).hexdigest()
    key = f"lambda/coughlab-test/{package_sha[:16]}.zip"
    assert boto3.client("s3").head_object(Bucket=aws_target["bucket"], Key=key)["ContentLength"] > 0

    write_model(model_dir, onnx=b"graph two")
    deploy_cli(tmp_path, model_dir, *args)
    assert "version 2 is Active; alias live -> 2" in capsys.readouterr().out
    assert lam.get_alias(FunctionName="coughlab-test", Name="live")["FunctionVersion"] == "2"
    second_sha = lam.get_function_configuration(FunctionName="coughlab-test", Qualifier="2")["CodeSha256"]
    assert second_sha != first_sha
    assert lam.get_function_configuration(FunctionName="coughlab-test", Qualifier="1")["CodeSha256"] == first_sha


def test_creating_a_function_needs_a_role_and_uploads_nothing_without_one(aws_target, tmp_path):
    write_deps(tmp_path / "deps")
    with pytest.raises(SystemExit, match="does not exist; pass --role"):
        deploy_cli(tmp_path, write_model(tmp_path / "lambda"), "--bucket", aws_target["bucket"],
                   "--repo", aws_target["repo"])
    assert boto3.client("s3").list_objects_v2(Bucket=aws_target["bucket"])["KeyCount"] == 0


def test_container_image_deploy(aws_target, tmp_path, capsys):
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/coughlab:bfe50bcff612"
    deploy_cli(tmp_path, write_model(tmp_path / "lambda"), "--image-uri", image,
               "--role", aws_target["role"], "--repo", aws_target["repo"])
    assert "version 1 is Active; alias live -> 1" in capsys.readouterr().out
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


FN = deploy.FunctionSettings("coughlab", None, 1024, 30, "live")
SHA = base64.b64encode(b"\1" * 32).decode()


def expect_publish_then_states(stubber, version, states):
    stubber.add_response("publish_version", {"Version": version},
                         {"FunctionName": "coughlab", "CodeSha256": SHA, "Description": "model x"})
    for state in states:
        stubber.add_response("get_function_configuration", {"State": state, "Version": version},
                             {"FunctionName": "coughlab", "Qualifier": version})


def test_alias_moves_only_after_the_version_is_active(stubbed_lambda):
    client, stubber, sleeps = stubbed_lambda
    expect_publish_then_states(stubber, "7", ["Pending", "Pending", "Active"])
    stubber.add_response("get_alias", {"Name": "live", "FunctionVersion": "6"},
                         {"FunctionName": "coughlab", "Name": "live"})
    stubber.add_response("update_alias", {"Name": "live", "FunctionVersion": "7"},
                         {"FunctionName": "coughlab", "Name": "live", "FunctionVersion": "7"})
    assert deploy.release(client, FN, SHA, "model x") == "7"
    stubber.assert_no_pending_responses()
    assert len(sleeps) == 2  # polled until Active before touching the alias


def test_alias_stays_when_the_version_fails(stubbed_lambda):
    client, stubber, _ = stubbed_lambda
    expect_publish_then_states(stubber, "8", ["Pending", "Failed"])
    # No get_alias/update_alias is scripted: calling either would be an unexpected call.
    with pytest.raises(WaiterError, match="Failed"):
        deploy.release(client, FN, SHA, "model x")
    stubber.assert_no_pending_responses()


# --- provenance: deploy only committed, reproduced models, and name the commit -------------

def test_deploy_refuses_a_dirty_tree_and_names_what_is_dirty(tmp_path):
    repo = committed_repo(tmp_path / "repo")
    (repo / ".dvcignore").write_text("# changed\n")
    (repo / "notes.txt").write_text("untracked\n")
    with pytest.raises(SystemExit, match=r"uncommitted changes(.|\n)* M \.dvcignore\n  \?\? notes\.txt"):
        deploy.main(["--zip-only", "--repo", str(repo), "--model-dir", str(write_model(tmp_path / "lambda")),
                     "--deps-dir", str(write_deps(tmp_path / "deps")), "--build-dir", str(tmp_path / "build")])
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
    assert deploy.require_reproducible(repo)  # clean right after dvc repro + commit
    make_stale(repo)
    with pytest.raises(SystemExit, match=f"dvc.lock does not match the workspace(.|\\n)*{message}"):
        deploy.main(["--check-only", "--repo", str(repo),
                     "--model-dir", str(write_model(tmp_path / "lambda"))])


def test_outside_a_git_checkout_deploy_refuses(tmp_path):
    with pytest.raises(SystemExit, match="is not a git checkout with a commit"):
        deploy.main(["--check-only", "--repo", str(tmp_path),
                     "--model-dir", str(write_model(tmp_path / "lambda"))])


def test_shipped_model_json_names_the_deploying_commit(clean_repo, tmp_path):
    model_dir = write_model(tmp_path / "lambda")
    original = (model_dir / "model.json").read_text()
    deploy.main(["--zip-only", "--repo", str(clean_repo), "--model-dir", str(model_dir),
                 "--deps-dir", str(write_deps(tmp_path / "deps")), "--build-dir", str(tmp_path / "build")])
    with zipfile.ZipFile(tmp_path / "build" / "function.zip") as zf:
        shipped = json.loads(zf.read("model/model.json"))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clean_repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert shipped == json.loads(original) | {"git_commit": head}
    assert (model_dir / "model.json").read_text() == original  # the DVC output is untouched


def test_function_is_tagged_and_version_described_with_commit_and_model(aws_target, tmp_path):
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/coughlab:bfe50bcff612"
    model_dir = write_model(tmp_path / "lambda")
    deploy_cli(tmp_path, model_dir, "--image-uri", image, "--role", aws_target["role"],
               "--repo", aws_target["repo"])
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
    deploy.tag_function(client, "coughlab", deploy.release_tags({"git_commit": "c" * 40,
                                                                 "version": "a" * 12}))
    stubber.assert_no_pending_responses()


def test_version_description_fits_lambdas_limit():
    meta = {"version": "a" * 12, "git_commit": "c" * 40}
    assert deploy.version_description(meta, "zip 0123456789ab") == (
        f"model {'a' * 12}, git {'c' * 40}, zip 0123456789ab")
    assert len(deploy.version_description(meta, "image " + "x" * 300)) == 256


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
    model_dir = write_model(tmp_path / "lambda", onnx=b"graph one")
    args = ["--bucket", aws_target["bucket"], "--role", aws_target["role"],
            "--reserved-concurrency", "3", "--repo", aws_target["repo"]]
    lam = boto3.client("lambda")

    deploy_cli(tmp_path, model_dir, *args)
    config, sids = function_url_state(lam)
    function_url = config["FunctionUrl"]
    assert f"Function URL {function_url} (auth NONE, at most 3 concurrent" in capsys.readouterr().out
    assert config["AuthType"] == "NONE"
    assert config["Cors"]["AllowOrigins"] == [function_url.rstrip("/")]
    assert set(config["Cors"]["AllowMethods"]) == {"GET", "POST"}
    assert sids == ["coughlab-public-url", "coughlab-public-url-invoke"]
    concurrency = lam.get_function_concurrency(FunctionName="coughlab-test")
    assert concurrency["ReservedConcurrentExecutions"] == 3

    write_model(model_dir, onnx=b"graph two")  # a redeploy keeps the URL, grants nothing twice
    deploy_cli(tmp_path, model_dir, *args)
    assert function_url_state(lam) == (config, sids)


def test_iam_auth_takes_the_public_permission_away(aws_target, tmp_path, capsys):
    write_deps(tmp_path / "deps")
    model_dir = write_model(tmp_path / "lambda")
    args = ["--bucket", aws_target["bucket"], "--role", aws_target["role"], "--repo", aws_target["repo"]]
    lam = boto3.client("lambda")
    deploy_cli(tmp_path, model_dir, *args)
    assert function_url_state(lam)[1] == ["coughlab-public-url", "coughlab-public-url-invoke"]

    deploy_cli(tmp_path, model_dir, *args, "--url-auth", "AWS_IAM")
    config, sids = function_url_state(lam)
    assert (config["AuthType"], sids) == ("AWS_IAM", [])
    assert "auth AWS_IAM" in capsys.readouterr().out
    concurrency = lam.get_function_concurrency(FunctionName="coughlab-test")
    assert concurrency["ReservedConcurrentExecutions"] == deploy.DEFAULT_RESERVED_CONCURRENCY


@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_concurrency_cap_below_one_is_refused(value, capsys):
    with pytest.raises(SystemExit):
        deploy.parse_args(["--check-only", "--reserved-concurrency", value])
    assert "must be at least 1" in capsys.readouterr().err


URL = "https://abc123.lambda-url.us-east-1.on.aws/"
CORS = {"AllowOrigins": ["https://abc123.lambda-url.us-east-1.on.aws"],
        "AllowMethods": ["GET", "POST"], "AllowHeaders": ["content-type"], "MaxAge": 3600}


def test_first_url_is_capped_then_created_then_limited_to_its_origin(stubbed_lambda, monkeypatch):
    """The exact calls, in order: cap, create (URL unknown), CORS for that URL, both grants."""
    client, stubber, _ = stubbed_lambda
    monkeypatch.setattr(boto3, "client", lambda *a, **k: client)
    url_params = {"FunctionName": "coughlab", "Qualifier": "live"}
    stubber.add_response("put_function_concurrency", {"ReservedConcurrentExecutions": 5},
                         {"FunctionName": "coughlab", "ReservedConcurrentExecutions": 5})
    stubber.add_client_error("get_function_url_config", "ResourceNotFoundException", http_status_code=404,
                             expected_params=url_params)
    url_config = {"FunctionUrl": URL, "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:coughlab",
                  "AuthType": "NONE", "CreationTime": "2026-01-01T00:00:00Z"}
    stubber.add_response("create_function_url_config", url_config, url_params | {"AuthType": "NONE"})
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
    assert deploy.publish_url(FN, deploy.UrlSettings("NONE", 5)) == URL
    stubber.assert_no_pending_responses()
