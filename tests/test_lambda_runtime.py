"""The deployment zip as Lambda's python3.12 runtime runs it.

What `make deploy-lambda` uploads is built here the same way (coughlab.aws.deploy: the pinned
lambda/requirements.txt cross-installed for manylinux x86_64 / CPython 3.12, cached in
build/deploy like deploy's own, then build_zip), unpacked with its files' modes into a task
root, and run by the runtime interface client AWS's base images use (awslambdaric, pinned in
tests/lambda_ric_requirements.txt) on CPython of the version deploy's Runtime names, with the
Handler string deploy creates the function with, as a uid that owns none of the files, against
a Runtime API on 127.0.0.1 (tests/runtime_api.py). deploy's smoke test then invokes it.

Not emulated: Lambda's memory limit and its read-only file system (the task root is only
unwritable to that uid), and the runtime's own boto3 (only S3 events need it).
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import stat
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from coughlab.aws.deploy import package, release
from coughlab.function_url import function_url_event

from runtime_api import RuntimeApi, RuntimeLambda
from unprivileged import as_user, free_uid, require_root_and_setpriv

pytestmark = pytest.mark.slow  # the zip's ~240 MB are zipped and unpacked: about a minute

ROOT = Path(__file__).resolve().parents[1]
HANDLER = ROOT / package.HANDLER
DEPENDENCY_CACHE = ROOT / package.BUILD_DIR  # shared with `make deploy-lambda`
RIC_REQUIREMENTS = Path(__file__).with_name("lambda_ric_requirements.txt")
FUNCTION = release.FunctionSettings("coughlab", "arn:aws:iam::123456789012:role/coughlab",
                                   memory_mb=1024, timeout_s=30, alias="live")
GIT_COMMIT = "0123456789abcdef0123456789abcdef01234567"
INVOKE_WAIT_S = 300  # a guard against a hung runtime, not a limit on how fast it answers
# The stdlib parts a handler never imports, left out of the interpreter's copy.
UNUSED_STDLIB = {"test", "site-packages", "idlelib", "tkinter", "turtledemo", "ensurepip"}


@dataclass(frozen=True)
class RunningFunction:
    client: RuntimeLambda
    model_version: str
    log: Path
    pid: int
    uid: int
    python_version: str
    python: Path
    env: dict[str, str]
    task_root: Path


class CreatedFunction:
    """A Lambda client that keeps the settings deploy creates the function with."""

    def __init__(self):
        self.settings: dict = {}

    def create_function(self, **settings):
        self.settings = settings
        return {"CodeSha256": ""}

    def get_waiter(self, name):
        return self

    def wait(self, **_):
        pass


def deployed_settings() -> dict:
    """Runtime, Handler, MemorySize and Timeout exactly as deploy sends them."""
    lam = CreatedFunction()
    release.install_code(lam, FUNCTION, {"S3Bucket": "bucket", "S3Key": "key"}, exists=False)
    return lam.settings


def link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def runs_as(uid: int, python: Path, env: dict[str, str] | None = None):
    return subprocess.run([*as_user(uid), str(python), "-c", "import encodings, json"],
                          capture_output=True, text=True, env=env)


def runnable_python(python: Path, uid: int, lang_dir: Path) -> tuple[Path, dict[str, str]]:
    """`python`, or a copy in `lang_dir` (Lambda's /var/lang) when `uid` cannot reach it
    (an interpreter under root's home); and the environment it needs there."""
    if runs_as(uid, python).returncode == 0:
        return python, {}
    prefix = Path(subprocess.run([python, "-c", "import sys; print(sys.base_prefix)"],
                                 capture_output=True, text=True, check=True).stdout.strip())
    stdlib = prefix / "lib" / python.name

    def unused(folder: str, names: list[str]) -> set[str]:
        return UNUSED_STDLIB & set(names) if Path(folder) == stdlib else set()

    shutil.copytree(prefix, lang_dir, symlinks=True, ignore=unused, copy_function=link_or_copy)
    copied, env = lang_dir / "bin" / python.name, {"LD_LIBRARY_PATH": str(lang_dir / "lib")}
    probe = runs_as(uid, copied, {"PATH": "/usr/bin:/bin", **env})
    assert probe.returncode == 0, f"uid {uid} cannot run {copied}: {probe.stderr}"
    return copied, env


def unzip_like_lambda(package: Path, task_root: Path) -> None:
    """Unpack with each file's mode from the zip (Lambda keeps them), folders 0755."""
    with zipfile.ZipFile(package) as zf:
        for info in zf.infolist():
            target = task_root / info.filename
            for folder in reversed(target.relative_to(task_root).parents[:-1]):
                (task_root / folder).mkdir(mode=0o755, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            target.chmod(stat.S_IMODE(info.external_attr >> 16))


@pytest.fixture(scope="module")
def lambda_runtime(exported_model):
    """The zip running under awslambdaric as a uid that owns none of its files."""
    require_root_and_setpriv()
    settings = deployed_settings()
    version = settings["Runtime"].removeprefix("python")
    python = package.find_python(version)
    if python is None:
        pytest.skip(f"no CPython {version} here (the {settings['Runtime']} runtime's): "
                    f"install one, e.g. `pyenv install {version}`")
    deps = package.ensure_dependencies(ROOT / package.REQUIREMENTS, DEPENDENCY_CACHE)
    ric = package.ensure_dependencies(RIC_REQUIREMENTS, DEPENDENCY_CACHE)
    machine = Path(tempfile.mkdtemp(prefix="lambda-"))  # tmp_path's parents are root's only
    machine.chmod(0o755)
    uid = free_uid()
    try:
        python, python_env = runnable_python(python, uid, machine / "var" / "lang")
        runtime_dir, task_root = machine / "var" / "runtime", machine / "var" / "task"
        shutil.copytree(ric, runtime_dir, copy_function=link_or_copy)
        built = package.build_zip(deps, HANDLER, exported_model["lambda_dir"],
                                  machine / "function.zip", python=python,
                                  git_commit=GIT_COMMIT)
        task_root.mkdir(mode=0o755)
        unzip_like_lambda(built.path, task_root)
        built.path.unlink()
        scratch = machine / "tmp"
        scratch.mkdir(mode=0o777)
        scratch.chmod(0o1777)
        api = RuntimeApi(FUNCTION.name, settings["Timeout"])
        env = {  # the runtime environment variables Lambda defines for python3.12
            "AWS_LAMBDA_RUNTIME_API": api.address, "_HANDLER": settings["Handler"],
            "LAMBDA_TASK_ROOT": str(task_root), "LAMBDA_RUNTIME_DIR": str(runtime_dir),
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{settings['Runtime']}",
            "AWS_LAMBDA_FUNCTION_NAME": FUNCTION.name, "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(settings["MemorySize"]),
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{FUNCTION.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": "2026/01/01/[$LATEST]test",
            "LANG": "en_US.UTF-8", "TZ": ":UTC", "TMPDIR": str(scratch),
            "PATH": f"{python.parent}:/usr/local/bin:/usr/bin:/bin",
            "PYTHONPATH": str(runtime_dir),
            "LD_LIBRARY_PATH": ":".join(filter(None, [python_env.get("LD_LIBRARY_PATH"),
                                                      str(runtime_dir), str(task_root),
                                                      str(task_root / "lib")]))}
        log_path = machine / "runtime.log"
        with open(log_path, "wb") as log:
            runtime = subprocess.Popen(
                [*as_user(uid), str(python), "-m", "awslambdaric", settings["Handler"]],
                cwd=task_root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT)
        try:
            client = RuntimeLambda(api, lambda: runtime.poll() is None, INVOKE_WAIT_S)
            model = json.loads((exported_model["lambda_dir"] / "model.json").read_text())
            yield RunningFunction(client, model["version"], log_path, runtime.pid, uid, version,
                                  python, env, task_root)
        finally:
            runtime.terminate()
            try:
                runtime.wait(timeout=10)
            except subprocess.TimeoutExpired:
                runtime.kill()
                runtime.wait()
            api.close()
    finally:
        shutil.rmtree(machine)


def test_the_runtime_is_cpython_of_deploys_runtime_run_by_a_non_root_uid(lambda_runtime):
    lambda_runtime.client.answer(function_url_event("GET"))  # past setpriv's exec
    status = Path(f"/proc/{lambda_runtime.pid}/status").read_text()
    (uids,) = [line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")]
    assert set(uids) == {str(lambda_runtime.uid)}  # real, effective, saved, fs
    exe = Path(os.readlink(f"/proc/{lambda_runtime.pid}/exe")).name
    assert exe == f"python{lambda_runtime.python_version}"


def test_the_runtime_serves_the_page_and_scores_a_wav_as_in_production(lambda_runtime):
    client, model_version, log = (lambda_runtime.client, lambda_runtime.model_version,
                                  lambda_runtime.log)
    page = client.answer(function_url_event("GET"))
    assert page["statusCode"] == 200, log.read_text()[-3000:]
    assert page["headers"]["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in page["headers"]["Content-Security-Policy"]
    assert "MediaRecorder" in page["body"]
    scored = client.answer(function_url_event("POST", "/", {"content-type": "audio/wav"},
                                              release.smoke_clip()))
    assert scored["statusCode"] == 200, f"{scored['body']}\n{log.read_text()[-3000:]}"
    assert scored["headers"] == {"Content-Type": "application/json"}
    result = json.loads(scored["body"])
    assert set(result) == {"p_positive", "label", "threshold", "model_version", "git_commit",
                           "seconds"}
    assert 0 <= result["p_positive"] <= 1
    assert result["label"] == ("positive" if result["p_positive"] >= result["threshold"]
                               else "negative")
    assert (result["model_version"], result["git_commit"]) == (model_version, GIT_COMMIT)
    assert result["seconds"] == 1.5  # smoke_clip's length


def test_the_handler_and_all_it_imports_load_from_the_zips_bytecode(lambda_runtime):
    """Lambda's task root is read-only: a module shipped without its bytecode is compiled again
    at every cold start. Importing the handler and every package it imports (lazily too), as
    the runtime's uid, compiles nothing from the task root."""
    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(HANDLER.read_text()))
                if isinstance(node, ast.Import) for alias in node.names}
    shipped = sorted(name for name in imported
                     if (lambda_runtime.task_root / name / "__init__.py").is_file())
    assert {"numpy", "onnxruntime", "av"} <= set(shipped)
    probe = subprocess.run(
        [*as_user(lambda_runtime.uid), str(lambda_runtime.python), "-v", "-c",
         f"import handler, {', '.join(shipped)}"], cwd=lambda_runtime.task_root,
        env={**lambda_runtime.env, "PYTHONPATH": str(lambda_runtime.task_root)},
        capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-3000:]
    root = str(lambda_runtime.task_root)
    from_source = [line for line in probe.stderr.splitlines()
                   if line.startswith(f"# code object from {root}/")]
    from_bytecode = [line for line in probe.stderr.splitlines()
                     if line.startswith(f"# code object from '{root}/")]
    assert from_source == [], from_source[:5]
    assert any("/numpy/__pycache__/" in line for line in from_bytecode), probe.stderr[-3000:]


def test_deploys_smoke_test_passes_through_the_runtime(lambda_runtime):
    version = lambda_runtime.model_version
    assert f"from model {version}" in release.smoke_test(lambda_runtime.client, FUNCTION.name,
                                                        "$LATEST", version)


@pytest.mark.parametrize("event,status,error", [
    (function_url_event("POST", "/", {"content-type": "audio/wav"}, b"not audio at all"), 415,
     "unsupported_audio"),
    (function_url_event("POST", "/", {"content-type": "text/plain"}, b"a cough"), 415,
     "unsupported_content_type"),
    (["not", "an", "object"], 400, "invalid_event"),
])
def test_bad_requests_get_a_json_4xx_not_a_function_error(lambda_runtime, event, status, error):
    answer = lambda_runtime.client.answer(event)
    assert (answer["statusCode"], json.loads(answer["body"])["error"]) == (status, error)
