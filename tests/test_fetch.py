import csv
import dataclasses
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coughlab.config import DataConfig
from coughlab.escape import read_csv_cells
from coughlab.sample import wav_bytes
from coughlab.sources import LabelsError
from coughlab.stages.fetch import fetch

from helpers import conf, write_params
from source_fixtures import (
    ArchiveServer,
    C19Record,
    Upstream,
    coughvid_zip,
    covid19_cough_files,
    virufy_files,
)
from test_audio import tone

ROOT = Path(__file__).resolve().parents[1]
DATA = conf().data


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
    return dataclasses.replace(DATA, local_dir=str(root))


GOOD = [["a/1.wav", "positive", "p1", "mine", "app"], ["a/2.wav", "negative", "p2", "mine", "app"]]


def test_local_source_copies_clips_and_prefixes_paths(tmp_path):
    cfg = make_zone(tmp_path / "zone", GOOD)
    labels = fetch(["local"], cfg, tmp_path / "out")
    assert list(labels["path"]) == ["local/a/1.wav", "local/a/2.wav"]
    assert ((tmp_path / "out" / "local" / "a" / "1.wav").read_bytes()
            == (tmp_path / "zone/a/1.wav").read_bytes())
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
        fetch(["local"], dataclasses.replace(DATA, local_dir=str(zone)), tmp_path / "out")


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
        fetch(["nope"], DATA, tmp_path / "out")


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


