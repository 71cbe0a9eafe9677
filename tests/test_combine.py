import csv
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from coughlab.config import QualityConfig, SplitConfig
from coughlab.escape import read_csv_cells, write_csv
from coughlab.sample import wav_bytes
from coughlab.stages.combine import SplitError, TooManyQuarantined, combine, split_subjects

from helpers import conf
from source_fixtures import encode
from test_audio import tone

QUALITY = QualityConfig(min_seconds=0.3, silence_dbfs=-60.0, max_quarantine_fraction=0.5)


def fetched(root, clips):
    """build/fetched layout: {relpath: bytes} plus labels.csv; labels alternate by subject."""
    rows = []
    for i, (rel, payload) in enumerate(clips.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(payload)
        rows.append({"path": rel, "label": "positive" if i % 2 else "negative",
                     "subject_id": f"s{i // 2}", "source": rel.split("/")[0], "channel": "c"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def nan_wav():
    wave = tone()
    wave[100] = np.nan
    return wav_bytes_float(wave)


def wav_bytes_float(wave, sr=16000):
    import io
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def test_bad_clips_are_quarantined_with_reasons_not_fatal(tmp_path):
    src = fetched(tmp_path / "fetched", {
        "a/good8k.wav": wav_bytes(tone(8000), 8000),
        "a/good48k.wav": wav_bytes(np.stack([tone(48000), tone(48000)], 1), 48000),
        "a/good16k.wav": wav_bytes(tone(16000), 16000),
        "a/zero.wav": b"",
        "a/corrupt.wav": b"RIFF1234WAVEjunk",
        "a/nan.wav": nan_wav(),
        "a/silent.wav": wav_bytes(np.zeros(16000, np.float32), 16000),
        "a/short.wav": wav_bytes(tone(16000, 0.1), 16000),
    })
    summary = combine(src, tmp_path / "out", 16000,
                      dataclasses.replace(QUALITY, max_quarantine_fraction=0.7),
                      SplitConfig(0.0, 0.0, []), seed=1)
    quarantine = pd.read_csv(tmp_path / "out" / "quarantine.csv")
    assert dict(zip(quarantine["path"], quarantine["reason"])) == {
        "a/zero.wav": "unreadable", "a/corrupt.wav": "unreadable", "a/nan.wav": "non_finite",
        "a/silent.wav": "silent", "a/short.wav": "too_short"}
    assert summary["quarantined"] == 5 and summary["clips"] == 3
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert sorted(manifest["orig_sr"]) == [8000, 16000, 48000]
    for rel in manifest["path"]:
        info = sf.info(tmp_path / "out" / "clips" / rel)
        assert (info.samplerate, info.channels) == (16000, 1)
        assert abs(info.frames - 16000) <= 1
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary


def test_too_many_quarantined_fails_and_writes_nothing(tmp_path):
    src = fetched(tmp_path / "fetched", {"a/x.wav": b"", "a/y.wav": b"junk",
                                         "a/ok.wav": wav_bytes(tone(), 16000)})
    with pytest.raises(TooManyQuarantined, match="above data.quality.max_quarantine_fraction=0.5"):
        combine(src, tmp_path / "out", 16000, QUALITY, conf().data.split, seed=1)
    assert not (tmp_path / "out").exists()


def subjects_frame(n_subjects=40, clips=3, source="a", positive_every=4):
    return pd.DataFrame([{"subject_id": f"{source}{s}", "source": source,
                          "path": f"{source}{s}_{c}.wav",
                          "label": "positive" if s % positive_every == 0 else "negative"}
                         for s in range(n_subjects) for c in range(clips)])


def test_split_is_subject_disjoint_stratified_and_seeded():
    df = subjects_frame()
    df["split"] = split_subjects(df, SplitConfig(0.2, 0.2, []), seed=7)
    assert df.groupby("subject_id")["split"].nunique().max() == 1
    for split in ("train", "valid", "test"):
        assert set(df.loc[df.split == split, "label"]) == {"positive", "negative"}
    positive_share = df[df.label == "positive"].groupby("split").subject_id.nunique()
    assert positive_share["test"] == positive_share["valid"] == 2  # 20% of 10 positive subjects
    again = split_subjects(df, SplitConfig(0.2, 0.2, []), seed=7)
    other = split_subjects(df, SplitConfig(0.2, 0.2, []), seed=8)
    assert again.equals(df["split"]) and not other.equals(df["split"])


def test_subject_with_mixed_labels_stays_in_one_split():
    df = subjects_frame(12, 2, positive_every=2)  # enough positives for every split
    df.loc[0, "label"] = "negative"  # subject a0 now has one clip of each label
    split = split_subjects(df, SplitConfig(0.25, 0.25, []), seed=0)
    assert split[df.subject_id == "a0"].nunique() == 1


@pytest.mark.parametrize("seed", range(12))
def test_every_source_is_in_every_split_with_both_labels_where_it_can_be(seed):
    """A large source beside a small one: stratifying by label alone often left the small
    one out of test or valid."""
    df = pd.concat([subjects_frame(60, 2, "big", positive_every=2),
                    subjects_frame(6, 2, "small", positive_every=2)], ignore_index=True)
    df["split"] = split_subjects(df, SplitConfig(0.15, 0.15, []), seed)
    assert df.groupby("subject_id")["split"].nunique().max() == 1
    for (source, split), part in df.groupby(["source", "split"]):
        assert set(part["label"]) == {"positive", "negative"}, (source, split)
    assert df.groupby("source")["split"].nunique().to_dict() == {"big": 3, "small": 3}


def channel_cells_frame() -> pd.DataFrame:
    """One source of two channels whose labels lean opposite ways (covid19-cough's call-center
    and telegram), beside a source that names no channel; one clip per subject."""
    cells = [("c19", "call", "positive", 30), ("c19", "call", "negative", 10),
             ("c19", "tele", "positive", 8), ("c19", "tele", "negative", 32),
             ("web", None, "positive", 10), ("web", None, "negative", 20)]
    rows = [{"subject_id": f"{source}-{channel}-{label}-{i}", "source": source,
             "channel": channel, "label": label, "path": f"{source}/{channel}/{label}/{i}.wav"}
            for source, channel, label, n in cells for i in range(n)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", range(8))
def test_every_source_channel_label_cell_is_split_by_the_fractions(seed):
    """Stratified by source x label only, the c19 positives were shuffled as one: seed 6 left
    test without a telegram positive, seed 3 valid."""
    df = channel_cells_frame()
    fractions = {"valid": 0.15, "test": 0.15, "train": 0.7}
    df["split"] = split_subjects(df, SplitConfig(0.15, 0.15, []), seed)
    cell = [df["source"], df["channel"].fillna(df["source"]), df["label"]]
    for key, part in df.groupby(cell):
        for split, fraction in fractions.items():
            count = int((part["split"] == split).sum())
            assert abs(count - len(part) * fraction) <= 1, (key, split, count, len(part))


@pytest.mark.parametrize("seed", range(6))
def test_three_subjects_of_a_label_reach_every_split_whatever_their_channels(seed):
    """Cells of fewer than 3 groups are pooled per label: cut one by one, the 2 + 1 subjects
    of each label here all stayed in train."""
    df = labelled(["negative", "negative", "positive", "positive", "negative", "positive"])
    df["channel"] = ["phone", "phone", "app", "app", "app", "phone"]
    split = split_subjects(df, SplitConfig(0.15, 0.15, []), seed)
    assert df.groupby(split)["label"].nunique().to_dict() == {"test": 2, "train": 2, "valid": 2}


@pytest.mark.parametrize("n_subjects", [4, 5])
def test_a_source_with_few_subjects_still_reaches_every_split(n_subjects):
    df = pd.concat([subjects_frame(40), subjects_frame(n_subjects, 1, "tiny", positive_every=3)],
                   ignore_index=True)
    split = split_subjects(df, SplitConfig(0.15, 0.15, []), seed=3)
    assert set(split[df.source == "tiny"]) == {"train", "valid", "test"}


def test_a_source_too_small_for_every_split_is_named():
    df = pd.concat([subjects_frame(40), subjects_frame(2, 3, "virufy")], ignore_index=True)
    with pytest.raises(SplitError, match=r"source 'virufy' has 2 independent subject\(s\).*"
                                         r"3 are needed to put it in train, test, valid"):
        split_subjects(df, SplitConfig(0.15, 0.15, []), seed=0)
    assert split_subjects(df, SplitConfig(0.0, 0.5, []), seed=0).notna().all()


@pytest.mark.parametrize("seed", range(12))
def test_possible_duplicates_of_one_person_share_a_split(seed):
    """Equal person_fingerprint (e.g. Virufy patients 083 and 095: same age, gender, history
    and symptoms, another date) joins subjects, transitively; blank fingerprints join nothing."""
    df = subjects_frame(30, 2, "v", positive_every=2)
    df["person_fingerprint"] = ""
    df.loc[df.subject_id.isin(["v1", "v3"]), "person_fingerprint"] = "x"
    df.loc[df.subject_id.isin(["v5", "v7"]), "person_fingerprint"] = "y"
    df.loc[(df.subject_id == "v3") & df.path.str.endswith("_1.wav"), "person_fingerprint"] = "y"
    df.loc[df.subject_id.isin(["v2", "v4"]), "person_fingerprint"] = "z"
    df["split"] = split_subjects(df, SplitConfig(0.2, 0.2, []), seed)
    by_subject = df.groupby("subject_id")["split"].first()
    assert by_subject[["v1", "v3", "v5", "v7"]].nunique() == 1  # x and y meet in v3
    assert by_subject["v2"] == by_subject["v4"]
    assert df.groupby("subject_id")["split"].nunique().max() == 1
    assert by_subject.nunique() == 3


def test_sample_data_still_splits_sensibly(tmp_path):
    from coughlab.sample import generate
    generate(tmp_path / "data")
    df = pd.read_csv(tmp_path / "data" / "labels.csv", dtype=str, keep_default_na=False)
    df["split"] = split_subjects(df, SplitConfig(0.15, 0.15, []), seed=42)
    subjects = df.groupby("split")["subject_id"].nunique()
    assert subjects["valid"] >= 6 and subjects["test"] >= 6 and subjects["train"] >= 30
    for split, part in df.groupby("split"):
        assert set(part["label"]) == {"positive", "negative"}
    cells = df.groupby(["channel", "label"])["split"].nunique()
    assert (cells == 3).all(), cells  # stratified by channel too: each cell in every split
    # The split build/combined holds (since combine stratifies by channel as well and seeds
    # each source's stream by its name, issue 26).
    assert df.groupby(["split", "label"]).size().to_dict() == {
        ("test", "negative"): 15, ("test", "positive"): 21, ("train", "negative"): 85,
        ("train", "positive"): 83, ("valid", "negative"): 19, ("valid", "positive"): 20}


def labelled(labels: list[str], source: str = "own") -> pd.DataFrame:
    """One clip per subject, with these labels."""
    return pd.DataFrame({"subject_id": [f"s{i}" for i in range(len(labels))], "source": source,
                         "path": [f"s{i}.wav" for i in range(len(labels))], "label": labels})


@pytest.mark.parametrize("labels, counts", [
    pytest.param(["negative", "positive", "negative"],
                 "train: 1 negative, 0 positive; valid: 0 negative, 1 positive; "
                 "test: 1 negative, 0 positive", id="3-clips-1-1-1"),
    pytest.param(["positive"] * 20, "train: 0 negative, 14 positive; valid: 0 negative, "
                 "3 positive; test: 0 negative, 3 positive", id="all-positive"),
    pytest.param(["negative"] * 18 + ["positive"] * 2, "train: 12 negative, 2 positive; "
                 "valid: 3 negative, 0 positive; test: 3 negative, 0 positive",
                 id="2-positive-subjects"),
])
def test_a_split_without_both_labels_is_refused_with_its_counts(labels, counts):
    """They used to split silently: train learnt one class (20 NaN epochs when all positive)
    and evaluate failed on valid ("cannot calibrate the threshold") or scored nothing."""
    with pytest.raises(SplitError, match="every split in use needs clips of both labels") \
            as refused:
        split_subjects(labelled(labels), SplitConfig(0.15, 0.15, []), seed=42)
    assert counts in str(refused.value)


def test_only_the_splits_in_use_need_both_labels():
    split = split_subjects(labelled(["negative", "positive"]), SplitConfig(0.0, 0.0, []), seed=0)
    assert split.tolist() == ["train", "train"]
    with pytest.raises(SplitError, match="train: 1 negative, 0 positive$"):
        split_subjects(labelled(["negative"]), SplitConfig(0.0, 0.0, []), seed=0)


def test_compressed_sources_become_wav_clips_keeping_the_fetched_path(tmp_path):
    src = fetched(tmp_path / "fetched", {
        "c19/a.mp3": encode("mp3", seed=1, sr=48000, channels=2),
        "cv/b.ogg": encode("ogg", seed=2, sr=48000),
        "cv/c.webm": encode("webm", seed=3, sr=48000),
        "loc/d.wav": wav_bytes(tone(8000), 8000),
    })
    combine(src, tmp_path / "out", 16000, QUALITY, SplitConfig(0.0, 0.0, []), seed=1)
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert dict(zip(manifest["fetched_path"], manifest["path"])) == {
        "c19/a.mp3": "c19/a.mp3.wav", "cv/b.ogg": "cv/b.ogg.wav", "cv/c.webm": "cv/c.webm.wav",
        "loc/d.wav": "loc/d.wav"}
    for rel in manifest["path"]:
        assert sf.info(tmp_path / "out" / "clips" / rel).samplerate == 16000


def test_combined_clips_are_float_and_byte_identical_run_after_run(tmp_path):
    """Float samples (what the Lambda feeds the graph), and no write-time stamp in the file:
    libsndfile's default PEAK chunk holds the clock, which changed dvc.lock on every rerun."""
    import time

    src = fetched(tmp_path / "fetched", {"a/x.wav": wav_bytes(tone(44100), 44100),
                                         "a/y.wav": wav_bytes(tone(16000), 16000)})
    combine(src, tmp_path / "one", 16000, QUALITY, SplitConfig(0.0, 0.0, []), seed=1)
    time.sleep(1.1)  # the stamp has a resolution of one second
    combine(src, tmp_path / "two", 16000, QUALITY, SplitConfig(0.0, 0.0, []), seed=1)
    one, two = (tmp_path / run / "clips" / "a" / "x.wav" for run in ("one", "two"))
    assert one.read_bytes() == two.read_bytes()
    assert sf.info(one).subtype == "FLOAT"


def test_formula_text_is_neutralised_in_the_manifest_and_quarantine(tmp_path):
    """A subject or channel named like a spreadsheet formula is written with a leading quote
    (coughlab.escape.csv_cell), in fetch's labels.csv as in combine's outputs, and read back
    to the same name."""
    root = tmp_path / "fetched"
    names = ["=cmd|' /C calc'!A0", "@SUM(1,1)", "-2+3", "+1", "\t=1", "'=quoted"]
    clips = {}
    for i, name in enumerate(names):
        clips[f"a/{i}.wav"] = wav_bytes(tone(16000), 16000)
        clips[f"a/{i}-empty.wav"] = b""
    src = fetched(root, clips)
    labels = pd.read_csv(root / "labels.csv", dtype=str, keep_default_na=False)
    labels["subject_id"] = [names[i // 2] for i in range(len(labels))]
    labels["label"] = [("negative", "positive")[(i // 2) % 2] for i in range(len(labels))]
    labels["channel"] = labels["subject_id"]
    write_csv(labels, root / "labels.csv")  # as fetch writes it
    combine(src, tmp_path / "out", 16000, dataclasses.replace(QUALITY, max_quarantine_fraction=0.6),
            SplitConfig(0.0, 0.0, []), seed=1)
    for output in ("manifest.csv", "quarantine.csv"):
        with open(tmp_path / "out" / output, newline="") as fh:
            cells = [cell for row in csv.reader(fh) for cell in row]
        assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))], output
    manifest = read_csv_cells(tmp_path / "out" / "manifest.csv")
    assert sorted(manifest["subject_id"]) == sorted(names)
    assert (manifest["channel"] == manifest["subject_id"]).all()


# --- a leave-one-source-out run: data.split.held_out_sources ---------------------------------

def two_sources() -> pd.DataFrame:
    return pd.concat([subjects_frame(40, 2, "big", positive_every=2),
                      subjects_frame(12, 2, "other", positive_every=2)], ignore_index=True)


@pytest.mark.parametrize("held_out, kept", [("other", "big"), ("big", "other")])
@pytest.mark.parametrize("seed", range(3))
def test_a_held_out_source_is_only_in_test_and_the_others_split_as_before(seed, held_out, kept):
    """Each source is shuffled from its own seed, so the sources trained on are split as in a
    run without the held-out one, whichever sorts first: their test figures compare."""
    df = two_sources()
    df["split"] = split_subjects(df, SplitConfig(0.15, 0.15, [held_out]), seed)
    assert set(df.loc[df.source == held_out, "split"]) == {"test"}
    for full in (df, df[df.source == kept]):
        without = split_subjects(full, SplitConfig(0.15, 0.15, []), seed)
        assert without[df.source == kept].equals(df.loc[df.source == kept, "split"])


def test_a_near_duplicate_group_touching_a_held_out_source_goes_to_test_whole():
    df = two_sources()
    linked = [("big0", "other3"), ("big1", "big2")]
    for seed in range(8):
        split = split_subjects(df, SplitConfig(0.15, 0.15, ["other"]), seed, linked)
        assert set(split[df.subject_id == "big0"]) == {"test"}, seed
        assert split[df.subject_id.isin(["big1", "big2"])].nunique() == 1


def test_with_no_test_share_the_held_out_source_is_the_test_split_alone():
    """data.split.test 0: test is the held-out source alone, a pure cross-source check."""
    df = two_sources()
    split = split_subjects(df, SplitConfig(0.15, 0.0, ["other"]), seed=0)
    assert split[df.source == "other"].eq("test").all() and not split[df.source == "big"].eq(
        "test").any()


@pytest.mark.parametrize("held_out, message", [
    (["nope"], r"^data.split.held_out_sources names 'nope', which is not a source in the data "
               r"\(sources: big, other\)$"),
    (["big", "other"], r"^data.split.held_out_sources holds out every source \(big, other\): "
                       r"none is left to train on$"),
])
def test_a_held_out_source_that_cannot_be_is_one_line(held_out, message):
    with pytest.raises(SplitError, match=message):
        split_subjects(two_sources(), SplitConfig(0.15, 0.15, held_out), seed=0)


def test_a_held_out_source_of_one_label_is_refused_as_a_test_split_of_one_label():
    df = two_sources()
    df.loc[df.source == "other", "label"] = "negative"
    with pytest.raises(SplitError, match="test: [0-9]+ negative, 0 positive$"):
        split_subjects(df, SplitConfig(0.15, 0.0, ["other"]), seed=0)


def noise_wav(seed: int) -> bytes:
    return wav_bytes(np.random.default_rng(seed).uniform(-0.5, 0.5, 8000).astype(np.float32),
                     16000)


def test_summary_records_the_held_out_sources(tmp_path):
    clips = {f"{source}/{i}.wav": noise_wav(k * 10 + i)
             for k, source in enumerate(["a", "b"]) for i in range(4)}
    combine(fetched(tmp_path / "fetched", clips), tmp_path / "out", 16000, QUALITY,
            SplitConfig(0.0, 0.0, ["b"]), seed=1)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["held_out_sources"] == ["b"]
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert manifest.groupby("source")["split"].unique().map(list).to_dict() == {
        "a": ["train"], "b": ["test"]}
