"""After `dvc exp run -S ...` / `dvc exp apply`, params.yaml and conf/ differ (test_config
fails); `python -m coughlab.promote` writes the experiment's values into conf/, and `make
params` (which used to revert them without a word) names every value it reverts."""
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from coughlab import promote
from coughlab.config import compose

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path):
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def applied(project: Path, *overrides: str) -> dict:
    """params.yaml as `dvc exp run -S ...` (Hydra's composition) and `dvc exp apply` leave it."""
    params = compose(project / "conf", list(overrides))
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    return params


@pytest.mark.parametrize("overrides", [
    ["lr=1e-3"],
    ["model=resnet18", "train.epochs=40"],
    ["train=sagemaker", "train.sagemaker.instance_type=ml.m5.xlarge", "seed=7"],
    ["ensemble=full", "data.sources=[local,virufy]", "audio.windows=3"],
])
def test_promoting_makes_conf_compose_to_the_experiments_params(project, overrides, capsys):
    params = applied(project, *overrides)
    assert compose(project / "conf") != params  # what tests/test_config.py catches
    promote.main(["--conf-dir", str(project / "conf"), "--params", str(project / "params.yaml")])
    assert compose(project / "conf") == params
    out = capsys.readouterr().out
    assert "now composes to" in out and len(out.splitlines()) >= 2


def test_promotion_edits_the_file_that_sets_each_value_and_keeps_its_comments(project, capsys):
    applied(project, "lr=1e-3", "model=resnet18", "train.epochs=40")
    promote.main(["--conf-dir", str(project / "conf"), "--params", str(project / "params.yaml")])
    out = capsys.readouterr().out
    root = (project / "conf" / "config.yaml").read_text()
    assert "  - model: resnet18\n" in root and "lr: 0.001" in root
    assert "# Hydra root config." in root  # comments survive
    local = (project / "conf" / "train" / "local.yaml").read_text()
    assert "epochs: 40\n" in local and "# Train in this process" in local
    assert "defaults model: cnn -> resnet18" in out and "lr: 0.003 -> 0.001" in out
    assert "train.epochs: 20 -> 40" in out
    # The other files are untouched.
    for name in ("model/cnn.yaml", "model/resnet18.yaml", "audio/default.yaml"):
        assert (project / "conf" / name).read_text() == (ROOT / "conf" / name).read_text()


def test_make_params_names_each_value_it_reverts(project, capsys):
    applied(project, "lr=1e-3", "train.epochs=40")
    promote.main(["--recompose", "--conf-dir", str(project / "conf"),
                  "--params", str(project / "params.yaml")])
    out = capsys.readouterr().out
    assert "params.yaml: lr: 0.001 -> 0.003 (conf/'s value)" in out
    assert "params.yaml: train.epochs: 40 -> 20 (conf/'s value)" in out
    assert "2 value(s) reverted" in out and "python -m coughlab.promote" in out
    assert yaml.safe_load((project / "params.yaml").read_text()) == compose(project / "conf")


def test_make_params_runs_the_recompose_that_names_reversions():
    dry = subprocess.run(["make", "--no-print-directory", "-n", "params", "STAMP=/dev/null",
                          "VENV=.venv"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert dry.stdout.strip().splitlines()[-1].endswith("-m coughlab.promote --recompose")
