"""The public sources, each fetched from a loopback server serving a toy archive in its real layout."""
import contextlib
import io
import zipfile

import pandas as pd
import pytest

from coughlab.audio import load_audio
from coughlab.config import DataConfig, load_params
from coughlab.download import CACHE_ENV, ChecksumError, UnpinnedSourceError
from coughlab.sources import LabelsError, get_source
from coughlab.sources.coughvid import label_rows as coughvid_label_rows
from coughlab.sources.covid19_cough import label_records
from coughlab.stages.fetch import fetch

from helpers import write_params
from source_fixtures import (C19Record, ArchiveServer, coswara_zip, coughvid_zip,
                             covid19_cough_zip, sha256, virufy_zip)


@pytest.fixture
def serve(tmp_path, monkeypatch):
    """serve(coughvid=zip bytes, ...) -> a DataConfig whose sources point at a loopback server,
    each archive pinned by its sha256 and cached under tmp_path/cache."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv(CACHE_ENV, raising=False)
    with contextlib.ExitStack() as stack:
        def start(**archives: bytes) -> DataConfig:
            server = stack.enter_context(
                ArchiveServer({f"/{key}.zip": data for key, data in archives.items()}).running())
            cfg = DataConfig(cache_dir=str(tmp_path / "cache"))
            for key, data in archives.items():
                settings = getattr(cfg, key)
                settings.url, settings.sha256 = server.url(f"/{key}.zip"), sha256(data)
            return cfg
        yield start


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


C19_RECORDS = [
    C19Record("a1", True, "call-center", True, audio_seed=1),
    C19Record("a2", False, "telegram", None, audio_seed=1),   # same audio as a1, other label
    C19Record("b2", False, "telegram", False, audio_seed=2),
    C19Record("b1", False, "telegram", False, audio_seed=2),  # same audio as b2, same label
    C19Record("c", True, "call-center", None, audio_seed=3),
    C19Record("d", False, "telegram", False, audio_seed=4),
]


def test_covid19_cough_drops_contradictory_duplicates_and_keeps_one_agreeing_copy(serve, tmp_path):
    cfg = serve(covid19_cough=covid19_cough_zip(C19_RECORDS))
    df = get_source("covid19-cough")(tmp_path / "out", cfg)
    assert list(df["path"]) == ["raw/b1.mp3", "raw/c.mp3", "raw/d.mp3"]
    assert list(df["label"]) == ["negative", "positive", "negative"]
    assert list(df["subject_id"]) == ["c19c-b1", "c19c-c", "c19c-d"]
    assert list(df["channel"]) == ["telegram", "call-center", "telegram"]
    assert list(df["verified"]) == ["False", "", "False"]
    assert set(df["source"]) == {"covid19-cough"}
    assert files_under(tmp_path / "out") == ["raw/b1.mp3", "raw/c.mp3", "raw/d.mp3"]


def test_covid19_cough_refuses_file_names_that_leave_raw():
    with pytest.raises(LabelsError, match="unsafe file name '../x.mp3'"):
        label_records([{"filename": "../x.mp3", "covid19": True, "source": "telegram"}], set())


COUGHVID_ROWS = [
    ("u1", "COVID-19", 0.95, "webm"),
    ("u2", "healthy", 0.90, "ogg"),
    ("u3", "symptomatic", 0.99, "webm"),
    ("u4", "healthy", 0.60, "webm"),   # below the default threshold
    ("u5", "", 0.99, "ogg"),           # no status
]


@pytest.mark.parametrize("threshold,kept", [(0.8, ["u1", "u2"]), (0.5, ["u1", "u2", "u4"])])
def test_coughvid_drops_symptomatic_and_applies_the_cough_detected_threshold(
        serve, tmp_path, threshold, kept):
    cfg = serve(coughvid=coughvid_zip(COUGHVID_ROWS))
    cfg.coughvid.min_cough_detected = threshold
    df = get_source("coughvid")(tmp_path / "out", cfg).sort_values("path")
    suffix = {"u1": "webm", "u2": "ogg", "u4": "webm"}
    assert list(df["path"]) == [f"{u}.{suffix[u]}" for u in kept]
    assert list(df["subject_id"]) == [f"coughvid-{u}" for u in kept]
    assert dict(zip(df["path"], df["label"]))["u1.webm"] == "positive"
    assert set(df.loc[df["path"] != "u1.webm", "label"]) == {"negative"}
    assert set(df["channel"]) == {"coughvid-web"}
    assert files_under(tmp_path / "out") == sorted(df["path"])  # no .json sidecars


COSWARA = {
    "20200413": [("p1", "positive_mild"), ("p2", "healthy"), ("p3", "recovered_full")],
    "20200415": [("p4", "positive_asymp"), ("p5", "positive_moderate"),
                 ("p6", "no_resp_illness_exposed")],
}


@pytest.mark.parametrize("recordings", [["cough-heavy", "cough-shallow"], ["cough-heavy"]])
def test_coswara_maps_positive_statuses_and_reads_split_tarballs(serve, tmp_path, recordings):
    archive = coswara_zip(COSWARA)
    parts = [n for n in zipfile.ZipFile(io.BytesIO(archive)).namelist() if ".tar.gz." in n]
    assert len(parts) > len(COSWARA)  # each date's tarball really is split
    cfg = serve(coswara=archive)
    cfg.coswara.recordings = recordings
    df = get_source("coswara")(tmp_path / "out", cfg)
    labels = {"p1": "positive", "p2": "negative", "p4": "positive", "p5": "positive"}
    dates = {"p1": "20200413", "p2": "20200413", "p4": "20200415", "p5": "20200415"}
    expected = sorted(f"{dates[p]}/{p}/{r}.wav" for p in labels for r in recordings)
    assert sorted(df["path"]) == expected
    assert files_under(tmp_path / "out") == expected
    for row in df.itertuples():
        pid = row.path.split("/")[1]
        assert (row.label, row.subject_id) == (labels[pid], f"coswara-{pid}")
    wave, sr = load_audio(tmp_path / "out" / expected[-1])  # intact across part boundaries
    assert sr == 44100 and wave.shape[1] == 22050


VIRUFY = [("pos-0421-001-cough-m-50", "positive", 3), ("neg-0421-002-cough-f-40", "negative", 2),
          ("neg-0421-003-cough-f-30", "inconclusive", 1)]


@pytest.mark.parametrize("clips,n_pos,n_neg", [("segmented", 3, 2), ("original", 1, 1)])
def test_virufy_uses_pcr_labels_and_one_subject_per_patient(serve, tmp_path, clips, n_pos, n_neg):
    cfg = serve(virufy=virufy_zip(VIRUFY))
    cfg.virufy.clips = clips
    df = get_source("virufy")(tmp_path / "out", cfg)
    assert df["label"].value_counts().to_dict() == {"positive": n_pos, "negative": n_neg}
    assert set(df["subject_id"]) == {"virufy-pos-0421-001-cough-m-50",
                                     "virufy-neg-0421-002-cough-f-40"}
    assert all(p.startswith(f"clinical/{clips}/") for p in df["path"])
    assert not any("0421-003" in p for p in files_under(tmp_path / "out"))


def test_virufy_rejects_an_unknown_clip_kind(serve, tmp_path):
    cfg = serve(virufy=virufy_zip(VIRUFY))
    cfg.virufy.clips = "both"
    with pytest.raises(LabelsError, match="data.virufy.clips is 'both'; choose one of"):
        get_source("virufy")(tmp_path / "out", cfg)


def test_source_with_nothing_usable_says_what_it_dropped(serve, tmp_path):
    cfg = serve(coughvid=coughvid_zip([("u3", "symptomatic", 0.99, "webm")]))
    with pytest.raises(LabelsError, match=r"coughvid: no clips left.*'status symptomatic': 1"):
        get_source("coughvid")(tmp_path / "out", cfg)


def test_unknown_source_names_every_real_source(tmp_path):
    with pytest.raises(LabelsError, match="unknown data source 'coughvidd'; known sources: "
                       "coswara, coughvid, covid19-cough, local, virufy"):
        fetch(["coughvidd"], DataConfig(), tmp_path / "build" / "fetched")


def test_fetch_two_sources_into_one_valid_labels_csv(serve, tmp_path):
    cfg = serve(covid19_cough=covid19_cough_zip(C19_RECORDS), coughvid=coughvid_zip(COUGHVID_ROWS))
    out = tmp_path / "build" / "fetched"
    fetch(["covid19-cough", "coughvid"], cfg, out)
    labels = pd.read_csv(out / "labels.csv", dtype=str, keep_default_na=False)
    assert list(labels.columns[:5]) == ["path", "label", "subject_id", "source", "channel"]
    assert labels["source"].value_counts().to_dict() == {"covid19-cough": 3, "coughvid": 2}
    assert set(labels["channel"]) == {"telegram", "call-center", "coughvid-web"}
    by_source = labels.groupby("source")["subject_id"].apply(set)
    assert not by_source["covid19-cough"] & by_source["coughvid"]
    assert labels["path"].str.split("/").str[0].tolist() == labels["source"].tolist()
    for path in labels["path"]:
        wave, sr = load_audio(out / path)
        assert wave.size > 0 and sr in (8000, 48000)
    assert sorted(p.name for p in (tmp_path / "build").iterdir()) == ["fetched"]


def test_failed_source_leaves_no_fetched_output(serve, tmp_path):
    cfg = serve(covid19_cough=covid19_cough_zip(C19_RECORDS), coughvid=coughvid_zip(COUGHVID_ROWS))
    cfg.coughvid.sha256 = "f" * 64
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        fetch(["covid19-cough", "coughvid"], cfg, tmp_path / "build" / "fetched")
    assert list((tmp_path / "build").iterdir()) == []


def test_sources_are_selected_with_a_hydra_override_and_refuse_unpinned_archives(tmp_path):
    params = load_params(write_params(tmp_path, "data.sources=[covid19-cough,coughvid]",
                                      "data.covid19_cough.sha256=null"))
    assert params.data.sources == ["covid19-cough", "coughvid"]
    with pytest.raises(UnpinnedSourceError, match="data.covid19_cough.sha256 is not pinned"):
        fetch(params.data.sources, params.data, tmp_path / "fetched")
    assert not (tmp_path / "fetched").exists()


def test_metadata_without_a_needed_column_names_it():
    metadata = pd.DataFrame({"uuid": ["a"], "status": ["healthy"]})
    with pytest.raises(LabelsError, match=r"coughvid: metadata_compiled.csv: missing column\(s\) "
                                          r"\['cough_detected'\]"):
        coughvid_label_rows(metadata, {"a": "a.webm"}, 0.8)
