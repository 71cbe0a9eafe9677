"""The project's DVC remote: push, lose every local copy, pull, get the same bytes back.

Runs in a temp git+dvc repo carrying the project's own .dvc/config (remote `storage`), with
only the endpoint pointed at moto_server through .dvc/config.local, as a developer's
credentials and endpoint would be.
"""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import boto3
import numpy as np
from configobj import ConfigObj  # DVC's own config parser

ROOT = Path(__file__).resolve().parents[1]

STAGE = """\
stages:
  train:
    cmd: python -c "import shutil; shutil.copytree('data', 'build/model')"
    deps: [data]
    outs: [build/model]
"""


def project_remote() -> tuple[str, str]:
    """(name, url) of the default remote in the committed .dvc/config."""
    config = ConfigObj(str(ROOT / ".dvc" / "config"))
    name = config["core"]["remote"]
    return name, config[f'remote "{name}"']["url"]


def dvc(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}  # config.local only
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}{result.stderr}"
    return result.stdout


def md5s(repo: Path, *dirs: str) -> dict[str, str]:
    return {p.relative_to(repo).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for d in dirs for p in sorted((repo / d).rglob("*")) if p.is_file()}


def test_push_wipe_pull_round_trip(aws_env, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(repo, "init", "-q")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    name, url = project_remote()
    dvc(repo, "remote", "modify", "--local", name, "endpointurl", aws_env)
    assert aws_env not in (repo / ".dvc" / "config").read_text()  # endpoint stays uncommitted
    bucket, prefix = urlparse(url).netloc, urlparse(url).path.strip("/")
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)

    rng = np.random.default_rng(0)
    (repo / "data" / "clips").mkdir(parents=True)
    for i in range(3):
        (repo / "data" / "clips" / f"{i}.wav").write_bytes(rng.bytes(2000 + i))
    (repo / "data" / "labels.csv").write_text("path,label\nclips/0.wav,positive\n")
    (repo / "dvc.yaml").write_text(STAGE)
    dvc(repo, "add", "-q", "data")
    dvc(repo, "repro", "-q")
    before = md5s(repo, "data", "build/model")

    dvc(repo, "push")
    assert s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")["KeyCount"] > 0
    for lost in (".dvc/cache", "data", "build/model"):  # outputs, not git-tracked files
        shutil.rmtree(repo / lost)
    dvc(repo, "pull")
    assert md5s(repo, "data", "build/model") == before
    assert len(before) == 8
