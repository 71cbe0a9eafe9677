import csv
import subprocess
import sys
from pathlib import Path

import yaml

from coughlab.sample import generate

from helpers import git_repo

ROOT = Path(__file__).resolve().parents[1]


def test_regenerated_sample_has_the_hash_in_data_dvc(tmp_path):
    """`python -m coughlab.sample data` is bit-exact: DVC's directory hash equals data.dvc's."""
    git_repo(tmp_path)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "coughlab.sample", "data"], cwd=tmp_path, check=True,
                   capture_output=True)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "data"], cwd=tmp_path, check=True)
    fresh = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]
    committed = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]
    assert (fresh["md5"], fresh["nfiles"]) == (committed["md5"], committed["nfiles"])


def test_sample_has_many_subjects_with_several_clips_of_both_labels(tmp_path):
    generate(tmp_path / "data", n_subjects=48)
    with open(tmp_path / "data" / "labels.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if not r["subject_id"].startswith("broken")]
    subjects = {r["subject_id"] for r in rows}
    assert len(subjects) >= 40
    per_subject = [sum(r["subject_id"] == s for r in rows) for s in subjects]
    assert min(per_subject) >= 4
    assert {r["label"] for r in rows} == {"positive", "negative"}
    assert all((tmp_path / "data" / r["path"]).is_file() for r in rows)
