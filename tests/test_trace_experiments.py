"""coughlab.trace finds a model that `dvc exp run` made (its commit is only in refs/exps/...) and
says when the version is the working tree's own uncommitted export."""
import json
import subprocess

import pytest

from coughlab import trace
from coughlab.provenance import write_record

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


def provenance(lr: float) -> dict:
    return {"data_md5": "3f69844b0eccd1df55ffcb3b3731c55f.dir", "data_sources": ["local"],
            "params": {"seed": 42, "lr": lr}, "features_md5": "0" * 32 + ".dir",
            "model_md5": "1" * 32 + ".dir"}


def git(repo, *args) -> str:
    return subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def repo_with_an_experiment(tmp_path):
    """main records aaaa...; an experiment commit (as `dvc exp run` leaves it: a ref under
    refs/exps, on no branch) records eeee...; the working tree is main's again."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    write_record(repo / "reports" / "model.json", "aaaaaaaaaaaa", provenance(0.003))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "baseline")
    baseline = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "--detach")
    write_record(repo / "reports" / "model.json", "eeeeeeeeeeee", provenance(0.001))
    git(repo, "commit", "-q", "-am", "dvc: commit experiment")
    experiment = git(repo, "rev-parse", "HEAD")
    git(repo, "update-ref", f"refs/exps/{baseline[:2]}/{baseline[2:]}/loyal-lark", experiment)
    git(repo, "update-ref", "refs/exps/exec/EXEC_BRANCH", experiment)  # DVC's bookkeeping
    git(repo, "checkout", "-q", "main")
    return {"repo": repo, "experiment": experiment}


def test_a_model_from_dvc_exp_run_is_found_and_named_by_its_experiment(repo_with_an_experiment,
                                                                       capsys):
    repo = repo_with_an_experiment["repo"]
    found = trace.trace(repo, "eeeeeeeeeeee")
    assert found.commit == repo_with_an_experiment["experiment"]
    trace.main(["eeeeeeeeeeee", "--repo", str(repo)])
    out = capsys.readouterr().out
    assert "experiment    loyal-lark: on no branch yet" in out
    assert "dvc exp branch loyal-lark <branch>" in out and "dvc exp apply loyal-lark" in out
    trace.main(["eeeeeeeeeeee", "--repo", str(repo), "--json"])
    assert json.loads(capsys.readouterr().out)["experiment"] == "loyal-lark"


def test_a_model_on_a_branch_is_not_called_an_experiment(repo_with_an_experiment, capsys):
    repo = repo_with_an_experiment["repo"]
    git(repo, "branch", "lower-lr", repo_with_an_experiment["experiment"])
    trace.main(["eeeeeeeeeeee", "--repo", str(repo)])
    assert "on no branch yet" not in capsys.readouterr().out
    trace.main(["aaaaaaaaaaaa", "--repo", str(repo), "--json"])
    assert json.loads(capsys.readouterr().out)["experiment"] is None


def test_the_working_trees_uncommitted_model_is_called_uncommitted(repo_with_an_experiment):
    repo = repo_with_an_experiment["repo"]
    write_record(repo / "reports" / "model.json", "cccccccccccc", provenance(0.01))
    with pytest.raises(SystemExit, match=r"unknown model version cccccccccccc: .*this working "
                       r"tree's uncommitted model \(reports/model.json records it"):
        trace.main(["cccccccccccc", "--repo", str(repo)])
    with pytest.raises(SystemExit, match="git fetch --all --tags"):  # not the working tree's
        trace.main(["dddddddddddd", "--repo", str(repo)])
