import csv

import pytest

from coughlab.config import DataConfig
from coughlab.sample import wav_bytes
from coughlab.sources import LabelsError
from coughlab.stages.fetch import fetch

from test_audio import tone


def make_zone(root, rows, files=None):
    """A labelled-recordings zone: the listed files (real wavs) and labels.csv with `rows`."""
    root.mkdir(parents=True, exist_ok=True)
    for rel in files if files is not None else [r[0] for r in rows]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(wav_bytes(tone(), 16000))
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "subject_id", "source", "channel"])
        writer.writerows(rows)
    return DataConfig(local_dir=str(root))


GOOD = [["a/1.wav", "positive", "p1", "mine", "app"], ["a/2.wav", "negative", "p2", "mine", "app"]]


def test_local_source_copies_clips_and_prefixes_paths(tmp_path):
    cfg = make_zone(tmp_path / "zone", GOOD)
    labels = fetch(["local"], cfg, tmp_path / "out")
    assert list(labels["path"]) == ["local/a/1.wav", "local/a/2.wav"]
    assert (tmp_path / "out" / "local" / "a" / "1.wav").read_bytes() == (tmp_path / "zone/a/1.wav").read_bytes()
    with open(tmp_path / "out" / "labels.csv") as fh:
        assert [r["label"] for r in csv.DictReader(fh)] == ["positive", "negative"]


@pytest.mark.parametrize("rows,files,message", [
    ([["a/1.wav", "covid", "p1", "mine", "app"]], None, "label 'covid' is not one of"),
    ([["a/1.wav", "positive", "", "mine", "app"]], None, "empty value"),
    ([["a/missing.wav", "positive", "p1", "mine", "app"]], [], "does not exist"),
    ([["../outside.wav", "positive", "p1", "mine", "app"]], [], "without '..'"),
    ([["/etc/passwd", "positive", "p1", "mine", "app"]], [], "without '..'"),
    ([["a/1.wav", "positive", "p1", "mine", "app"]] * 2, ["a/1.wav"], "listed more than once"),
])
def test_bad_labels_are_rejected_with_the_line(tmp_path, rows, files, message):
    cfg = make_zone(tmp_path / "zone", rows, files)
    with pytest.raises(LabelsError, match=message):
        fetch(["local"], cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_symlink_escaping_the_zone_is_rejected(tmp_path):
    secret = tmp_path / "secret.wav"
    secret.write_bytes(wav_bytes(tone(), 16000))
    cfg = make_zone(tmp_path / "zone", [["link.wav", "positive", "p1", "mine", "app"]], [])
    (tmp_path / "zone" / "link.wav").symlink_to(secret)
    with pytest.raises(LabelsError, match="outside the data folder"):
        fetch(["local"], cfg, tmp_path / "out")


def test_missing_column_is_named(tmp_path):
    zone = tmp_path / "zone"
    zone.mkdir()
    (zone / "labels.csv").write_text("path,label\na.wav,positive\n")
    with pytest.raises(LabelsError, match=r"missing column\(s\) \['subject_id', 'source'\]"):
        fetch(["local"], DataConfig(local_dir=str(zone)), tmp_path / "out")


def test_failed_fetch_keeps_the_previous_output(tmp_path):
    good = make_zone(tmp_path / "good", GOOD)
    fetch(["local"], good, tmp_path / "out")
    bad = make_zone(tmp_path / "bad", [["x.wav", "maybe", "p", "s", "c"]])
    with pytest.raises(LabelsError):
        fetch(["local"], bad, tmp_path / "out")
    assert (tmp_path / "out" / "local" / "a" / "1.wav").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "good", "out"]  # no temp dirs left


def test_unknown_source_lists_the_known_ones(tmp_path):
    with pytest.raises(LabelsError, match="unknown data source 'nope'; known sources: .*local"):
        fetch(["nope"], DataConfig(), tmp_path / "out")


@pytest.mark.parametrize("spellings", [
    ["clips/a.wav", "./clips/a.wav"],
    ["clips/a.wav", "clips//./a.wav"],
    ["./clips/a.wav", "clips//./a.wav", "clips/./a.wav"],
])
def test_one_file_under_several_spellings_is_a_duplicate(tmp_path, spellings):
    rows = [[p, "positive", f"p{i}", "mine", "app"] for i, p in enumerate(spellings)]
    cfg = make_zone(tmp_path / "zone", rows, ["clips/a.wav"])
    with pytest.raises(LabelsError, match="'clips/a.wav' is listed more than once"):
        fetch(["local"], cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_one_file_reached_through_a_link_is_a_duplicate(tmp_path):
    rows = [["clips/a.wav", "positive", "p1", "mine", "app"],
            ["alias/a.wav", "positive", "p2", "mine", "app"]]
    cfg = make_zone(tmp_path / "zone", rows, ["clips/a.wav"])
    (tmp_path / "zone" / "alias").symlink_to(tmp_path / "zone" / "clips")
    with pytest.raises(LabelsError, match="'alias/a.wav' is the same file as 'clips/a.wav'"):
        fetch(["local"], cfg, tmp_path / "out")


def test_paths_are_written_normalised(tmp_path):
    cfg = make_zone(tmp_path / "zone", [["./a//1.wav", "positive", "p1", "mine", "app"]], ["a/1.wav"])
    assert list(fetch(["local"], cfg, tmp_path / "out")["path"]) == ["local/a/1.wav"]


@pytest.mark.parametrize("content,message", [
    ("", "labels.csv is empty"),
    ("path,label,subject_id,source,channel\n", "labels.csv: lists no clips"),
])
def test_empty_or_header_only_labels_fail_naming_the_file_and_keep_the_previous_output(
        tmp_path, content, message):
    fetch(["local"], make_zone(tmp_path / "good", GOOD), tmp_path / "out")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "labels.csv").write_text(content)
    with pytest.raises(LabelsError, match=f"{bad}/{message}"):
        fetch(["local"], DataConfig(local_dir=str(bad)), tmp_path / "out")
    assert len(list((tmp_path / "out" / "local").rglob("*.wav"))) == 2
