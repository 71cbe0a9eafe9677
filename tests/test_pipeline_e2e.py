"""The newcomer's path, in a fresh clone: make repro, a no-op re-run, then an experiment."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def clone_working_tree(dest: Path) -> Path:
    """Like `git clone` of the current state: every tracked or unignored file, committed once."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "clone")
    return dest


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          env=ENV).stdout.decode()


VENV_BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
       "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "t@example.com",
       "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "t@example.com",
       "DVC_NO_ANALYTICS": "1"}


def run(cwd: Path, *cmd: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env={**ENV, "PYTHONPATH": str(cwd / "src"), **(env or {})},
                          capture_output=True, text=True)
    assert proc.returncode == 0, \
        f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines()
            if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    return clone_working_tree(tmp_path_factory.mktemp("clone"))


def test_data_pipeline_runs_then_does_nothing(clone):
    run(clone, sys.executable, "-m", "coughlab.sample", "data")
    first = run(clone, "dvc", "repro", "featurize")
    assert stages_run(first) == {"fetch", "combine", "featurize"}
    summary = json.loads((clone / "build/combined/summary.json").read_text())
    assert summary["quarantined_by_reason"] == {"silent": 1, "unreadable": 1}
    second = run(clone, "dvc", "repro", "featurize")
    assert stages_run(second) == set()
    assert "didn't change" in second or "up to date" in second


def test_make_repro_then_an_lr_experiment(clone):
    # Reuse this test run's venv, already installed: a fresh stamp tells make to skip
    # `pip install -e` from the clone, which would repoint the venv at a temp dir.
    installed = clone.parent / "venv-installed"
    installed.touch()
    out = run(clone, "make", "repro", f"VENV={VENV_BIN.parent}", f"STAMP={installed}")
    # A clone has no DVC cache: the model is trained here.
    assert "train" in stages_run(out)
    assert "up to date" in run(clone, "dvc", "status")
    metrics = json.loads((clone / "reports/metrics.json").read_text())
    assert metrics["auc"] >= 0.9, metrics
    assert (clone / "build/lambda/model.onnx").stat().st_size > 0
    card = (clone / "build/lambda/model_card.md").read_text()
    assert card.startswith("---\nlicense: mit\n") and "\n# Model card" in card
    assert "SYNTHETIC sample" in card and "0.53" not in card  # the sample's, not real data's
    # Every stage is bit-identical on every x86-64 CPU: a newcomer's clone reproduces the
    # committed dvc.lock, metrics, report, plots and model.json byte for byte, leaving nothing
    # to commit, also when evaluate and export-lambda are forced to run again here.
    assert git(clone, "status", "--porcelain") == "", git(clone, "diff")
    for stage in ("evaluate", "export-lambda"):
        forced = run(clone, "dvc", "repro", "-f", "-s", stage)
        assert stages_run(forced) == {stage}
        assert git(clone, "status", "--porcelain") == "", (stage, git(clone, "diff"))

    assert_a_scoring_change_is_evaluated_before_it_ships(clone)

    # An lr sweep of two experiments, compared as a person would.
    for lr in ("1e-3", "1e-2"):
        exp = run(clone, "dvc", "exp", "run", "-S", f"lr={lr}")
        assert stages_run(exp) == {"train", "export-graph", "evaluate", "export-lambda"}
    table = json.loads(run(clone, "dvc", "exp", "show", "--json"))
    lrs = [e["data"]["params"]["params.yaml"]["data"]["lr"]
           for baseline in table for e in (baseline.get("experiments") or [])
           for e in e.get("revs", [])]
    assert {0.001, 0.01} <= set(lrs), table
    assert_exp_show_is_readable_at_120_columns(clone, list(metrics))
    # The PR report's metrics diff: one row per compared number, no text, no tables.
    diff = json.loads(run(clone, "dvc", "metrics", "diff", "HEAD", "--all", "--json"))
    assert set(diff["reports/metrics.json"]) == set(metrics), diff
    rows = [line for line in run(clone, "dvc", "metrics", "diff", "HEAD", "--all", "--md")
            .splitlines() if line.startswith("| reports/metrics.json ")]
    assert len(rows) == len(metrics), rows


def assert_a_scoring_change_is_evaluated_before_it_ships(clone: Path) -> None:
    """Issue 24's edit: window_proba takes the max over windows instead of the mean. train
    writes the same model.pt, so before, evaluate was skipped and a new graph shipped under the
    old metrics and threshold. Now the changed graph is evaluated before it ships, and reverting
    the edit brings back the committed outputs byte for byte."""
    nets = clone / "src" / "coughlab" / "nets.py"
    original = nets.read_text()
    mean = "reshape(n, count).mean(dim=1)"
    assert original.count(mean) == 1
    committed = {p: (clone / p).read_bytes()
                 for p in ("reports/evaluation.json", "build/lambda/model.json")}
    nets.write_text(original.replace(mean, "reshape(n, count).amax(dim=1)"))
    edited = run(clone, "dvc", "repro")
    assert {"export-graph", "evaluate", "export-lambda"} <= stages_run(edited), edited
    assert "up to date" in run(clone, "dvc", "status")
    evaluation = json.loads((clone / "reports/evaluation.json").read_text())
    shipped = json.loads((clone / "build/lambda/model.json").read_text())
    before = json.loads(committed["build/lambda/model.json"])
    assert shipped["version"] != before["version"]  # another graph ...
    assert evaluation["graph"]["version"] == shipped["version"]  # ... evaluated as itself
    assert shipped["threshold"] == evaluation["threshold"] != before["threshold"]
    nets.write_text(original)
    run(clone, "dvc", "repro")
    assert git(clone, "status", "--porcelain") == "", git(clone, "diff")
    for path, content in committed.items():
        assert (clone / path).read_bytes() == content, path


def assert_exp_show_is_readable_at_120_columns(clone: Path, names: list[str]) -> None:
    """`make exps` (`dvc exp show` with DVC's --only-changed, --drop, --keep, --sort-by) in a
    120- and an 80-column terminal: no line longer, nothing folded into '…', the headline
    (within-channel ROC-AUC and its CI, then the margin) whole, then lr, the param the sweep
    changed, for the baseline and both experiments. Plain `--only-changed` folded lr away."""
    from test_exps import make_exps_command

    command = make_exps_command(clone)
    for columns in (120, 80):
        shown = run(clone, "bash", "-c", command, env={"COLUMNS": str(columns)})
        lines = [line.rstrip() for line in shown.splitlines() if line.strip()]
        assert max(map(len, lines)) <= columns, shown
        assert "…" not in shown, shown
        header = next(line for line in lines if "Experiment" in line).split()
        assert header[1:] == ["wc_auc", "wc_lo", "wc_hi", "margin", "lr"], shown
        assert [n for n in names if n in header] == header[1:5], shown  # metrics.json's order
        rows = [line for line in lines if "[" in line or "main" in line or "master" in line]
        assert len(rows) >= 3, shown
