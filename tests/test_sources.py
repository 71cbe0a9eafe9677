"""The public sources, each fetched from a loopback server serving a toy upstream in its real
layout: git repositories archived and served as GitHub does, a zip served as Zenodo does."""
import contextlib
import dataclasses
import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from coughlab.audio import load_audio
from coughlab.config import DataConfig, load_params
from coughlab.download import CACHE_ENV, ChecksumError
from coughlab.sources import FINGERPRINT, LabelsError, get_source
from coughlab.sources.archive import Archive, ExtractBudget, UnsafeArchive
from coughlab.sources.coughvid import label_rows as coughvid_label_rows
from coughlab.sources.covid19_cough import label_records
from coughlab.sources.pins import PinMismatch, load_manifest
from coughlab.stages.fetch import fetch

from helpers import conf, write_params
from source_fixtures import (
    ArchiveServer,
    C19Record,
    Upstream,
    coswara_files,
    coughvid_zip,
    covid19_cough_files,
    git_blob,
    git_snapshot,
    virufy_files,
)

ROOT = Path(__file__).resolve().parents[1]
LIMITS = conf().data.extract
REALDATA = ROOT.parent / "shared" / "realdata" / "dev"


def apply(cfg: DataConfig, settings: dict) -> DataConfig:
    """Set dotted data.* keys (`virufy.url`) on a DataConfig."""
    for dotted, value in settings.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for name in parents:
            node = getattr(node, name)
        setattr(node, leaf, value)
    return cfg


