"""`make exps`: `dvc exp show` that fits a terminal with the changed params and the headline in
view. Plain `dvc exp show --only-changed` at 120 columns folded `lr` (the param that changed)
into `…` behind ten metrics and every dependency's hash."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from coughlab.stages.evaluate import METRICS_KEYS, source_metric_key

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
       "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
# Every metric moves with lr, as a real run's do; the names and order are evaluate's, with a
# source trained on and one held out (a cross-source figure).
SOURCE_KEYS = [source_metric_key("covid19-cough", True), source_metric_key("coswara", False)]
EVALUATE = f"""
import json, math, yaml
lr = yaml.safe_load(open("params.yaml"))["lr"]
w = 0.9 - abs(math.log10(lr) + 2.5) * 0.05
names = {[key for key, *_ in METRICS_KEYS] + SOURCE_KEYS!r}
json.dump({{n: round(w - 0.01 * i + lr, 4) for i, n in enumerate(names)}},
          open("metrics.json", "w"), indent=2)
"""


def run(cwd, *cmd, env=None):
    result = subprocess.run(cmd, cwd=cwd, env={**ENV, **(env or {})}, capture_output=True,
                            text=True)
    assert result.returncode == 0, f"{cmd}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return result.stdout


def make_exps_command(root: Path = ROOT) -> str:
    """The command `make exps` runs, as make prints it (`make -n`), without install's."""
    dry = subprocess.run(["make", "--no-print-directory", "-n", "exps", "STAMP=/dev/null",
                          "VENV=.venv"], cwd=root, capture_output=True, text=True, check=True)
    command = dry.stdout[dry.stdout.index("dvc exp show"):]
    return " ".join(command.replace("\\\n", " ").split())


@pytest.fixture(scope="module")
def project_with_an_lr_sweep(tmp_path_factory):
    """A baseline and two lr experiments, with as many params and code deps as the pipeline."""
    repo = tmp_path_factory.mktemp("exps")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / "evaluate.py").write_text(EVALUATE)
    code = [f"src/coughlab/module{i}.py" for i in range(12)]
    for path in code:
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(f"# {path}\n")
    stage = {"cmd": "python evaluate.py", "deps": ["evaluate.py", *code],
             "params": ["seed", "lr", "model", "train", "audio"],
             "metrics": [{"metrics.json": {"cache": False}}]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"evaluate": stage}}))
    run(repo, "git", "init", "-q")
    run(repo, sys.executable, "-m", "dvc", "init", "-q")
    run(repo, sys.executable, "-m", "dvc", "repro", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "baseline")
    for lr in ("0.001", "0.01"):
        run(repo, sys.executable, "-m", "dvc", "exp", "run", "-q", "-S", f"lr={lr}")
    return repo


@pytest.mark.parametrize("columns", [120, 80])
def test_make_exps_fits_and_shows_the_changed_param_beside_the_headline(
        project_with_an_lr_sweep, columns):
    shown = run(project_with_an_lr_sweep, "bash", "-c", make_exps_command(),
                env={"COLUMNS": str(columns)})
    lines = [line.rstrip() for line in shown.splitlines() if line.strip()]
    assert max(map(len, lines)) <= columns, shown
    header = next(line for line in lines if "Experiment" in line).split()
    assert header[1:] == ["wc_auc", "wc_lo", "wc_hi", "margin", "lr"], shown
    assert "…" not in shown
    assert json.loads((project_with_an_lr_sweep / "metrics.json").read_text()).keys() >= set(
        SOURCE_KEYS)  # in dvc exp show, dropped by make exps
    rows = [line for line in lines if "0.001" in line or "0.01" in line or "0.003" in line]
    assert len(rows) >= 3, shown


def test_plain_only_changed_folds_the_param_away(project_with_an_lr_sweep):
    """What the issue measured, kept as a fact the docs rely on (docs/pipeline.md)."""
    shown = run(project_with_an_lr_sweep, sys.executable, "-m", "dvc", "exp", "show",
                "--no-pager", "--only-changed", env={"COLUMNS": "120"})
    header = next(line for line in shown.splitlines() if "Experiment" in line).split()
    assert "lr" not in header and header[-1] == "…", shown
    assert json.loads((project_with_an_lr_sweep / "metrics.json").read_text())
