"""The embedded default dataset: synthetic, cough-like, labelled, and bit-exact reproducible.

`python -m coughlab.sample data` writes the labelled-recordings zone that `data.dvc` tracks, so a
fresh clone with no network and no AWS account can run the whole pipeline. Each subject has
its own voice (burst band, decay, loudness) and recording channel; "positive" subjects add a
faint wheeze (a harmonic tone) to their coughs, and some "negative" subjects carry a fainter
one too, so the task is learnable but not trivial. The channel (8 kHz phone line vs 44.1/48
kHz app) is independent of the label here, unlike in real data. Two deliberately broken clips
(one silent, one corrupt) show quarantine at work.
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
import soundfile as sf

from coughlab.atomic import atomic_dir

DEFAULT_SEED = 20201
DEFAULT_SUBJECTS = 48
CHANNEL_RATES = {"phone": [8000], "app": [44100, 48000]}
LABEL_COLUMNS = ["path", "label", "subject_id", "source", "channel"]


def cough(rng: np.random.Generator, sr: int, voice: dict, wheeze: float) -> np.ndarray:
    """One cough: band-limited noise burst with a fast attack, plus an optional harmonic wheeze."""
    n = int(sr * rng.uniform(0.25, 0.45))
    t = np.arange(n) / sr
    decay = voice["decay"] * rng.uniform(0.8, 1.2)
    envelope = ((t / 0.01) * np.exp(1 - t / 0.01) * (t < 0.01)
                + np.exp(-(t - 0.01) / decay) * (t >= 0.01))
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    centre = min(voice["centre_hz"] * rng.uniform(0.9, 1.1), 0.4 * sr)
    spectrum *= np.exp(-0.5 * ((freqs - centre) / voice["width_hz"]) ** 2)
    burst = np.fft.irfft(spectrum, n)
    burst /= np.abs(burst).max() + 1e-12
    tone = np.zeros(n)
    if wheeze > 0:
        f0 = voice["wheeze_hz"] * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))
        for k in (1, 2, 3):
            if k * voice["wheeze_hz"] < 0.45 * sr:
                tone += np.sin(2 * np.pi * k * np.cumsum(f0) / sr + rng.uniform(0, 2 * np.pi)) / k
        tone *= wheeze * np.exp(-t / (2.5 * decay))
    return envelope * burst + tone


def clip(rng: np.random.Generator, sr: int, voice: dict, wheeze: float) -> np.ndarray:
    """A recording of 1-3 coughs in background noise, peak-normalised to the subject's loudness."""
    wave = np.zeros(int(sr * rng.uniform(1.0, 3.5)))
    for _ in range(rng.integers(1, 4)):
        burst = cough(rng, sr, voice, wheeze * rng.uniform(0.7, 1.3))
        start = rng.integers(0, max(1, wave.size - burst.size))
        wave[start : start + burst.size] += burst[: wave.size - start]
    wave += rng.standard_normal(wave.size) * 10 ** (rng.uniform(-38, -26) / 20)
    return (wave / np.abs(wave).max() * voice["gain"]).astype(np.float32)


def subject(rng: np.random.Generator, index: int) -> dict:
    label = "positive" if index % 2 else "negative"
    channel = "phone" if rng.random() < 0.5 else "app"
    if label == "positive":
        wheeze = rng.uniform(0.12, 0.35)
    else:
        wheeze = rng.uniform(0.02, 0.08) if rng.random() < 0.3 else 0.0
    return {
        "id": f"S{index:03d}",
        "label": label,
        "channel": channel,
        "sr": int(rng.choice(CHANNEL_RATES[channel])),
        "stereo": channel == "app" and rng.random() < 0.3,
        "clips": int(rng.integers(4, 7)),
        "wheeze": wheeze,
        "voice": {
            "centre_hz": rng.uniform(400, 2200),
            "width_hz": rng.uniform(300, 1200),
            "decay": rng.uniform(0.04, 0.12),
            "wheeze_hz": rng.uniform(320, 700),
            "gain": rng.uniform(0.2, 0.9),
        },
    }


def wav_bytes(wave: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def generate(out: Path, n_subjects: int = DEFAULT_SUBJECTS, seed: int = DEFAULT_SEED) -> int:
    """Write clips and labels.csv under `out` (replaced atomically); return the clip count."""
    rng = np.random.default_rng(seed)
    rows = []
    with atomic_dir(out) as tmp:
        for index in range(n_subjects):
            subj = subject(rng, index)
            for k in range(subj["clips"]):
                wave = clip(rng, subj["sr"], subj["voice"], subj["wheeze"])
                if subj["stereo"]:
                    wave = np.stack([wave, 0.8 * wave], axis=1)
                rel = f"clips/{subj['id']}/{subj['id']}_{k}.wav"
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(wav_bytes(wave, subj["sr"]))
                rows.append([rel, subj["label"], subj["id"], "sample", subj["channel"]])
        # Deliberately broken recordings, as real crowd-sourced sets have: combine must
        # quarantine them with a reason instead of failing.
        broken = [("silent", wav_bytes(np.zeros(16000, np.float32), 16000)),
                  ("corrupt", b"RIFF" + rng.bytes(60))]
        for name, payload in broken:
            rel = f"clips/broken/{name}.wav"
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(payload)
            rows.append([rel, "negative", f"broken_{name}", "sample", "app"])
        with open(tmp / "labels.csv", "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(LABEL_COLUMNS)
            writer.writerows(rows)
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Generate the embedded synthetic cough dataset (bit-exact for a given seed).")
    parser.add_argument("out", type=Path, help="output directory, e.g. data")
    parser.add_argument("--subjects", type=int, default=DEFAULT_SUBJECTS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    count = generate(args.out, args.subjects, args.seed)
    print(f"wrote {count} clips and labels.csv to {args.out}/")


if __name__ == "__main__":
    main()
