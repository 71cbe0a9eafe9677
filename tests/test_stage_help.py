"""Every stage's --help says what it reads (paths and params), writes, and how to run it."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_help_names_params_paths_and_how_to_run_it(stage):
    module = STAGES[stage]["cmd"].split()[-1]
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                            capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src"),
                                                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert text.startswith(f"usage: python -m {module} ")
    declared = [str(p) for p in STAGES[stage].get("params", [])]
    assert f"params read from params.yaml: {', '.join(declared) or 'none'}." in text
    assert f"`dvc repro {stage}`" in text
    # An experiment's example names one of the stage's own params (fetch once suggested lr).
    assert (f"-S {declared[0]}=" in text) if declared else ("reads no params" in text)
    assert "(default: build/" in text or "(default: reports/" in text  # where it reads/writes
