"""Near-duplicate recordings: re-sent copies of real dev clips group, different coughs do not."""
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from coughlab import duplicates
from coughlab.audio import load_audio, resample, to_mono
from coughlab.config import SplitConfig
from coughlab.stages.combine import combine

from helpers import conf

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "dev"
needs_realdata = pytest.mark.skipif(not (REALDATA / "near_duplicates.csv").exists(),
                                    reason="no ../shared/realdata/dev")


def decoded(path: Path) -> tuple[np.ndarray, int]:
    wave, sr = load_audio(path)
    return to_mono(wave), sr


def encoded(wave: np.ndarray, sr: int, fmt: str, subtype: str) -> tuple[np.ndarray, int]:
    """`wave` through a lossy (or lossless) file round trip, as a re-send would do to it."""
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt, subtype=subtype)
    buf.seek(0)
    out, out_sr = sf.read(buf, dtype="float32")
    return out, out_sr


def linked(clips: list[tuple[np.ndarray, int]]) -> set[tuple[int, int]]:
    """The clip pairs find_near_duplicates confirms, clips given at any rate."""
    waves = [duplicates.to_rate(resample(w, sr, 16000), 16000) for w, sr in clips]
    return {(p.i, p.j) for p in duplicates.find_near_duplicates(len(waves), waves.__getitem__)}


def dev_clip(channel: str, min_seconds: float, nth: int = 0) -> Path:
    labels = pd.read_csv(REALDATA / "labels.csv")
    rows = labels[(labels["channel"] == channel) & (labels["duration_s"] >= min_seconds)]
    return REALDATA / rows["path"].iloc[nth]


@needs_realdata
@pytest.mark.parametrize("channel", ["telegram", "call-center"])
def test_resent_copies_of_a_real_clip_group_with_it(channel):
    wave, sr = decoded(dev_clip(channel, 2.0))
    trim_a, trim_b = int(0.15 * sr), int(0.1 * sr)
    copies = [
        (wave[trim_a:-trim_b], sr),                                   # re-trimmed
        (0.2 * wave, sr),                                             # quieter
        encoded(wave, sr, "MP3", "MPEG_LAYER_III"),                   # re-encoded, lossy
        encoded(wave, sr, "OGG", "VORBIS"),
        encoded(0.5 * wave[trim_b:], sr, "OGG", "VORBIS"),            # all three at once
        (resample(wave, sr, 22050), 22050),                           # another rate
    ]
    pairs = linked([(wave, sr), *copies])
    assert {(0, k) for k in range(1, len(copies) + 1)} <= pairs


@needs_realdata
@pytest.mark.parametrize("channel", ["telegram", "call-center"])
def test_clips_that_merely_sound_alike_stay_apart(channel):
    labels = pd.read_csv(REALDATA / "labels.csv")
    known = pd.read_csv(REALDATA / "near_duplicates.csv")
    resent = set(known["path_a"]) | set(known["path_b"])
    long = dev_clip(channel, 8.0)
    others = labels[(labels["channel"] == channel) & ~labels["path"].isin(resent)
                    & (labels["path"] != long.relative_to(REALDATA).as_posix())]
    clips = [decoded(REALDATA / p) for p in others["path"].iloc[:40]]
    # Two different coughs of one person on one line: the two halves of one long recording.
    wave, sr = decoded(long)
    half = wave.size // 2
    clips += [(wave[:half], sr), (wave[half:], sr)]
    assert linked(clips) == set()


@needs_realdata
def test_the_known_resent_pairs_of_the_dev_set_are_all_found():
    known = pd.read_csv(REALDATA / "near_duplicates.csv")
    paths = sorted(set(known["path_a"]) | set(known["path_b"]))
    index = {p: k for k, p in enumerate(paths)}
    pairs = linked([decoded(REALDATA / p) for p in paths])
    assert pairs == {tuple(sorted((index[a], index[b])))
                     for a, b in zip(known["path_a"], known["path_b"])}


def burst(seed: int, seconds: float = 1.5, sr: int = 16000) -> np.ndarray:
    """A cough-like noise burst: shaped noise with a fast attack and a decay, then silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    envelope = np.exp(-((t - 0.4) / 0.12) ** 2) + 0.6 * np.exp(-((t - 0.9) / 0.1) ** 2)
    noise = np.convolve(rng.normal(size=t.size), rng.normal(size=32), mode="same")
    wave = noise * envelope
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


def write_fetched(root: Path, clips: dict[str, tuple[np.ndarray, str, str]]) -> Path:
    """build/fetched with {path: (wave, subject, label)}; .ogg paths are Vorbis-encoded."""
    rows = []
    for rel, (wave, subject, label) in clips.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".ogg"):
            sf.write(root / rel, wave, 16000, format="OGG", subtype="VORBIS")
        else:
            sf.write(root / rel, wave, 16000, subtype="FLOAT")
        rows.append({"path": rel, "label": label, "subject_id": subject,
                     "source": rel.split("/")[0]})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_combine_puts_resent_recordings_in_one_split_and_reports_the_group(tmp_path, seed):
    original = burst(0)
    clips = {f"a/s{k}.wav": (burst(100 + k), f"s{k}", "negative" if k % 2 else "positive")
             for k in range(24)}
    clips["a/orig.wav"] = (original, "first", "negative")
    clips["b/resent.ogg"] = (0.3 * original[800:-400], "second", "negative")  # other source, too
    src = write_fetched(tmp_path / "fetched", clips)
    summary = combine(src, tmp_path / "out", 16000, conf().data.quality,
                      SplitConfig(0.3, 0.3, []), seed)
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    split = dict(zip(manifest["subject_id"], manifest["split"]))
    assert split["first"] == split["second"]
    groups = summary["near_duplicates"]["groups"]
    assert [g["subjects"] for g in groups] == [["first", "second"]]
    assert groups[0]["paths"] == ["a/orig.wav", "b/resent.ogg.wav"]
    assert groups[0]["min_xcorr"] >= duplicates.XCORR_THRESHOLD
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary


def test_short_silent_and_empty_fingerprints_do_not_break_pairing():
    prints = [duplicates.fingerprint(np.zeros(10)), duplicates.fingerprint(np.zeros(0)),
              duplicates.fingerprint(duplicates.to_rate(burst(5), 16000))]
    assert duplicates.candidate_pairs(prints) == {}
    assert duplicates.candidate_pairs([]) == {}
