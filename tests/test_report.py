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
    (repo / "reports" / "evaluation.json").write_text(json.dumps({"test": {"roc_auc": roc_auc}}))
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
    # This evaluation.json predates the confound figures: the report says so rather than failing.
    assert "has no within-channel figures" in markdown


CONFOUNDED = {
    "threshold": 0.42,
    "operating_point": {"definition": "Platt calibration fit on the valid split."},
    "test": {"roc_auc": 0.81, "roc_auc_ci_low": 0.74, "roc_auc_ci_high": 0.87},
    "test_by_channel": {"call-center": {"roc_auc": 0.66, "roc_auc_ci_low": 0.55,
                                        "roc_auc_ci_high": 0.76}},
    "headline": {"within_channel_roc_auc": 0.64, "within_channel_roc_auc_ci_low": 0.55,
                 "within_channel_roc_auc_ci_high": 0.72,
                 "skipped_channels": {"hospital": "only negative clips, no ROC-AUC"}},
    "metadata_baseline": {"within_channel_roc_auc": 0.6, "within_channel_roc_auc_ci_low": 0.52,
                          "within_channel_roc_auc_ci_high": 0.68},
    "margin": {"within_channel_roc_auc": 0.04, "within_channel_roc_auc_ci_low": -0.05,
               "within_channel_roc_auc_ci_high": 0.13, "warning": "WARNING: not above 0."},
    "channel_leakage": {"definition": "...",
                        "negative": {"roc_auc": 0.97, "roc_auc_ci_low": 0.94,
                                     "roc_auc_ci_high": 0.99},
                        "positive": {"roc_auc": None, "roc_auc_ci_low": None,
                                     "roc_auc_ci_high": None}},
}


def test_report_shows_headline_margin_leakage_and_the_warning():
    markdown = report.confound_section(CONFOUNDED)
    rows = table_rows(markdown)
    assert ["**within-channel ROC-AUC (headline)**", "0.640", "[0.550, 0.720]"] in rows
    assert ["ROC-AUC, channel call-center", "0.660", "[0.550, 0.760]"] in rows
    assert [r for r in rows if r[0].startswith("**margin")] == [
        [rows[-3][0], "+0.040", "[-0.050, +0.130]"]]
    assert ["channel leakage within negative (0.5 = none)", "0.970", "[0.940, 0.990]"] in rows
    assert ["channel leakage within positive (0.5 = none)", "n/a", "n/a"] in rows
    assert "> **WARNING: not above 0.**" in markdown
    assert "hospital (only negative clips, no ROC-AUC)" in markdown
    assert "Threshold 0.420: Platt calibration" in markdown


def test_report_says_when_the_margin_is_clear():
    clear = {**CONFOUNDED, "margin": {**CONFOUNDED["margin"], "warning": None}}
    assert "WARNING" not in report.confound_section(clear)
    assert "CI lies above 0" in report.confound_section(clear)


def test_missing_metrics_is_a_clear_error(two_commit_repo):
    (two_commit_repo / "reports" / "evaluation.json").unlink()
    with pytest.raises(SystemExit, match="reports/evaluation.json not found"):
        report.main(["--base", "main", "--repo", str(two_commit_repo)])


def test_unknown_base_revision_is_a_clear_error(two_commit_repo):
    with pytest.raises(SystemExit, match="base revision 'origin/main' not found"):
        report.main(["--base", "origin/main", "--repo", str(two_commit_repo)])
    assert not (two_commit_repo / "build" / "pr-report.md").exists()