def test_a_hard_link_to_a_listed_file_is_the_same_file(tmp_path):
    """Compared by device and inode: a hard link has no target to resolve."""
    rows = [["clips/a.wav", "positive", "p1", "mine", "app"],
            ["other/b.wav", "positive", "p2", "mine", "app"]]
    cfg = make_zone(tmp_path / "zone", rows, ["clips/a.wav"])
    (tmp_path / "zone" / "other").mkdir()
    os.link(tmp_path / "zone" / "clips" / "a.wav", tmp_path / "zone" / "other" / "b.wav")
    with pytest.raises(LabelsError, match="'other/b.wav' is the same file as 'clips/a.wav'"):
        fetch(["local"], cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def write_labels(zone: Path, raw_rows: list[bytes]) -> DataConfig:
    """labels.csv written byte for byte: whatever a hand-edited or generated file may hold."""
    zone.mkdir(parents=True, exist_ok=True)
    (zone / "labels.csv").write_bytes(b"path,label,subject_id,source,channel\n"
                                      + b"".join(raw_rows))
    return dataclasses.replace(DATA, local_dir=str(zone))


GOOD_ROW = b"ok.wav,positive,p0,mine,app\n"


@pytest.mark.parametrize("row,reason", [
    (b"a/\x00.wav,positive,p1,mine,app\n", "contains a NUL byte"),
    (b"a/" + b"x" * 5000 + b".wav,positive,p1,mine,app\n", "cannot be used: File name too long"),
    (b"x" * 300 + b".wav,positive,p1,mine,app\n", "cannot be used: File name too long"),
    (b"loop.wav,positive,p1,mine,app\n", "cannot be used"),
    (b"a,positive,p1,mine,app\n", "does not exist"),  # a folder
    (b"caf\xe9.wav,positive,p1,mine,app\n", "not UTF-8 text"),  # latin-1
    (b"ok2.wav,positive,p1,mine,app,extra\n", "not a readable CSV"),
    (b"\"unclosed.wav,positive,p1,mine,app\n", "not a readable CSV"),
])
def test_every_labels_problem_is_one_line_naming_the_file_row_and_reason(tmp_path, row, reason):
    zone = tmp_path / "zone"
    cfg = write_labels(zone, [GOOD_ROW, row])
    (zone / "ok.wav").write_bytes(wav_bytes(tone(), 16000))
    (zone / "a").mkdir()
    (zone / "loop.wav").symlink_to(zone / "loop.wav")
    with pytest.raises(LabelsError) as caught:
        fetch(["local"], cfg, tmp_path / "out")
    message = str(caught.value)
    problem = message.splitlines()[-1]
    assert str(zone / "labels.csv") in message and reason in problem, message
    assert "line 3" in problem, message  # the header is line 1, the good row line 2
    assert len(problem) < 300, problem
    assert not (tmp_path / "out").exists()


def test_paths_are_written_normalised(tmp_path):
    cfg = make_zone(tmp_path / "zone", [["./a//1.wav", "positive", "p1", "mine", "app"]],
                    ["a/1.wav"])
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
        fetch(["local"], dataclasses.replace(DATA, local_dir=str(bad)), tmp_path / "out")
    assert len(list((tmp_path / "out" / "local").rglob("*.wav"))) == 2


def hydra_overrides(settings: dict) -> list[str]:
    """data.* settings as the `-S` overrides of `dvc exp run` (strings quoted: URLs have braces)."""
    return [f"data.{k}='{v}'" if isinstance(v, str) else f"data.{k}={v}"
            for k, v in settings.items()]


def fixture_upstream(root: Path) -> Upstream:
    """Every public source at toy size, enough subjects per source for three splits; Virufy
    patients n03 and n05 alike in everything but the date, as 083 and 095 are."""
    upstream = Upstream(root)
    upstream.github("covid19_cough", covid19_cough_files(
        [C19Record(f"r{i:02d}", i % 2 == 0, ("telegram", "call-center")[i % 3 == 0], None, i)
         for i in range(14)]))
    upstream.github("virufy", virufy_files(
        [(f"pos-0421-p{i:02d}-cough-m-{30 + i}", "positive", 2, 30 + i) for i in range(4)]
        + [(f"neg-0421-n{i:02d}-cough-m-{60 + i}", "negative", 2, 60 + i) for i in range(5)]
        + [("neg-0422-n05-cough-m-63", "negative", 2, 63)]))
    upstream.zenodo(coughvid_zip([(f"u{i:02d}", ("COVID-19", "healthy")[i % 2], 0.9,
                                   ("webm", "ogg", "wav")[i % 3]) for i in range(12)]))
    return upstream


@pytest.mark.parametrize("sources", [["covid19-cough", "virufy"], ["coughvid"]])
def test_fetch_and_combine_run_end_to_end_with_no_hand_step(tmp_path, sources):
    """What `dvc exp run -S 'data.sources=[...]'` runs, against the loopback upstreams: params
    composed with the same overrides, then the stages' own commands."""
    upstream = fixture_upstream(tmp_path / "upstream")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "no_proxy": "127.0.0.1",
           "OMP_NUM_THREADS": "1"}
    env.pop("COUGHLAB_CACHE", None)
    with ArchiveServer(upstream.files).running() as server:
        write_params(work, f"data.sources=[{','.join(sources)}]",
                     f"data.cache_dir='{tmp_path / 'cache'}'",
                     *hydra_overrides(upstream.settings(server.port)))
        for stage in ("fetch", "combine"):
            run = subprocess.run([sys.executable, "-m", f"coughlab.stages.{stage}"], cwd=work,
                                 env=env, capture_output=True, text=True)
            assert run.returncode == 0, run.stderr[-3000:]
    manifest = pd.read_csv(work / "build" / "combined" / "manifest.csv", dtype=str,
                           keep_default_na=False)
    assert sorted(manifest["source"].unique()) == sorted(sources)
    for source, part in manifest.groupby("source"):
        assert set(part["split"]) == {"train", "valid", "test"}, source
    assert manifest.groupby("subject_id")["split"].nunique().max() == 1
    if "virufy" in sources:
        twins = manifest[manifest["subject_id"].str.contains("-n03-|-n05-")]
        assert twins["subject_id"].nunique() == 2 and twins["split"].nunique() == 1


# --- labels.csv messages name the physical lines -------------------------------------------

