"""Featurize throughput: coughlab's batched torchaudio path vs a per-clip librosa baseline.

Both paths turn the same audio files into the same features (one centre-cropped 3 s log-mel
window at 16 kHz, n_fft/hop/n_mels/f_min/f_max from params.yaml) in the same process, run
alternately, so a busy shared CPU slows both alike and the ratio stays meaningful.

- coughlab: coughlab.audio.load_audio -> to_mono -> resample (soxr) per clip, then the centre
  crop/pad and coughlab.features.LogMel on batches (featurize's transform);
- librosa:  librosa.load(sr=16000) (decode + soxr resample) -> the same centre crop/pad ->
  librosa.feature.melspectrogram -> log, one clip at a time.

Reads the real covid19-cough dev clips when present, else the embedded sample in data/
(`python -m coughlab.sample data`); exits 0 with a message when neither is there.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from coughlab.atomic import atomic_write_text
from coughlab.audio import load_audio, resample, to_mono
from coughlab.config import AudioConfig, load_params
from coughlab.features import LogMel, clip_samples

from machine import load_average, machine_info, repo_relative

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata" / "dev"
SAMPLE = REPO / "data"
RESULT = REPO / "benchmarks" / "results" / "featurize_throughput.json"


def clip_paths(data_dir: Path, limit: int | None) -> list[Path]:
    labels = pd.read_csv(data_dir / "labels.csv", dtype=str, keep_default_na=False)
    paths = [data_dir / p for p in labels["path"]]
    return paths[:limit] if limit else paths


def pick_dataset(realdata: Path, sample: Path) -> Path | None:
    """The real dev set when present, else the embedded sample, else None."""
    for folder in (realdata, sample):
        if (folder / "labels.csv").is_file():
            return folder
    return None


def centre_window(wave: np.ndarray, length: int) -> np.ndarray:
    """The centred `length` samples, zero-padded when shorter (featurize's one-window crop)."""
    padded = np.pad(wave, (length, length))
    start = length + (wave.size - length) // 2
    return padded[start : start + length]


@torch.inference_mode()
def run_coughlab(paths: list[Path], cfg: AudioConfig, batch: int) -> tuple[dict, np.ndarray]:
    """Decode, resample and featurize `paths`; returns seconds per phase and the features."""
    logmel, length = LogMel(cfg).eval(), clip_samples(cfg)
    times = {"decode_s": 0.0, "resample_s": 0.0, "featurize_s": 0.0}
    chunks, skipped = [], 0
    for start in range(0, len(paths), batch):
        windows = []
        for path in paths[start : start + batch]:
            t0 = time.perf_counter()
            try:
                wave, sr = load_audio(path)
            except ValueError:
                skipped += 1
                continue
            mono = to_mono(wave)
            t1 = time.perf_counter()
            mono = resample(mono, sr, cfg.sample_rate)
            t2 = time.perf_counter()
            windows.append(torch.from_numpy(centre_window(mono, length)))
            times["decode_s"] += t1 - t0
            times["resample_s"] += t2 - t1
            times["featurize_s"] += time.perf_counter() - t2
        t3 = time.perf_counter()
        if windows:
            chunks.append(logmel(torch.stack(windows)).numpy())
        times["featurize_s"] += time.perf_counter() - t3
    times["skipped"] = skipped
    return times, np.concatenate(chunks) if chunks else np.zeros(0)


def librosa_logmel(wave: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """librosa's mel with torchaudio's conventions (HTK scale, no norm, reflect padding)."""
    import librosa

    mel = librosa.feature.melspectrogram(
        y=wave, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max, power=2.0, htk=True, norm=None,
        pad_mode="reflect")
    return np.log(mel + 1e-6)[None]


def run_librosa(paths: list[Path], cfg: AudioConfig) -> dict:
    """The per-clip baseline; returns seconds per phase (decode includes librosa's resample)."""
    import librosa

    length = int(round(cfg.clip_seconds * cfg.sample_rate))
    times = {"decode_s": 0.0, "resample_s": 0.0, "featurize_s": 0.0}
    skipped = 0
    for path in paths:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():  # its audioread fallback warns on every broken file
                warnings.simplefilter("ignore")
                wave, _ = librosa.load(path, sr=cfg.sample_rate, mono=True)
        except Exception:  # noqa: BLE001 - librosa raises many types for a broken file
            skipped += 1
            continue
        t1 = time.perf_counter()
        librosa_logmel(centre_window(wave, length), cfg)
        times["decode_s"] += t1 - t0
        times["featurize_s"] += time.perf_counter() - t1
    times["skipped"] = skipped
    return times


def feature_agreement(paths: list[Path], cfg: AudioConfig) -> float:
    """Largest |log-mel difference| between the two featurizers on identical 16 kHz windows.

    Shows the baseline computes the same features (the resamplers differ, so this feeds both
    the same resampled wave).
    """
    _, ours = run_coughlab(paths, cfg, batch=len(paths))
    length = int(round(cfg.clip_seconds * cfg.sample_rate))
    theirs = []
    for path in paths:
        try:
            wave, sr = load_audio(path)
        except ValueError:
            continue
        mono = resample(to_mono(wave), sr, cfg.sample_rate)
        theirs.append(librosa_logmel(centre_window(mono, length), cfg))
    return float(np.abs(ours - np.stack(theirs)).max())


def summarize(runs: list[dict], n_clips: int) -> dict:
    totals = [r["decode_s"] + r["resample_s"] + r["featurize_s"] for r in runs]
    best = min(range(len(runs)), key=totals.__getitem__)
    median_total = statistics.median(totals)
    return {
        "clips_featurized": n_clips,
        "clips_per_s_median": n_clips / median_total,
        "clips_per_s_best": n_clips / totals[best],
        "seconds_median": median_total,
        "best_run": runs[best],
        "runs": runs,
    }


def phase_speedups(ours: dict, baseline: dict) -> dict:
    """Baseline time / our time per phase (librosa's decode includes its resample)."""
    return {
        "speedup_decode_resample": (baseline["decode_s"] + baseline["resample_s"])
        / (ours["decode_s"] + ours["resample_s"]),
        "speedup_featurize": baseline["featurize_s"] / ours["featurize_s"],
    }


def print_table(result: dict) -> None:
    rows = result["paths"]
    print(f"\n{result['n_clips']} clips from {result['dataset']}, {result['repeats']} "
          f"alternating repeats, torch threads {result['torch_threads']}, "
          f"load average {result['load_average_before']:.2f}")
    print(f"{'path':<10}{'clips/s (median)':>18}{'clips/s (best)':>16}"
          f"{'decode s':>10}{'resample s':>12}{'featurize s':>13}")
    for name, r in rows.items():
        b = r["best_run"]
        print(f"{name:<10}{r['clips_per_s_median']:>18.1f}{r['clips_per_s_best']:>16.1f}"
              f"{b['decode_s']:>10.2f}{b['resample_s']:>12.2f}{b['featurize_s']:>13.2f}")
    print(f"speed-up coughlab / librosa: {result['speedup_median']:.2f}x (median), "
          f"{result['speedup_best']:.2f}x (best); decode+resample only "
          f"{result['speedup_decode_resample']:.2f}x, featurize only "
          f"{result['speedup_featurize']:.2f}x (best runs)")
    print(f"max |log-mel difference| on identical input: {result['max_abs_logmel_diff']:.2e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Prints a table and writes the figures as JSON. The speed-up is the ratio of "
        "the two paths measured in the same run.")
    parser.add_argument("--data", type=Path, default=REALDATA,
                        help="folder with labels.csv and clips (default: %(default)s); falls "
                        f"back to {SAMPLE} when absent")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N clips")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed repeats")
    parser.add_argument("--batch", type=int, default=64, help="coughlab featurizer batch size")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULT, help="JSON result file")
    args = parser.parse_args(argv)

    dataset = pick_dataset(args.data, SAMPLE)
    if dataset is None:
        print(f"skipped: neither {args.data} nor {SAMPLE} has a labels.csv "
              "(run `python -m coughlab.sample data` for the embedded sample)")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_params(REPO / "params.yaml").audio
    paths = clip_paths(dataset, args.limit)
    warm = paths[:8]  # first calls pay one-off import and kernel costs; keep them out
    run_coughlab(warm, cfg, args.batch)
    run_librosa(warm, cfg)

    load_before = load_average()
    runs: dict[str, list[dict]] = {"coughlab": [], "librosa": []}
    for i in range(args.repeats):
        print(f"repeat {i + 1}/{args.repeats} ...", file=sys.stderr)
        runs["coughlab"].append(run_coughlab(paths, cfg, args.batch)[0])
        runs["librosa"].append(run_librosa(paths, cfg))
    summary = {name: summarize(r, len(paths) - r[0]["skipped"]) for name, r in runs.items()}
    result = {
        "benchmark": "featurize_throughput",
        "dataset": repo_relative(dataset),
        "n_clips": len(paths),
        "repeats": args.repeats,
        "batch": args.batch,
        "audio": vars(cfg),
        "torch_threads": torch.get_num_threads(),
        **machine_info(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "paths": summary,
        "speedup_median": summary["coughlab"]["clips_per_s_median"]
        / summary["librosa"]["clips_per_s_median"],
        "speedup_best": summary["coughlab"]["clips_per_s_best"]
        / summary["librosa"]["clips_per_s_best"],
        **phase_speedups(summary["coughlab"]["best_run"], summary["librosa"]["best_run"]),
        "max_abs_logmel_diff": feature_agreement(paths[:16], cfg),
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
