"""The DVC remote: the user's own, push, lose every local copy, pull, get the same bytes back.

Runs in a temp git+dvc repo carrying the project's own .dvc/config, which names no remote: each
test adds one as a user would (README: Remote storage), on moto_server, with the endpoint in
.dvc/config.local as a developer's S3-compatible endpoint would be.
"""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
from configobj import ConfigObj  # DVC's own config parser

ROOT = Path(__file__).resolve().parents[1]
BUCKET, PREFIX = "my-coughlab-bucket", "coughlab"
URL = f"s3://{BUCKET}/{PREFIX}"

STAGE = """\
stages:
  train:
    cmd: python -c "import shutil; shutil.copytree('data', 'build/model')"
    deps: [data]
    outs: [build/model]
"""


def dvc(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}  # config.local only
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def make(repo: Path, target: str, **env: str) -> subprocess.CompletedProcess:
    """The project's `make push`/`make pull` in `repo`, with this venv (no install step)."""
    venv = Path(sys.executable).parent.parent
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("AWS_ENDPOINT_URL", "COUGHLAB_DVC_REMOTE")}
    full_env["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"
    full_env.update(env)
    return subprocess.run(["make", "-f", str(ROOT / "Makefile"), "-o", "install", f"VENV={venv}",
                           target], cwd=repo, env=full_env, capture_output=True, text=True)


def md5s(repo: Path, *dirs: str) -> dict[str, str]:
    return {p.relative_to(repo).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for d in dirs for p in sorted((repo / d).rglob("*")) if p.is_file()}


def project_repo(tmp_path: Path) -> Path:
    """A git+dvc repo with the project's .dvc/config, a tracked data/ and one stage run."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    rng = np.random.default_rng(0)
    (repo / "data" / "clips").mkdir(parents=True)
    for i in range(3):
        (repo / "data" / "clips" / f"{i}.wav").write_bytes(rng.bytes(2000 + i))
    (repo / "data" / "labels.csv").write_text("path,label\nclips/0.wav,positive\n")
    (repo / "dvc.yaml").write_text(STAGE)
    dvc(repo, "add", "-q", "data")
    dvc(repo, "repro", "-q")
    return repo


def test_the_committed_config_names_no_remote():
    """A bucket name we do not own would send a user's data to whoever owns it."""
    config = ConfigObj(str(ROOT / ".dvc" / "config"))
    assert "remote" not in config.get("core", {})
    assert not [section for section in config if section.startswith("remote")]


def test_push_without_a_remote_says_how_to_add_one(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    for target in ("push", "pull"):
        result = make(repo, target)
        assert result.returncode != 0
        assert "dvc remote add -d storage s3://<your-bucket>/coughlab" in result.stderr
        assert "COUGHLAB_DVC_REMOTE=s3://<your-bucket>/coughlab" in result.stderr


def test_push_wipe_pull_round_trip(aws_env, tmp_path):
    repo = project_repo(tmp_path)
    dvc(repo, "remote", "add", "-d", "storage", URL)  # README: Remote storage
    dvc(repo, "remote", "modify", "--local", "storage", "endpointurl", aws_env)
    assert aws_env not in (repo / ".dvc" / "config").read_text()  # endpoint stays uncommitted
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    before = md5s(repo, "data", "build/model")

    result = make(repo, "push")
    assert result.returncode == 0, result.stderr
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/")["KeyCount"] > 0
    for lost in (".dvc/cache", "data", "build/model"):  # outputs, not git-tracked files
        shutil.rmtree(repo / lost)
    result = make(repo, "pull")
    assert result.returncode == 0, result.stderr
    assert md5s(repo, "data", "build/model") == before
    assert len(before) == 8


def test_remote_from_the_environment_is_kept_out_of_git(aws_env, tmp_path):
    repo = project_repo(tmp_path)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET)
    result = make(repo, "push", COUGHLAB_DVC_REMOTE=URL, AWS_ENDPOINT_URL=aws_env)
    assert result.returncode == 0, result.stderr
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/")["KeyCount"] > 0
    assert URL in (repo / ".dvc" / "config.local").read_text()
    assert URL not in (repo / ".dvc" / "config").read_text()


def test_ci_reaches_the_remote_only_from_a_job_that_runs_no_pr_code():
    """Long-lived keys in env reach every step, PR code included; OIDC in one job does not."""
    import yaml

    text = (ROOT / ".github" / "workflows" / "pr.yml").read_text()
    assert "AWS_ACCESS_KEY_ID" not in text and "AWS_SECRET_ACCESS_KEY" not in text
    workflow = yaml.safe_load(text)
    assert workflow["permissions"] == {}
    jobs = workflow["jobs"]
    with_aws = {name for name, job in jobs.items()
                if job.get("permissions", {}).get("id-token") == "write"}
    assert with_aws == {"dvc-cache"}
    cache = jobs["dvc-cache"]
    assert "github.event.pull_request.head.repo.full_name == github.repository" in cache["if"]
    assume = [step for step in cache["steps"]
              if step.get("uses", "").startswith("aws-actions/configure-aws-credentials@")]
    assert [step["with"]["role-to-assume"] for step in assume] == ["${{ vars.AWS_DVC_ROLE_ARN }}"]
    runs = " ".join(step.get("run", "") for step in cache["steps"])
    assert "make" not in runs and "pip install ." not in runs and "repro" not in runs
    assert all(step.get("with", {}).get("persist-credentials") is False
               for step in cache["steps"] if step.get("uses", "").startswith("actions/checkout@"))
    for name, job in jobs.items():  # the jobs that run PR code or post to the PR hold no AWS
        if name != "dvc-cache":
            assert "id-token" not in job.get("permissions", {})
            assert not any(step.get("uses", "").startswith("aws-actions/")
                           for step in job["steps"])
    assert "repro" in " ".join(step.get("run", "") for step in jobs["report"]["steps"])