def labels_error(tmp_path, content: bytes, files=("a.wav", "b.wav", "c.wav")) -> str:
    """The one-line-per-problem message fetch gives for a labels.csv of exactly `content`."""
    zone = tmp_path / "zone"
    zone.mkdir()
    for name in files:
        (zone / name).write_bytes(wav_bytes(tone(), 16000))
    (zone / "labels.csv").write_bytes(content)
    with pytest.raises(LabelsError) as caught:
        fetch(["local"], dataclasses.replace(DATA, local_dir=str(zone)), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    return str(caught.value)


HEADER = b"path,label,subject_id,source,channel\n"


def test_duplicate_paths_name_every_line_they_are_on(tmp_path):
    message = labels_error(tmp_path, HEADER + b"a.wav,positive,p1,mine,app\n"
                           b"b.wav,positive,p2,mine,app\n./a.wav,negative,p3,mine,app\n"
                           b"a.wav,negative,p4,mine,app\n")
    assert "'a.wav' is listed more than once: lines 2, 4 and 5" in message, message


def test_line_numbers_count_physical_lines_after_a_quoted_newline(tmp_path):
    message = labels_error(tmp_path, HEADER + b'a.wav,positive,"p\n1",mine,app\n'
                           b'b.wav,positive,p2,"my\nown\nsource",app\nc.wav,maybe,p3,mine,app\n')
    assert message.splitlines()[-1].endswith("labels.csv line 7: label 'maybe' is not one of "
                                             "['negative', 'positive']"), message


def test_a_same_file_message_names_the_line_of_the_first(tmp_path):
    zone = tmp_path / "zone"
    zone.mkdir()
    (zone / "a.wav").write_bytes(wav_bytes(tone(), 16000))
    os.link(zone / "a.wav", zone / "b.wav")
    (zone / "labels.csv").write_bytes(HEADER + b"a.wav,positive,p1,mine,app\n"
                                      b"b.wav,positive,p2,mine,app\n")
    with pytest.raises(LabelsError, match=r"line 3: 'b.wav' is the same file as 'a.wav' "
                                          r"\(line 2\)"):
        fetch(["local"], dataclasses.replace(DATA, local_dir=str(zone)), tmp_path / "out")


@pytest.mark.parametrize("content,where,reason", [
    (HEADER + b"a.wav,positive,p1,mine,app,\nb.wav,positive,p2,mine,app,\n"
     b"c.wav,negative,p3,mine,app,\n", "line 2", "6 fields, the header has 5 (a trailing comma?)"),
    (HEADER + b"a.wav,positive,p1,mine,app\nb.wav,positive,p2,mine,app,,\n", "line 3",
     "7 fields, the header has 5 (trailing commas?)"),
    (HEADER.replace(b"\n", b",\n") + b"a.wav,positive,p1,mine,app\n", "line 1",
     "column 6 has no name (a trailing comma?)"),
    (b"path,label,subject_id,source,label\na.wav,positive,p1,mine,negative\n", "line 1",
     "column 'label' appears twice (columns 2 and 5)"),
    (b"path,label,subject_id,source,channel, channel\na.wav,positive,p1,mine,app,x\n", "line 1",
     "column 'channel' appears twice (columns 5 and 6)"),
])
def test_a_malformed_header_or_row_width_is_one_clear_error(tmp_path, content, where, reason):
    message = labels_error(tmp_path, content)
    assert len(message.splitlines()) == 1, message
    assert message.endswith(f"labels.csv {where}: not a readable CSV row ({reason})") or \
        message.endswith(f"labels.csv {where}: {reason}"), message


FIELD = st.text(alphabet=st.sampled_from(list("ab,\"\n\r =+-@\t.wav/")), max_size=8)


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(header=st.lists(st.sampled_from(["path", "label", "subject_id", "source", "channel", "",
                                        "x"]), min_size=3, max_size=7),
       rows=st.lists(st.lists(FIELD, min_size=0, max_size=8), max_size=6),
       trailing=st.booleans())
def test_any_labels_csv_fails_in_lines_that_name_a_real_line(tmp_path_factory, header, rows,
                                                            trailing):
    """Whatever a hand-edited labels.csv holds (quoted newlines, commas, quotes, trailing
    commas, repeated or nameless columns), fetch copies it or refuses it with one line per
    problem, each naming the file and a line that exists in it."""
    tmp_path = tmp_path_factory.mktemp("any")
    zone = tmp_path / "zone"
    zone.mkdir()
    (zone / "a.wav").write_bytes(wav_bytes(tone(), 16000))
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    text = buffer.getvalue().replace("\n", ",\n") if trailing else buffer.getvalue()
    (zone / "labels.csv").write_text(text)
    try:
        fetch(["local"], dataclasses.replace(DATA, local_dir=str(zone)), tmp_path / "out")
    except LabelsError as err:
        message = str(err)
    else:
        return
    problems = message.splitlines()[1:] or [message]
    for problem in problems:
        assert str(zone / "labels.csv") in problem or problem.startswith("  ... and"), message
        for number in re.findall(r"\blines? ([0-9, and]+)", problem):
            for line in map(int, re.findall(r"[0-9]+", number)):
                assert line in row_starts(text), (line, message, text)


def row_starts(text: str) -> set[int]:
    """The physical lines on which the CSV's rows (the header's too) start, and the line where
    reading it fails, if it does."""
    reader, starts, start = csv.reader(io.StringIO(text), strict=True), set(), 1
    try:
        for row in reader:
            if row:
                starts.add(start)
            start = reader.line_num + 1
    except csv.Error:
        starts.add(start)
    return starts


# --- spreadsheet formulas in labels.csv never reach an output as formulas ------------------

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def formula_cells(csv_file: Path) -> list[str]:
    """Cells a spreadsheet would run as formulas, by the csv module's reading."""
    with open(csv_file, newline="") as fh:
        return [cell for row in csv.reader(fh) for cell in row if cell.startswith(FORMULA_STARTS)]


HOSTILE_TEXT = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(1,1)", "\t=1", "\r=1", "'=quoted",
                "'", "plain"]


