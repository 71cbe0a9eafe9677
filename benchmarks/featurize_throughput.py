"""Featurize throughput: coughlab's featurize stage vs a per-clip librosa baseline.

Both paths turn the same audio files into the same features, run alternately in one process
and on one thread each (featurize's torch is pinned to one; librosa's numpy/BLAS is held to one,
as a busy machine would otherwise starve its second thread: 3x slower at load 2 on 2 cores), so
a busy shared CPU slows both alike and the ratio stays meaningful: `audio.windows` log-mel
windows of 3 s at 16 kHz per clip over its centred `audio.max_seconds` (n_fft/hop/n_mels/f_min/
f_max from params.yaml; `--windows 1` for one centred window), each window's frames from one
transform of the frames from the first window's first to the last window's last.

- coughlab: coughlab.audio.load_audio -> to_mono -> resample (soxr) per clip, then
  coughlab.features.WindowedFeaturizer one clip at a time with featurize's pinned CPU kernels
  (featurize_waves' loop);
- librosa:  librosa.load(sr=16000) (decode + soxr resample) -> the same frames ->
  librosa.feature.melspectrogram(center=False) -> log -> the same windows, one clip at a time.

Reads the real covid19-cough dev clips when present, else the embedded sample in data/
(`python -m coughlab.sample data`); exits 0 with a message when neither is there.
"""
from __future__ import annotations

from coughlab.determinism import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads, as in the featurize stage

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from coughlab.atomic import atomic_write_text  # noqa: E402
from coughlab.audio import load_audio, resample, to_mono  # noqa: E402
from coughlab.config import AudioConfig, load_params  # noqa: E402
from coughlab.determinism import reproducible_cpu_kernels  # noqa: E402
from coughlab.features import WindowedFeaturizer, clip_samples, window_frame_count, window_frames  # noqa: E402

from machine import load_average, machine_info, repo_relative  # noqa: E402

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


@torch.inference_mode()
def run_coughlab(paths: list[Path], cfg: AudioConfig) -> tuple[dict, list[np.ndarray]]:
    """Decode, resample and featurize `paths`; returns seconds per phase and the features."""
    featurizer = WindowedFeaturizer(cfg).eval()
    times = {"decode_s": 0.0, "resample_s": 0.0, "featurize_s": 0.0, "skipped": 0}
    features = []
    with reproducible_cpu_kernels():
        for path in paths:
            t0 = time.perf_counter()
            try:
                wave, sr = load_audio(path)
            except ValueError:
                times["skipped"] += 1
                continue
            mono = to_mono(wave)
            t1 = time.perf_counter()
            mono = resample(mono, sr, cfg.sample_rate)
            t2 = time.perf_counter()
            features.append(featurizer(torch.from_numpy(mono)[None])[0].numpy())
            times["decode_s"] += t1 - t0
            times["resample_s"] += t2 - t1
            times["featurize_s"] += time.perf_counter() - t2
    return times, features


def librosa_windows(wave: np.ndarray, cfg: AudioConfig) -> np.ndarray:
    """The featurizer's windows by librosa (torchaudio's conventions: HTK mel scale, no norm):
    one melspectrogram of the frames the windows span, zeros outside the clip."""
    import librosa

    wave = wave[max(wave.size - round(cfg.max_seconds * cfg.sample_rate), 0) // 2:]
    wave = wave[: round(cfg.max_seconds * cfg.sample_rate)]
    firsts = window_frames(wave.size, clip_samples(cfg), cfg.windows, cfg.hop_length)
    count = window_frame_count(cfg)
    margin = (count + 1) * cfg.hop_length + cfg.n_fft
    padded = np.pad(wave, (margin, margin))
    start = margin + min(firsts) * cfg.hop_length - cfg.n_fft // 2
    span = padded[start : start + (max(firsts) - min(firsts) + count - 1) * cfg.hop_length
                  + cfg.n_fft]
    mel = librosa.feature.melspectrogram(
        y=span, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max, power=2.0, htk=True, norm=None,
        center=False)
    logmel = np.log(mel + 1e-6)
    return np.stack([logmel[None, :, f - min(firsts) : f - min(firsts) + count]
                     for f in firsts])


def run_librosa(paths: list[Path], cfg: AudioConfig) -> dict:
    """The per-clip baseline; returns seconds per phase (decode includes librosa's resample)."""
    import librosa

    times = {"decode_s": 0.0, "resample_s": 0.0, "featurize_s": 0.0, "skipped": 0}
    for path in paths:
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():  # its audioread fallback warns on every broken file
                warnings.simplefilter("ignore")
                wave, _ = librosa.load(path, sr=cfg.sample_rate, mono=True)
        except Exception:  # noqa: BLE001 - librosa raises many types for a broken file
            times["skipped"] += 1
            continue
        t1 = time.perf_counter()
        librosa_windows(wave, cfg)
        times["decode_s"] += t1 - t0
        times["featurize_s"] += time.perf_counter() - t1
    return times


def feature_agreement(paths: list[Path], cfg: AudioConfig) -> float:
    """Largest |log-mel difference| between the two featurizers on identical 16 kHz clips.

    Shows the baseline computes the same features (the resamplers differ, so this feeds both
    the same resampled wave).
    """
    _, ours = run_coughlab(paths, cfg)
    theirs = []
    for path in paths:
        try:
            wave, sr = load_audio(path)
        except ValueError:
            continue
        theirs.append(librosa_windows(resample(to_mono(wave), sr, cfg.sample_rate), cfg))
    return max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs))


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
    print(f"\n{result['n_clips']} clips from {result['dataset']}, {result['audio']['windows']} "
          f"window(s) each, {result['repeats']} alternating repeats, one thread each (torch "
          f"pinned, as featurize), load average {result['load_average_before']:.2f}")
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
    parser.add_argument("--windows", type=int, default=None,
                        help="windows per clip (default: audio.windows of params.yaml)")
    parser.add_argument("--out", type=Path, default=RESULT, help="JSON result file")
    args = parser.parse_args(argv)

    dataset = pick_dataset(args.data, SAMPLE)
    if dataset is None:
        print(f"skipped: neither {args.data} nor {SAMPLE} has a labels.csv "
              "(run `python -m coughlab.sample data` for the embedded sample)")
        return 0
    cfg = load_params(REPO / "params.yaml").audio
    if args.windows:
        cfg = dataclasses.replace(cfg, windows=args.windows)
    paths = clip_paths(dataset, args.limit)
    warm = paths[:8]  # first calls pay one-off import and kernel costs; keep them out
    run_coughlab(warm, cfg)
    run_librosa(warm, cfg)

    load_before = load_average()
    runs: dict[str, list[dict]] = {"coughlab": [], "librosa": []}
    with threadpool_limits(1):
        for i in range(args.repeats):
            print(f"repeat {i + 1}/{args.repeats} ...", file=sys.stderr)
            runs["coughlab"].append(run_coughlab(paths, cfg)[0])
            runs["librosa"].append(run_librosa(paths, cfg))
    summary = {name: summarize(r, len(paths) - r[0]["skipped"]) for name, r in runs.items()}
    result = {
        "benchmark": "featurize_throughput",
        "dataset": repo_relative(dataset),
        "n_clips": len(paths),
        "repeats": args.repeats,
        "audio": dataclasses.asdict(cfg),
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
