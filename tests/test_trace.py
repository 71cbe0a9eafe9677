"""coughlab.trace: a model_version leads back to its commit, data and params, from any clone."""
import json
import subprocess
import sys

import pytest

from coughlab import trace
from coughlab.provenance import write_record

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


def provenance(lr: float) -> dict:
    return {"data_md5": "3f69844b0eccd1df55ffcb3b3731c55f.dir", "data_sources": ["local"],
            "params": {"seed": 42, "lr": lr, "model": {"arch": "cnn"}, "train": {"epochs": 2},
                       "audio": {"sample_rate": 16000}},
            "features_md5": "12e2ebf82802aa59dcb4ed44f31be99c.dir",
            "model_md5": f"{int(lr * 1000):032x}.dir"}


def commit(repo, message):
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", message], cwd=repo, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Two models, each committed with its record, then an unrelated commit."""
    repo = tmp_path_factory.mktemp("repo")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    write_record(repo / "reports" / "model.json", "aaaaaaaaaaaa", provenance(0.003))
    first = commit(repo, "lr 3e-3")
    write_record(repo / "reports" / "model.json", "bbbbbbbbbbbb", provenance(0.001))
    second = commit(repo, "lr 1e-3")
    (repo / "README.md").write_text("unrelated\n")
    commit(repo, "docs")
    return {"repo": repo, "first": first, "second": second}


def test_each_version_leads_to_the_commit_that_recorded_it(history):
    for version, commit_key, lr in [("aaaaaaaaaaaa", "first", 0.003), ("bbbbbbbbbbbb", "second", 0.001)]:
        found = trace.trace(history["repo"], version)
        assert found.commit == history[commit_key]
        assert found.record == {"version": version, "provenance": provenance(lr)}


def test_a_fresh_clone_traces_from_its_remote_branches(history, tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(history["repo"]), str(clone)], check=True)
    # Only origin/main now holds the second model's commit.
    subprocess.run(["git", "checkout", "-q", "--detach", history["first"]], cwd=clone, check=True)
    subprocess.run(["git", "branch", "-q", "-D", "main"], cwd=clone, check=True)
    assert trace.trace(clone, "bbbbbbbbbbbb").commit == history["second"]


def test_cli_names_commit_data_params_and_how_to_get_the_model(history):
    result = subprocess.run([sys.executable, "-m", "coughlab.trace", "aaaaaaaaaaaa", "--repo",
                             str(history["repo"])], capture_output=True, text=True, check=True)
    out = result.stdout
    assert f"commit         {history['first']}" in out and "lr 3e-3" in out
    assert "data/ md5 3f69844b0eccd1df55ffcb3b3731c55f.dir (data.dvc), sources: local" in out
    assert "lr: 0.003" in out and "seed: 42" in out
    assert f"git checkout {history['first']} && dvc pull build/lambda" in out
    assert f"git checkout {history['first']} && dvc repro" in out


def test_cli_json(history, capsys):
    trace.main(["bbbbbbbbbbbb", "--repo", str(history["repo"]), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["commit"] == history["second"] and printed["provenance"] == provenance(0.001)


@pytest.mark.parametrize("version,message", [
    ("cccccccccccc", "unknown model version cccccccccccc: no commit in this clone records it"),
    ("aaaaaa", "'aaaaaa' is not a model version: expected 12 lowercase hex digits"),
    # A substring of a recorded hash is not a version.
    ("3f69844b0ecc", "unknown model version 3f69844b0ecc"),
])
def test_unknown_or_malformed_version_is_refused(history, version, message):
    with pytest.raises(SystemExit, match=message):
        trace.main([version, "--repo", str(history["repo"])])


def test_outside_a_git_repository_says_so(tmp_path):
    with pytest.raises(SystemExit, match="not a git repository"):
        trace.main(["aaaaaaaaaaaa", "--repo", str(tmp_path)])


def test_help_explains(capsys):
    with pytest.raises(SystemExit) as exit_info:
        trace.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "model_version" in out and "dvc pull build/lambda" in out and "git log -S" in out