@pytest.fixture
def serve(tmp_path, monkeypatch):
    """serve(covid19_cough=files, coughvid=zip bytes, ...) -> a DataConfig whose sources point
    at a loopback server (GitHub repos built with git, pinned by their manifests; COUGHVID by
    md5 and size), cached under tmp_path/cache. `serve.upstream`, `serve.server` after a call."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv(CACHE_ENV, raising=False)
    with contextlib.ExitStack() as stack:
        def start(**sources) -> DataConfig:
            upstream = Upstream(tmp_path / "upstream")
            for key, data in sources.items():
                upstream.zenodo(data) if key == "coughvid" else upstream.github(key, data)
            server = stack.enter_context(ArchiveServer(upstream.files).running())
            start.upstream, start.server = upstream, server
            return apply(dataclasses.replace(conf().data, cache_dir=str(tmp_path / "cache")),
                         upstream.settings(server.port))
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
    cfg = serve(covid19_cough=covid19_cough_files(C19_RECORDS))
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
    ("u6", "COVID-19", 0.85, "wav"),   # v3 holds .wav recordings too
]


@pytest.mark.parametrize("threshold,kept", [(0.8, ["u1", "u2", "u6"]),
                                            (0.5, ["u1", "u2", "u4", "u6"])])
def test_coughvid_v3_drops_symptomatic_and_applies_the_cough_detected_threshold(
        serve, tmp_path, threshold, kept):
    cfg = serve(coughvid=coughvid_zip(COUGHVID_ROWS))
    cfg.coughvid.min_cough_detected = threshold
    df = get_source("coughvid")(tmp_path / "out", cfg).sort_values("path")
    suffix = {"u1": "webm", "u2": "ogg", "u4": "webm", "u6": "wav"}
    assert list(df["path"]) == [f"{u}.{suffix[u]}" for u in kept]
    assert list(df["subject_id"]) == [f"coughvid-{u}" for u in kept]
    labels = dict(zip(df["path"], df["label"]))
    assert labels["u1.webm"] == labels["u6.wav"] == "positive" and labels["u2.ogg"] == "negative"
    assert set(df["channel"]) == {"coughvid-web"}
    assert files_under(tmp_path / "out") == sorted(df["path"])  # no .json sidecars


def test_coughvid_archive_not_matching_its_md5_is_never_used(serve, tmp_path):
    cfg = serve(coughvid=coughvid_zip(COUGHVID_ROWS))
    cfg.coughvid.md5 = "0" * 32
    with pytest.raises(ChecksumError, match="md5 mismatch"):
        get_source("coughvid")(tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()
    assert files_under(tmp_path / "cache") == []


COSWARA = {
    "20200413": [("p1", "positive_mild"), ("p2", "healthy"), ("p3", "recovered_full")],
    "20200415": [("p4", "positive_asymp"), ("p5", "positive_moderate"),
                 ("p6", "no_resp_illness_exposed")],
}
COSWARA_LABELS = {"p1": "positive", "p2": "negative", "p4": "positive", "p5": "positive"}
COSWARA_DATES = {"p1": "20200413", "p2": "20200413", "p4": "20200415", "p5": "20200415"}


@pytest.mark.parametrize("recordings", [["cough-heavy", "cough-shallow"], ["cough-heavy"]])
def test_coswara_maps_positive_statuses_and_reads_split_tarballs(serve, tmp_path, recordings):
    files = coswara_files(COSWARA)
    assert sum(".tar.gz." in n for n in files) > len(COSWARA)  # each tarball really is split
    cfg = serve(coswara=files)
    cfg.coswara.recordings = recordings
    df = get_source("coswara")(tmp_path / "out", cfg)
    expected = sorted(f"{COSWARA_DATES[p]}/{p}/{r}.wav" for p in COSWARA_LABELS for r in recordings)
    assert sorted(df["path"]) == expected
    assert files_under(tmp_path / "out") == expected
    for row in df.itertuples():
        pid = row.path.split("/")[1]
        assert (row.label, row.subject_id) == (COSWARA_LABELS[pid], f"coswara-{pid}")
    wave, sr = load_audio(tmp_path / "out" / expected[-1])  # intact across part boundaries
    assert sr == 44100 and wave.shape[1] == 22050


def test_coswara_downloads_only_the_parts_of_the_chosen_dates_file_by_file(serve, tmp_path):
    cfg = serve(coswara=coswara_files(COSWARA))
    cfg.coswara.dates = ["20200415"]
    df = get_source("coswara")(tmp_path / "out", cfg)
    assert {p.split("/")[0] for p in df["path"]} == {"20200415"}
    fetched = sorted(path.split("/", 5)[-1] for path, _ in serve.server.requests)
    commit = serve.upstream.snapshots["coswara"].commit
    parts = sorted(n for n in coswara_files(COSWARA)
                   if n.startswith("20200415/") and ".tar.gz." in n)
    assert fetched == sorted(["combined_data.csv", *parts])
    assert all(path.startswith(f"/raw/iiscleap/Coswara-Data/{commit}/")
               for path, _ in serve.server.requests)
    get_source("coswara")(tmp_path / "again", cfg)  # everything cached and verified: no request
    assert len(serve.server.requests) == len(fetched)


def test_coswara_unknown_date_names_the_known_ones(serve, tmp_path):
    cfg = serve(coswara=coswara_files(COSWARA))
    cfg.coswara.dates = ["20200414"]
    with pytest.raises(LabelsError, match=r"\['20200414'\].*known: \['20200413', '20200415'\]"):
        get_source("coswara")(tmp_path / "out", cfg)
    assert serve.server.requests == []


def test_coswara_dates_override_from_hydra_are_strings(tmp_path):
    params = load_params(write_params(tmp_path, "data.coswara.dates=[20200413,20200415]"))
    assert params.data.coswara.dates == ["20200413", "20200415"]


VIRUFY = [("pos-0421-001-cough-m-50", "positive", 3), ("neg-0421-002-cough-f-40", "negative", 2),
          ("neg-0421-003-cough-f-30", "inconclusive", 1)]


@pytest.mark.parametrize("clips,n_pos,n_neg", [("segmented", 3, 2), ("original", 1, 1)])
def test_virufy_uses_pcr_labels_and_one_subject_per_patient(serve, tmp_path, clips, n_pos, n_neg):
    cfg = serve(virufy=virufy_files(VIRUFY))
    cfg.virufy.clips = clips
    df = get_source("virufy")(tmp_path / "out", cfg)
    assert df["label"].value_counts().to_dict() == {"positive": n_pos, "negative": n_neg}
    assert set(df["subject_id"]) == {"virufy-pos-0421-001-cough-m-50",
                                     "virufy-neg-0421-002-cough-f-40"}
    assert all(p.startswith(f"clinical/{clips}/") for p in df["path"])
    assert not any("0421-003" in p for p in files_under(tmp_path / "out"))


def test_virufy_patients_alike_in_everything_but_the_date_share_a_fingerprint(serve, tmp_path):
    """Like patients 083 and 095: same age, gender, history and symptoms, another day."""
    cfg = serve(virufy=virufy_files([("neg-0421-083-cough-m-53", "negative", 2, 53),
                                     ("neg-0422-095-cough-m-53", "negative", 2, 53),
                                     ("pos-0421-001-cough-m-50", "positive", 2, 50)]))
    df = get_source("virufy")(tmp_path / "out", cfg)
    by_subject = df.groupby("subject_id")[FINGERPRINT].first()
    assert (by_subject["virufy-neg-0421-083-cough-m-53"]
            == by_subject["virufy-neg-0422-095-cough-m-53"]
            != by_subject["virufy-pos-0421-001-cough-m-50"])


def test_virufy_rejects_an_unknown_clip_kind(serve, tmp_path):
    cfg = serve(virufy=virufy_files(VIRUFY))
    cfg.virufy.clips = "both"
    with pytest.raises(LabelsError, match="data.virufy.clips is 'both'; choose one of"):
        get_source("virufy")(tmp_path / "out", cfg)


# --- pins: every file checked against the manifest of its commit -------------------------------

ALTERED = {
    "covid19_cough": (lambda: covid19_cough_files(C19_RECORDS), "raw/c.mp3"),
    "virufy": (lambda: virufy_files(VIRUFY),
               "clinical/segmented/pos/pos-0421-001-cough-m-50-1.mp3"),
    "coswara": (lambda: coswara_files(COSWARA), "20200415/20200415.tar.gz.ab"),
}


@pytest.mark.parametrize("key", sorted(ALTERED))
def test_one_altered_file_fails_naming_it_and_nothing_is_written(serve, tmp_path, key):
    build, victim = ALTERED[key]
    files = build()
    cfg = serve(**{key: files})
    snap = serve.upstream.snapshots[key]
    tampered = {**files, victim: files[victim][:-1] + b"\x00"}
    if key == "coswara":  # served file by file
        serve.upstream.files[f"/raw/{snap.repo}/{snap.commit}/{victim}"] = tampered[victim]
    else:  # the archive GitHub builds
        serve.upstream.files[f"/{snap.repo}/archive/{snap.commit}.zip"] = git_snapshot(
            tmp_path / "tampered", snap.repo, tampered).archive
    with pytest.raises((PinMismatch, ChecksumError), match=victim.replace(".", r"\.")):
        get_source(key.replace("_", "-"))(tmp_path / "out", cfg)
    assert not (tmp_path / "out").exists()
    assert not any(victim.split("/")[-1] in p for p in files_under(tmp_path / "cache"))


def test_a_commit_without_a_manifest_is_refused_before_downloading(serve, tmp_path):
    cfg = serve(virufy=virufy_files(VIRUFY))
    cfg.virufy.commit = "f" * 40
    with pytest.raises(PinMismatch, match=f"no manifest for virufy/virufy-data@{'f' * 40}"):
        get_source("virufy")(tmp_path / "out", cfg)
    assert serve.server.requests == []


def test_committed_params_point_at_committed_manifests_of_what_fetch_uses():
    cfg = load_params(ROOT / "params.yaml").data
    c19 = load_manifest(cfg.covid19_cough, cfg)
    assert "metadata.json" in c19.blobs and len(c19.paths("raw/")) == 1324
    virufy = load_manifest(cfg.virufy, cfg)
    assert "clinical/labels.csv" in virufy.blobs and virufy.paths("clinical/segmented/")
    coswara = load_manifest(cfg.coswara, cfg)
    assert "combined_data.csv" in coswara.blobs
    assert sum(".tar.gz." in p for p in coswara.blobs) == 153
    assert cfg.coughvid.md5 == "7c6cdf184748a2600538c331ba0ba718"
    assert cfg.coughvid.size == 2_297_542_075 and "/records/7024894/" in cfg.coughvid.url


@pytest.mark.skipif(not (REALDATA / "labels.csv").is_file(), reason="no shared real dev clips")
def test_shared_real_dev_clips_match_the_covid19_cough_manifest():
    manifest = load_manifest(load_params(ROOT / "params.yaml").data.covid19_cough, conf().data)
    labels = pd.read_csv(REALDATA / "labels.csv", dtype=str, keep_default_na=False)
    assert len(labels) > 0
    wrong = [row.path for row in labels.itertuples()
             if git_blob((REALDATA / row.path).read_bytes())
             != manifest.blobs[f"raw/{row.orig_name}"]]
    assert wrong == []


# --- hostile archives --------------------------------------------------------------------------

def with_member(archive: bytes, name: str, data: bytes, compress=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO(archive)
    with zipfile.ZipFile(buf, "a", compress) as zf:
        zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("member", [
    "clinical/segmented/../../../../evil.mp3",   # climbs out of the destination
    "../evil.mp3",
    "/tmp/evil.mp3",
    "clinical\\..\\..\\evil.mp3",
])
def test_virufy_archive_with_a_member_leaving_the_destination_is_refused_before_writing(
        serve, tmp_path, member):
    cfg = serve(virufy=virufy_files(VIRUFY))
    snap = serve.upstream.snapshots["virufy"]
    name = member if member.startswith("/") else f"virufy-data-{snap.commit}/{member}"
    serve.upstream.files[f"/{snap.repo}/archive/{snap.commit}.zip"] = with_member(
        snap.archive, name, b"evil")
    with pytest.raises(UnsafeArchive, match="would land outside the destination"):
        fetch(["virufy"], cfg, tmp_path / "build" / "fetched")
    assert not [p for p in tmp_path.rglob("*evil*")]
    assert not (tmp_path / "build" / "fetched").exists()


def zip_of(members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("members,limits,message", [
    ({"top/bomb.wav": bytes(20 << 20)}, LIMITS, "max_ratio=100"),
    ({f"top/{i}.wav": b"x" for i in range(11)}, dataclasses.replace(LIMITS, max_members=10),
     "max_members=10"),
    ({"top/a.wav": bytes(range(256)) * 4000, "top/b.wav": bytes(range(256)) * 4000},
     dataclasses.replace(LIMITS, max_total_bytes=1_500_000), "max_total_bytes=1500000"),
])
def test_zip_archives_beyond_the_extract_limits_are_refused(tmp_path, members, limits, message):
    path = tmp_path / "a.zip"
    path.write_bytes(zip_of(members))
    out = tmp_path / "out"
    with pytest.raises(UnsafeArchive, match=message):
        with Archive(path, ExtractBudget("test", limits)) as archive:
            for name in archive.names():
                archive.extract(name, out)
    assert sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) <= 1_500_000


def test_coswara_tarball_bomb_is_refused_while_streaming(serve, tmp_path):
    """A pinned (so: verified) part whose tarball inflates 1000-fold: the caps still hold."""
    import gzip
    import tarfile
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as tf:
        info = tarfile.TarInfo("20200413/p1/cough-heavy.wav")
        info.size = 30 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    files = {"combined_data.csv": b"id,covid_status\np1,positive_mild\n",
             "20200413/20200413.tar.gz.aa": gzip.compress(tar.getvalue())}
    cfg = serve(coswara=files)
    with pytest.raises(UnsafeArchive, match="max_ratio"):
        fetch(["coswara"], cfg, tmp_path / "build" / "fetched")
    assert not (tmp_path / "build" / "fetched").exists()
    assert not list(tmp_path.glob("build/.fetched*/**/*.wav"))


def test_coswara_tar_members_are_capped_too(serve, tmp_path):
    cfg = serve(coswara=coswara_files(COSWARA))
    cfg.extract.max_members = 5
    with pytest.raises(UnsafeArchive, match="max_members=5"):
        get_source("coswara")(tmp_path / "out", cfg)


# --- the fetch stage over several sources -----------------------------------------------------

def test_source_with_nothing_usable_says_what_it_dropped(serve, tmp_path):
    cfg = serve(coughvid=coughvid_zip([("u3", "symptomatic", 0.99, "webm")]))
    with pytest.raises(LabelsError, match=r"coughvid: no clips left.*'status symptomatic': 1"):
        get_source("coughvid")(tmp_path / "out", cfg)


def test_unknown_source_names_every_real_source(tmp_path):
    with pytest.raises(LabelsError, match="unknown data source 'coughvidd'; known sources: "
                       "coswara, coughvid, covid19-cough, local, virufy"):
        fetch(["coughvidd"], conf().data, tmp_path / "build" / "fetched")


def test_fetch_two_sources_into_one_valid_labels_csv(serve, tmp_path):
    cfg = serve(covid19_cough=covid19_cough_files(C19_RECORDS),
                coughvid=coughvid_zip(COUGHVID_ROWS))
    out = tmp_path / "build" / "fetched"
    fetch(["covid19-cough", "coughvid"], cfg, out)
    labels = pd.read_csv(out / "labels.csv", dtype=str, keep_default_na=False)
    assert list(labels.columns[:5]) == ["path", "label", "subject_id", "source", "channel"]
    assert labels["source"].value_counts().to_dict() == {"covid19-cough": 3, "coughvid": 3}
    assert set(labels["channel"]) == {"telegram", "call-center", "coughvid-web"}
    by_source = labels.groupby("source")["subject_id"].apply(set)
    assert not by_source["covid19-cough"] & by_source["coughvid"]
    assert labels["path"].str.split("/").str[0].tolist() == labels["source"].tolist()
    for path in labels["path"]:
        wave, sr = load_audio(out / path)
        assert wave.size > 0 and sr in (8000, 48000)
    assert sorted(p.name for p in (tmp_path / "build").iterdir()) == ["fetched"]


def test_failed_source_leaves_no_fetched_output(serve, tmp_path):
    cfg = serve(covid19_cough=covid19_cough_files(C19_RECORDS),
                coughvid=coughvid_zip(COUGHVID_ROWS))
    cfg.coughvid.md5 = "f" * 32
    with pytest.raises(ChecksumError, match="md5 mismatch"):
        fetch(["covid19-cough", "coughvid"], cfg, tmp_path / "build" / "fetched")
    assert list((tmp_path / "build").iterdir()) == []


def test_metadata_without_a_needed_column_names_it():
    metadata = pd.DataFrame({"uuid": ["a"], "status": ["healthy"]})
    with pytest.raises(LabelsError, match=r"coughvid: metadata_compiled.csv: missing column\(s\) "
                                          r"\['cough_detected'\]"):
        coughvid_label_rows(metadata, {"a": "a.webm"}, 0.8)


def test_a_corrupt_member_in_a_github_archive_is_named_and_the_archive_dropped(serve, tmp_path):
    cfg = serve(virufy=virufy_files(VIRUFY))
    snap = serve.upstream.snapshots["virufy"]
    victim = "clinical/labels.csv"
    with zipfile.ZipFile(io.BytesIO(snap.archive)) as zf:
        stored = zip_of({i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()},
                        zipfile.ZIP_STORED)
    data = bytearray(stored)
    at = data.index(b"corona_test")  # the bytes of labels.csv, changed behind its CRC
    data[at:at + 6] = b"CORONA"
    serve.upstream.files[f"/{snap.repo}/archive/{snap.commit}.zip"] = bytes(data)
    with pytest.raises(PinMismatch, match=f"{victim}: unreadable.*CRC"):
        get_source("virufy")(tmp_path / "out", cfg)
    assert files_under(tmp_path / "cache") == []


def test_sources_cli_lists_each_source_with_licence_version_size_and_cache(serve, tmp_path,
                                                                          capsys):
    from coughlab.sources.__main__ import main
    cfg = serve(virufy=virufy_files(VIRUFY))
    get_source("virufy")(tmp_path / "out", cfg)
    snap = serve.upstream.snapshots["virufy"]
    params = write_params(tmp_path, f"data.cache_dir='{tmp_path / 'cache'}'",
                          f"data.manifest_dir='{serve.upstream.manifests}'",
                          f"data.virufy.commit={snap.commit}",
                          f"data.virufy.url='{cfg.virufy.url}'")
    capsys.readouterr()
    main(["--params", str(params)])
    blocks = {b.split("\n")[0].split()[0]: b for b in capsys.readouterr().out.strip().split("\n\n")}
    assert sorted(blocks) == ["coswara", "coughvid", "covid19-cough", "local", "virufy"]
    assert "licence  CC BY-NC-SA 4.0" in blocks["virufy"]
    assert f"version  github.com/virufy/virufy-data @ {snap.commit}" in blocks["virufy"]
    assert "cached   yes" in blocks["virufy"]
    assert "2,297,542,075 bytes" in blocks["coughvid"] and "cached   no" in blocks["coughvid"]
    assert "licence  CC BY 4.0" in blocks["coswara"] and "CC0 1.0" in blocks["covid19-cough"]
    assert "cached   no" in blocks["covid19-cough"]  # its manifest is missing here: says so


# --- GitHub's archive is unpinned: its cached copy is trusted only as far as its members -------

def archive_path(serve) -> str:
    snap = serve.upstream.snapshots["virufy"]
    return f"/{snap.repo}/archive/{snap.commit}.zip"


@pytest.mark.parametrize("announce_size", [True, False])
def test_a_github_archive_cut_short_is_dropped_and_fetched_again_next_run(
        serve, tmp_path, capsys, announce_size):
    """A zip cut short (behind a Content-Length that says so, or with none at all) fails this
    run, and the next run, once the server is fixed, downloads it afresh and succeeds."""
    cfg = serve(virufy=virufy_files(VIRUFY))
    path = archive_path(serve)
    whole = serve.upstream.files[path]
    serve.upstream.files[path] = whole[: len(whole) // 2]
    if not announce_size:
        serve.server.unannounced.add(path)
    with pytest.raises(LabelsError, match="is not a zip archive"):
        get_source("virufy")(tmp_path / "out", cfg)
    assert "deleted the cached archive" in capsys.readouterr().out
    assert files_under(tmp_path / "cache") == []
    serve.upstream.files[path] = whole
    assert len(get_source("virufy")(tmp_path / "out", cfg)) > 0


def test_junk_at_the_archive_url_is_not_kept(serve, tmp_path):
    cfg = serve(virufy=virufy_files(VIRUFY))
    serve.upstream.files[archive_path(serve)] = b"<html>rate limited</html>" * 4000
    with pytest.raises(LabelsError, match="is not a zip archive"):
        get_source("virufy")(tmp_path / "out", cfg)
    assert files_under(tmp_path / "cache") == []


def test_a_github_archive_with_a_member_not_matching_is_dropped_then_fetched_again(serve, tmp_path):
    files = virufy_files(VIRUFY)
    cfg = serve(virufy=files)
    snap = serve.upstream.snapshots["virufy"]
    path = archive_path(serve)
    whole = serve.upstream.files[path]
    tampered = {**files, "clinical/labels.csv": files["clinical/labels.csv"] + b"\n"}
    serve.upstream.files[path] = git_snapshot(tmp_path / "tampered", snap.repo, tampered).archive
    with pytest.raises(PinMismatch, match="clinical/labels.csv"):
        get_source("virufy")(tmp_path / "out", cfg)
    assert files_under(tmp_path / "cache") == []
    serve.upstream.files[path] = whole
    get_source("virufy")(tmp_path / "out", cfg)
    requests = len(serve.server.requests)
    get_source("virufy")(tmp_path / "again", cfg)  # verified whole now: reused, no request
    assert len(serve.server.requests) == requests
