"""Real-data quality: which modelling option hears coughs rather than phone lines.

On ../shared/realdata/dev (888 real covid19-cough clips: call-center 8 kHz stereo, mostly
positive; telegram 48 kHz mono, mostly negative) every option is scored by subject-grouped,
channel x label stratified 5-fold cross-validation: each clip is scored once, by a model that
never saw its subject. Each fold trains with the pipeline's own code (combine's decode, quality
gate and resampler, featurize's windows, train_model) on the other folds, of which 15 % of
subjects are held out as the valid split that picks the threshold, as evaluate does.

Two phases, so the expensive one runs once:
  run     trains every option x seed x fold; writes out-of-fold predictions to
          benchmarks/results/realdata_oof/<option>-seed<seed>.csv (git-ignored: they carry
          the dev set's labels, which stay outside the repository)
  report  reads them and writes benchmarks/results/realdata_quality.json and a table:
          within-channel ROC-AUC, per-channel AUCs with subject-bootstrap CIs, channel
          leakage per label, the metadata-only baseline and the threshold's sd across seeds.

Exits 0 with a message when the data folder is absent.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from coughlab.determinism import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads, as the train stage does: folds train bit-identically

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from coughlab import LABELS
from coughlab.audio import AudioDecodeError, load_audio, quality_problem, resample, to_mono
from coughlab.atomic import atomic_write_text
from coughlab.config import compose, params_from
from coughlab.metrics import (channel_auc, choose_threshold, metadata_baseline_scores, roc_auc,
                              with_ci, within_channel_auc, within_channel_margin,
                              youden_threshold)
from coughlab.model import load_model, predict_proba, train_model
from coughlab.stages.featurize import featurize_waves
from machine import machine_info, repo_relative

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata" / "dev"
RESULTS = REPO / "benchmarks" / "results"
OOF_DIR = RESULTS / "realdata_oof"
TELEPHONE = ["audio.sample_rate=8000", "audio.n_fft=512", "audio.hop_length=128",
             "audio.n_mels=40", "audio.f_min=300", "audio.f_max=3400",
             "audio.band_mean_norm=true"]
# Each option is a set of Hydra overrides on conf/, exactly as `dvc exp run -S` would take them,
# spelt out in full so that changing conf/'s defaults never changes what an option means.
BALANCED, CLASS_WEIGHTED = ["train.balance=channel_label"], ["train.balance=label"]
OPTIONS = {
    "baseline": CLASS_WEIGHTED,
    "telephone": TELEPHONE + CLASS_WEIGHTED,
    "balanced": BALANCED,
    "telephone+balanced": TELEPHONE + BALANCED,
}
FOLDS = 5
VALID_FRACTION = 0.15
BOOTSTRAP = 1000
# The bar for a model that hears coughs: within each channel, and leakage per label.
TARGETS = {"call-center": 0.75, "telegram": 0.70, "leakage": 0.65}


def load_clips(data_dir: Path, quality) -> pd.DataFrame:
    """Decode and quality-gate every clip as combine does; one row per kept clip, with `wave`."""
    labels = pd.read_csv(data_dir / "labels.csv", dtype=str, keep_default_na=False)
    rows = []
    for row in labels.to_dict("records"):
        try:
            wave, sr = load_audio(data_dir / row["path"])
        except AudioDecodeError:
            continue
        mono = to_mono(wave)
        if quality_problem(mono, sr, quality) is None:
            rows.append({**row, "orig_sr": sr, "orig_channels": wave.shape[0], "wave": mono})
    return pd.DataFrame(rows)


def folds(clips: pd.DataFrame, seed: int) -> np.ndarray:
    """Fold number per clip: subject-grouped, stratified by channel x label."""
    strata = clips["channel"] + "/" + clips["label"]
    fold = np.empty(len(clips), dtype=int)
    splitter = StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(clips, strata, clips["subject_id"])):
        fold[test] = k
    return fold


def hold_out_valid(clips: pd.DataFrame, seed: int) -> np.ndarray:
    """True for the ~15 % of subjects (stratified like the folds) that form the valid split."""
    strata = clips["channel"] + "/" + clips["label"]
    splitter = StratifiedGroupKFold(n_splits=round(1 / VALID_FRACTION), shuffle=True,
                                    random_state=seed)
    _, valid = next(splitter.split(clips, strata, clips["subject_id"]))
    mask = np.zeros(len(clips), dtype=bool)
    mask[valid] = True
    return mask


def write_split(path: Path, x: np.ndarray, clips: pd.DataFrame) -> None:
    np.savez(path, x=x, y=clips["label"].map(LABELS.index).to_numpy(np.int8),
             path=clips["path"].to_numpy(str), channel=clips["channel"].to_numpy(str))


def run_option(clips: pd.DataFrame, overrides: list[str], seed: int) -> pd.DataFrame:
    """Out-of-fold P(positive) for every clip, plus each fold's valid-split predictions."""
    params = params_from(compose(REPO / "conf", overrides + [f"seed={seed}"]))
    audio = params.audio
    waves = [resample(w, sr, audio.sample_rate) for w, sr in zip(clips["wave"], clips["orig_sr"])]
    x = featurize_waves(waves, audio, desc=f"featurize {audio.sample_rate} Hz")
    fold = folds(clips, seed)
    scored = []
    for k in range(FOLDS):
        start = time.perf_counter()
        test = fold == k
        rest = clips[~test].reset_index(drop=True)
        valid = hold_out_valid(rest, seed)
        x_rest = x[~test]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            write_split(tmp / "train.npz", x_rest[~valid], rest[~valid])
            write_split(tmp / "valid.npz", x_rest[valid], rest[valid])
            train_model(params, tmp, tmp / "model", tmp / "checkpoints")
            net, _ = load_model(tmp / "model" / "model.pt")
        for part, mask_x, frame in (("test", x[test], clips[test]),
                                    ("valid", x_rest[valid], rest[valid])):
            scored.append(frame.drop(columns="wave").assign(
                fold=k, part=part, seed=seed, p=predict_proba(net, mask_x)))
        print(f"seed {seed} fold {k}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return pd.concat(scored, ignore_index=True)


def run(options: list[str], seeds: list[int]) -> None:
    params = params_from(compose(REPO / "conf"))
    clips = load_clips(REALDATA, params.data.quality)
    print(f"{len(clips)} clips decoded", file=sys.stderr)
    OOF_DIR.mkdir(parents=True, exist_ok=True)
    for name in options:
        for seed in seeds:
            out = OOF_DIR / f"{name}-seed{seed}.csv"
            if out.exists():
                print(f"{out.name}: done already", file=sys.stderr)
                continue
            frame = run_option(clips, OPTIONS[name], seed)
            tmp = out.with_suffix(".tmp")
            frame.to_csv(tmp, index=False)
            tmp.replace(out)


def fold_baseline(oof: pd.DataFrame) -> pd.Series:
    """Out-of-fold metadata-only scores: for each fold, fit on the other folds' clips."""
    test = oof[oof["part"] == "test"]
    scores = []
    for k in sorted(test["fold"].unique()):
        manifest = test.assign(split=np.where(test["fold"] == k, "test", "train"))
        scores.append(metadata_baseline_scores(manifest)[test["fold"] == k])
    return pd.concat(scores).reindex(test.index)


def seed_figures(oof: pd.DataFrame) -> dict:
    """Every figure for one option x seed, each AUC with its subject-bootstrap 95 % CI."""
    test = oof[oof["part"] == "test"].assign(y=lambda f: (f["label"] == LABELS[1]).astype(int))
    test = test.assign(baseline=fold_baseline(oof))
    figures = {"within_channel": with_ci(test, within_channel_auc, BOOTSTRAP),
               "overall": with_ci(test, roc_auc, BOOTSTRAP),
               "baseline_within_channel": with_ci(test.assign(p=test["baseline"]),
                                                  within_channel_auc, BOOTSTRAP),
               "baseline_overall": with_ci(test.assign(p=test["baseline"]), roc_auc, BOOTSTRAP),
               "margin": with_ci(test, within_channel_margin, BOOTSTRAP)}
    for channel, frame in test.groupby("channel"):
        figures[channel] = with_ci(frame, roc_auc, BOOTSTRAP)
    for k, label in enumerate(LABELS):
        figures[f"leakage_{label}"] = with_ci(test[test["y"] == k], channel_auc, BOOTSTRAP)
    valid = oof[oof["part"] == "valid"].assign(y=lambda f: (f["label"] == LABELS[1]).astype(int))
    figures["thresholds"] = [{"fold": int(k), **thresholds(v)} for k, v in valid.groupby("fold")]
    figures["pooled_threshold"] = thresholds(valid)
    return figures


def thresholds(valid: pd.DataFrame) -> dict[str, float]:
    """The pipeline's rule (Platt-calibrated, balanced prior) and Youden's J, on valid clips."""
    return {"calibrated": choose_threshold(valid["y"], valid["p"]),
            "youden": youden_threshold(valid["y"].to_numpy(), valid["p"].to_numpy())}


def summarize(runs: list[dict]) -> dict:
    """Mean and sd over seeds of each AUC, the mean CI bounds, and the thresholds' sd."""
    out = {}
    for name in runs[0]:
        if name in ("thresholds", "pooled_threshold"):
            continue
        values = [r[name]["roc_auc"] for r in runs if r[name]["roc_auc"] is not None]
        out[name] = {"mean": statistics.mean(values),
                     "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                     "ci_low": statistics.mean(r[name]["roc_auc_ci_low"] for r in runs),
                     "ci_high": statistics.mean(r[name]["roc_auc_ci_high"] for r in runs)}
    for rule in ("calibrated", "youden"):
        # Each fold's model with its own valid split, as the pipeline sets one per model ...
        values = [t[rule] for r in runs for t in r["thresholds"]]
        out[f"threshold_{rule}"] = {"mean": statistics.mean(values),
                                    "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
        # ... and one per seed, from the valid clips of all its folds pooled.
        values = [r["pooled_threshold"][rule] for r in runs]
        out[f"pooled_threshold_{rule}"] = {"mean": statistics.mean(values),
                                           "sd": statistics.stdev(values) if len(values) > 1 else 0.0}
    return out


def meets_targets(summary: dict) -> dict[str, bool]:
    return {"call-center": summary["call-center"]["mean"] >= TARGETS["call-center"],
            "telegram": summary["telegram"]["mean"] >= TARGETS["telegram"],
            "leakage": all(summary[f"leakage_{label}"]["mean"] <= TARGETS["leakage"]
                           for label in LABELS)}


def table(results: dict) -> str:
    def cell(f: dict) -> str:
        return f"{f['mean']:.3f} ± {f['sd']:.3f} [{f['ci_low']:.2f}, {f['ci_high']:.2f}]"

    columns = ["within_channel", "call-center", "telegram", "overall", "leakage_negative",
               "leakage_positive", "baseline_within_channel", "baseline_overall", "margin"]
    lines = ["| option | " + " | ".join(columns) + " | threshold sd per model, per seed "
             "(calibrated / Youden) |",
             "|---" * (len(columns) + 2) + "|"]
    for name, result in results.items():
        s = result["summary"]
        lines.append(f"| {name} | " + " | ".join(cell(s[c]) for c in columns) +
                     f" | {s['threshold_calibrated']['sd']:.3f} / {s['threshold_youden']['sd']:.3f}, "
                     f"{s['pooled_threshold_calibrated']['sd']:.3f} / "
                     f"{s['pooled_threshold_youden']['sd']:.3f} |")
    return "\n".join(lines)


def report(options: list[str], seeds: list[int]) -> None:
    results = {}
    for name in options:
        files = [OOF_DIR / f"{name}-seed{seed}.csv" for seed in seeds]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            print(f"{name}: no predictions for {missing}; run `run` first", file=sys.stderr)
            continue
        runs = [seed_figures(pd.read_csv(f, dtype={"subject_id": str})) for f in files]
        summary = summarize(runs)
        results[name] = {"overrides": OPTIONS[name], "seeds": seeds, "summary": summary,
                         "meets_targets": meets_targets(summary), "per_seed": runs}
    payload = {"benchmark": "realdata_quality", "dataset": repo_relative(REALDATA),
               "protocol": f"{FOLDS}-fold cross-validation, subject-grouped, stratified by "
                           "channel x label; valid = 15 % of the training folds' subjects",
               "bootstrap": {"resamples": BOOTSTRAP, "unit": "subject"}, "targets": TARGETS,
               "options": results, "machine": machine_info()}
    atomic_write_text(RESULTS / "realdata_quality.json", json.dumps(payload, indent=2) + "\n")
    print(table(results))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("phase", choices=["run", "report"])
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    args = parser.parse_args(argv)
    if not (REALDATA / "labels.csv").exists():
        print(f"no real data at {REALDATA}; nothing to benchmark")
        return
    if args.phase == "run":
        run(args.options, args.seeds)
    else:
        report(args.options, args.seeds)


if __name__ == "__main__":
    main()