def test_formula_text_in_labels_csv_is_neutralised_in_fetched_labels_and_reads_back(tmp_path):
    rows = [[f"a/{i}.wav", "positive" if i % 2 else "negative", text, text, text, text]
            for i, text in enumerate(HOSTILE_TEXT)]
    zone = tmp_path / "zone"
    for rel, *_ in rows:
        (zone / rel).parent.mkdir(parents=True, exist_ok=True)
        (zone / rel).write_bytes(wav_bytes(tone(), 16000))
    with open(zone / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "subject_id", "source", "channel", "note"],
                                  *rows])
    labels = fetch(["local"], dataclasses.replace(DATA, local_dir=str(zone)), tmp_path / "out")
    assert formula_cells(tmp_path / "out" / "labels.csv") == []
    back = read_csv_cells(tmp_path / "out" / "labels.csv")
    assert list(back["note"]) == HOSTILE_TEXT  # not stripped: only the required columns are
    for column in ("subject_id", "source", "channel"):
        assert list(back[column]) == list(labels[column]), column


CELL = st.text(alphabet=st.sampled_from(list("=+-@'\"\t\r\n ,;|!a1é")), min_size=1, max_size=10)


@settings(max_examples=100, deadline=None, database=None, derandomize=True)
@given(cells=st.lists(st.tuples(CELL, CELL, CELL, CELL), min_size=1, max_size=4))
def test_any_text_in_labels_csv_lands_inert_and_reads_back_exactly(tmp_path_factory, cells):
    """Formula starts, quotes, commas, lone CRs and newlines in any column: fetched/labels.csv
    holds no cell a spreadsheet runs, and reads back to exactly the rows fetch validated."""
    tmp_path = tmp_path_factory.mktemp("cells")
    zone = tmp_path / "zone"
    zone.mkdir()
    rows = [[f"{i}.wav", "positive", subject, source, channel, note]
            for i, (subject, source, channel, note) in enumerate(cells)]
    for row in rows:
        (zone / row[0]).write_bytes(wav_bytes(tone(), 16000))
    with open(zone / "labels.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label", "subject_id", "source", "channel", "note"],
                                  *rows])
    try:
        labels = fetch(["local"], dataclasses.replace(DATA, local_dir=str(zone)), tmp_path / "out")
    except LabelsError as err:
        assert "empty value" in str(err)  # a required value that is only whitespace
        return
    assert formula_cells(tmp_path / "out" / "labels.csv") == []
    back = read_csv_cells(tmp_path / "out" / "labels.csv")
    for column in labels.columns:
        assert list(back[column]) == list(labels[column]), column


