"""`make install` in a fresh clone leaves data/ as data.dvc tracks it: the regenerated sample
when that is what it tracks (so `dvc exp run` works at once), nothing when it tracks other
data, which `make pull` must be free to restore."""
import json
import re

from test_pipeline_e2e import VENV_BIN, clone_working_tree, git, run


def make_install(clone, tmp_path) -> str:
    installed = tmp_path / "venv-installed"  # this venv is installed: make skips pip
    installed.touch()
    return run(clone, "make", "--no-print-directory", "install", f"VENV={VENV_BIN.parent}",
               f"STAMP={installed}")


def test_install_regenerates_the_tracked_sample(tmp_path):
    clone = clone_working_tree(tmp_path / "clone")
    assert not (clone / "data").exists()
    make_install(clone, tmp_path)
    assert (clone / "data" / "labels.csv").is_file()
    status = json.loads(run(clone, "dvc", "data", "status", "--json", "data"))
    assert status == {"not_in_cache": ["data/"]}  # what data.dvc records, byte for byte


def test_install_leaves_no_sample_where_data_dvc_tracks_other_data(tmp_path):
    clone = clone_working_tree(tmp_path / "clone")
    dvc_file = clone / "data.dvc"
    dvc_file.write_text(re.sub(r"md5: \w+\.dir", "md5: " + "0" * 32 + ".dir", dvc_file.read_text()))
    git(clone, "commit", "-q", "-am", "my own recordings")
    out = make_install(clone, tmp_path)
    assert not (clone / "data").exists()
    assert "data.dvc tracks other data than the embedded sample: get it with make pull" in out
