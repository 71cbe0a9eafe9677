"""`make report`: the PR comment shows what a branch changes against main, with old and new values."""
import json
import subprocess
import sys

import pytest
import yaml

from coughlab import report

DVC_YAML = {"stages": {"train": {
    "cmd": "python train.py",
    "params": ["lr", "train.epochs"],
    "metrics": [{"reports/metrics.json": {"cache": False}}],
    "plots": [{"reports/plots/roc.json": {"cache": False, "x": "fpr", "y": "tpr"}},
              {"reports/plots/pr.json": {"cache": False, "x": "recall", "y": "precision"}}],
}}}


def write_results(repo, lr, roc_auc, roc_points):
    (repo / "params.yaml").write_text(yaml.safe_dump({"lr": lr, "train": {"epochs": 20}}))
    (repo / "reports" / "plots").mkdir(parents=True, exist_ok=True)
    (repo / "reports" / "metrics.json").write_text(json.dumps({"test": {"roc_auc": roc_auc, "f1": 0.7}}))
    (repo / "reports" / "plots" / "roc.json").write_text(json.dumps(
        [{"fpr": i / roc_points, "tpr": min(1.0, 2 * i / roc_points)} for i in range(roc_points)]))
    (repo / "reports" / "plots" / "pr.json").write_text(json.dumps(
        [{"recall": 1.0, "precision": 0.5}, {"recall": 0.0, "precision": 1.0}]))


def commit(repo, message):
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", message], cwd=repo, check=True)


def table_rows(markdown):
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in markdown.splitlines() if line.startswith("|")]


@pytest.fixture
def two_commit_repo(tmp_path):
    """main: lr 0.003, ROC-AUC 0.8, a 3-point ROC; branch `feature` (checked out): lr 0.001,
    ROC-AUC 0.9, a 4-point ROC; epochs, F1 and the PR curve unchanged."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    write_results(repo, lr=0.003, roc_auc=0.8, roc_points=3)
    commit(repo, "baseline")
    subprocess.run(["git", "checkout", "-q", "-b", "feature"], cwd=repo, check=True)
    write_results(repo, lr=0.001, roc_auc=0.9, roc_points=4)
    commit(repo, "lower lr")
    return repo


def test_report_lists_changed_metrics_params_and_plots(two_commit_repo, capsys):
    # The arguments `make report` passes (BASE defaults to main).
    report.main(["--base", "main", "--repo", str(two_commit_repo)])
    markdown = (two_commit_repo / "build" / "pr-report.md").read_text()
    rows = table_rows(markdown)
    assert ["reports/metrics.json", "test.roc_auc", "0.8", "0.9", "0.1"] in rows
    assert ["params.yaml", "lr", "0.003", "0.001"] in rows
    assert ["reports/plots/roc.json", "3", "4", "changed"] in rows
    assert ["reports/plots/pr.json", "2", "2", "same"] in rows
    unchanged = {"test.f1", "train.epochs"}
    assert not [row for row in rows if unchanged & set(row)]
    assert "pr-report.md" in capsys.readouterr().out


def test_unknown_base_revision_is_a_clear_error(two_commit_repo):
    with pytest.raises(SystemExit, match="base revision 'origin/main' not found"):
        report.main(["--base", "origin/main", "--repo", str(two_commit_repo)])
    assert not (two_commit_repo / "build" / "pr-report.md").exists()