# --- several labelled folders in one zone ---------------------------------------------------

REALDATA = ROOT.parent / "shared" / "realdata"
REAL_FOLDERS = ("dev", "dev-coswara")


def two_folder_zone(zone: Path) -> DataConfig:
    """A zone of two labelled sub-folders (no labels.csv of its own), each its own source,
    one with the licence files a public source comes with."""
    make_zone(zone / "theirs", [["clips/1.wav", "positive", "t1", "public", "web"],
                                ["clips/2.wav", "negative", "t2", "public", "web"]])
    make_zone(zone / "mine", [["1.wav", "negative", "m1", "own", "web"]])
    (zone / "theirs" / "ATTRIBUTION.txt").write_text("Audio: someone, CC BY 4.0\n")
    (zone / "theirs" / "LICENSE").write_text("CC BY 4.0\n")
    (zone / "theirs" / "README.md").write_text("# theirs\n")
    (zone / "theirs" / "notes.txt").write_text("not a licence\n")
    (zone / "theirs" / "clips" / "LICENSE").write_text("not at the top\n")
    return dataclasses.replace(DATA, local_dir=str(zone))


def test_every_labelled_sub_folder_is_read_in_name_order_keeping_its_sources(tmp_path):
    labels = fetch(["local"], two_folder_zone(tmp_path / "zone"), tmp_path / "out")
    assert list(labels["path"]) == ["local/mine/1.wav", "local/theirs/clips/1.wav",
                                    "local/theirs/clips/2.wav"]
    assert list(labels["source"]) == ["own", "public", "public"]
    assert ((tmp_path / "out/local/theirs/clips/2.wav").read_bytes()
            == (tmp_path / "zone/theirs/clips/2.wav").read_bytes())


def test_licence_files_at_the_top_of_a_labelled_folder_travel_with_its_clips(tmp_path):
    fetch(["local"], two_folder_zone(tmp_path / "zone"), tmp_path / "out")
    theirs = tmp_path / "out" / "local" / "theirs"
    assert (theirs / "ATTRIBUTION.txt").read_text() == "Audio: someone, CC BY 4.0\n"
    assert sorted(p.name for p in theirs.iterdir() if p.is_file()) == [
        "ATTRIBUTION.txt", "LICENSE", "README.md"]
    assert not (theirs / "clips" / "LICENSE").exists()


def test_licence_files_of_a_single_labelled_folder_travel_too(tmp_path):
    cfg = make_zone(tmp_path / "zone", GOOD)
    (tmp_path / "zone" / "ATTRIBUTION.md").write_text("credit\n")
    fetch(["local"], cfg, tmp_path / "out")
    assert (tmp_path / "out" / "local" / "ATTRIBUTION.md").read_text() == "credit\n"


