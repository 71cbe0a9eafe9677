"""A fresh clone runs docs/data-sources.md's first real-data command right after `make install`.

The upstreams are tiny loopback stand-ins (tests/source_fixtures.py) of covid19-cough and
Virufy in their real layouts, pinned by their own manifests; the command is the README's with
only the download locations and pins pointed at them.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from source_fixtures import ArchiveServer, C19Record, Upstream, covid19_cough_files, virufy_files
from test_pipeline_e2e import ENV, VENV_BIN, clone_working_tree, run, stages_run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
SUBJECTS = 4  # per source and label: enough for combine to put each in train, valid and test


def readme_real_data_command() -> list[str]:
    """The first `dvc exp run -S 'data.sources=[...]'` line of docs/data-sources.md, as argv."""
    text = (ROOT / "docs" / "data-sources.md").read_text()
    line = re.search(r"^dvc exp run -S 'data\.sources=\[[^]]*\]'$", text, re.M).group(0)
    return ["dvc", "exp", "run", "-S", line.split("'")[1]]


def report_outputs() -> list[str]:
    """The outputs the PR workflow's dvc-cache job pulls (its REPORT_OUTPUTS)."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "pr.yml").read_text())
    return workflow["jobs"]["dvc-cache"]["env"]["REPORT_OUTPUTS"].split()


def upstreams(workdir: Path) -> Upstream:
    upstream = Upstream(workdir)
    records = [C19Record(f"{label}{i}", label == "p", "call-center" if i % 2 else "telegram",
                         audio_seed=100 + 10 * i + (label == "p"))
               for label in "pn" for i in range(SUBJECTS)]
    upstream.github("covid19_cough", covid19_cough_files(records))
    patients = [(f"{'pos' if result == 'positive' else 'neg'}-0421-{i:03d}-cough-m-{30 + i}",
                 result, 2, 30 + i + (result == "positive") * SUBJECTS)
                for result in ("positive", "negative") for i in range(SUBJECTS)]
    upstream.github("virufy", virufy_files(patients))
    return upstream


def overrides(settings: dict) -> list[str]:
    """-S for every data.* setting; quoted, as Hydra needs for values with braces or colons."""
    return [arg for key, value in settings.items()
            for arg in ("-S", f"data.{key}='{value}'")]


def test_fresh_clone_runs_the_real_data_command_after_make_install(tmp_path):
    clone = clone_working_tree(tmp_path / "clone")
    assert not (clone / "data").exists()  # DVC-tracked: a clone has only data.dvc
    installed = tmp_path / "venv-installed"  # this venv is installed: make skips pip
    installed.touch()
    run(clone, "make", "install", f"VENV={VENV_BIN.parent}", f"STAMP={installed}")

    upstream = upstreams(tmp_path / "upstream")
    with ArchiveServer(upstream.files).running() as server:
        command = readme_real_data_command() + overrides(upstream.settings(server.port))
        proc = subprocess.run(command, cwd=clone, capture_output=True, text=True,
                              env={**ENV, "PYTHONPATH": str(clone / "src"),
                                   "COUGHLAB_CACHE": str(tmp_path / "downloads"),
                                   "no_proxy": "127.0.0.1"})
    assert proc.returncode == 0, f"{command}:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert {"fetch", "combine", "featurize", "train", "evaluate", "export-lambda"} <= stages_run(
        proc.stdout + proc.stderr)
    fetched = (clone / "build" / "fetched" / "labels.csv").read_text().splitlines()
    assert len(fetched) - 1 == 2 * SUBJECTS + 2 * SUBJECTS * 2  # covid19-cough + Virufy segments
    assert {line.split(",")[3] for line in fetched[1:]} == {"covid19-cough", "virufy"}
    model = json.loads((clone / "build" / "lambda" / "model.json").read_text())
    assert (clone / "build" / "lambda" / "model.onnx").stat().st_size > 0, model

    # What the PR workflow does with these results: dvc-cache pulls only the outputs the report
    # needs (never the recordings) into a machine that has none, and report's
    # `dvc repro --allow-missing` then has nothing to re-run for a PR that changed nothing.
    remote = tmp_path / "remote"
    run(clone, "dvc", "remote", "add", "--local", "-d", "storage", str(remote))
    run(clone, "dvc", "push")
    for lost in (".dvc/cache", "build", "data"):
        shutil.rmtree(clone / lost)
    run(clone, "make", "install", f"VENV={VENV_BIN.parent}", f"STAMP={installed}")  # as CI does
    run(clone, "dvc", "pull", "--allow-missing", *report_outputs())
    assert not (clone / "build" / "fetched").exists()
    assert not (clone / "build" / "combined" / "clips").exists()
    assert (clone / "build" / "lambda" / "model.onnx").is_file()
    metrics = (clone / "reports" / "metrics.json").read_bytes()
    rerun = run(clone, "dvc", "repro", "--allow-missing")
    assert stages_run(rerun) == set(), rerun
    assert (clone / "reports" / "metrics.json").read_bytes() == metrics