def test_a_licence_file_linking_outside_its_folder_is_refused(tmp_path):
    cfg = two_folder_zone(tmp_path / "zone")
    (tmp_path / "secret").write_text("not data\n")
    (tmp_path / "zone" / "theirs" / "README.md").unlink()
    (tmp_path / "zone" / "theirs" / "README.md").symlink_to(tmp_path / "secret")
    with pytest.raises(LabelsError, match="'README.md' points outside the data folder"):
        fetch(["local"], cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_labels_csv_at_the_top_is_the_one_labelled_folder(tmp_path):
    cfg = two_folder_zone(tmp_path / "zone")
    make_zone(tmp_path / "zone", [["mine/1.wav", "positive", "m1", "own", "web"]], [])
    labels = fetch(["local"], cfg, tmp_path / "out")
    assert list(labels["path"]) == ["local/mine/1.wav"]


def test_a_zone_with_neither_layout_names_both(tmp_path):
    zone = tmp_path / "zone"
    (zone / "unlabelled").mkdir(parents=True)
    (zone / "unlabelled" / "a.wav").write_bytes(wav_bytes(tone(), 16000))
    with pytest.raises(LabelsError) as caught:
        fetch(["local"], dataclasses.replace(DATA, local_dir=str(zone)), tmp_path / "out")
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    assert f"{zone}/labels.csv not found" in message
    assert "no sub-folder of it holds a labels.csv" in message


@pytest.mark.parametrize("row,reason", [
    (["clips/3.wav", "maybe", "t3", "public", "web"], "label 'maybe' is not one of"),
    (["../mine/1.wav", "positive", "t3", "public", "web"], "without '..'"),
    (["link.wav", "positive", "t3", "public", "web"], "points outside the data folder"),
])
def test_a_mistake_in_one_labelled_folder_names_its_labels_csv_and_line(tmp_path, row, reason):
    """Each folder is checked as a zone of its own: no path reaches into a sibling folder."""
    zone = tmp_path / "zone"
    cfg = two_folder_zone(zone)
    (zone / "theirs" / "link.wav").symlink_to(zone / "mine" / "1.wav")
    (zone / "theirs" / "clips" / "3.wav").write_bytes(wav_bytes(tone(), 16000))
    with open(zone / "theirs" / "labels.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(row)
    with pytest.raises(LabelsError) as caught:
        fetch(["local"], cfg, tmp_path / "out")
    problem = str(caught.value).splitlines()[-1]
    assert f"{zone}/theirs/labels.csv line 4: " in problem and reason in problem, problem
    assert not (tmp_path / "out").exists()


def test_one_file_hard_linked_into_two_labelled_folders_is_a_duplicate(tmp_path):
    zone = tmp_path / "zone"
    cfg = two_folder_zone(zone)
    os.link(zone / "mine" / "1.wav", zone / "theirs" / "copy.wav")
    with open(zone / "theirs" / "labels.csv", "a", newline="") as fh:
        csv.writer(fh).writerow(["copy.wav", "negative", "t3", "public", "web"])
    with pytest.raises(LabelsError, match=rf"{zone}/theirs/labels.csv line 4: 'copy.wav' is the "
                                          rf"same file as 'mine/1.wav' \({zone}/mine/labels.csv "
                                          r"line 2\)"):
        fetch(["local"], cfg, tmp_path / "out")


def test_unlisted_audio_is_named_per_labelled_folder_and_outside_them(tmp_path, capsys):
    zone = tmp_path / "zone"
    cfg = two_folder_zone(zone)
    for extra in ("theirs/clips/9.wav", "mine/8.wav", "loose/7.wav"):
        (zone / extra).parent.mkdir(parents=True, exist_ok=True)
        (zone / extra).write_bytes(wav_bytes(tone(), 16000))
    fetch(["local"], cfg, tmp_path / "out")
    warnings = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
    assert len(warnings) == 3, warnings
    mine, theirs, loose = warnings
    assert f"not in {zone}/mine/labels.csv" in mine and mine.endswith("left out: 8.wav; add a "
                                                                     "row for each to use it")
    assert f"not in {zone}/theirs/labels.csv" in theirs and "left out: clips/9.wav;" in theirs
    assert "in no labelled folder" in loose and "left out: loose/7.wav;" in loose


@pytest.mark.slow
@pytest.mark.skipif(not all((REALDATA / name / "labels.csv").is_file() for name in REAL_FOLDERS),
                    reason="the shared real-data folders are not on this machine")
def test_the_shared_real_data_zone_is_two_sources_with_coswaras_attribution(tmp_path):
    """`-S data.local_dir=../shared/realdata -S 'data.sources=[local]'`: covid19-cough and
    Coswara in one run, Coswara's attribution beside its clips."""
    labels = fetch(["local"], dataclasses.replace(DATA, local_dir=str(REALDATA)), tmp_path / "out")
    assert sorted(labels["source"].unique()) == ["coswara", "covid19-cough"]
    assert set(labels["path"].str.split("/").str[1]) == set(REAL_FOLDERS)
    assert ((tmp_path / "out/local/dev-coswara/ATTRIBUTION.txt").read_bytes()
            == (REALDATA / "dev-coswara" / "ATTRIBUTION.txt").read_bytes())
