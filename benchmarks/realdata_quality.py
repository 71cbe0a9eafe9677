"""Real-data quality: which option hears coughs, not phone lines; does it carry to a new source?

Two real sources: ../shared/realdata/dev (888 covid19-cough clips: call-center 8 kHz stereo,
mostly positive; telegram 48 kHz mono, mostly negative) and ../shared/realdata/dev-coswara
(366 Coswara clips recorded on participants' own devices, channel web). Three designs
(`--design`), every clip of their sources scored once, by a model that never saw its subject:
  cv        covid19-cough alone, 5-fold cross-validation (rounds 1 and 2)
  transfer  leave one source out: train on one source, score every clip of the other; both
            directions
  joint     both sources in one 5-fold cross-validation, figures per source
Folds are grouped by subject as combine groups them (re-sent recordings, the same audio under
two ids, coughlab.duplicates, count as one subject, across sources) and stratified by source x
channel x label; training batches are balanced over source x channel x label. Each model
trains with the pipeline's own code (combine's decode, quality gate and resampler, featurize's
windows, train_model), 15 % of its training subjects held out as the valid split that picks
the threshold, as evaluate does.

The folds and valid splits are fixed (CV_SEED); the seed changes only the model's
initialisation, batch order and augmentation. So the sd over seeds is that of the shipped
model for one data set, and averaging K seeds' predictions per clip is exactly what a K-seed
ensemble trained on the same folds would predict (each member's P(positive), meaned): `report`
scores ensembles from the single-seed runs without training them again.

Two phases, so the expensive one runs once:
  run     trains every option x seed x model of the design; writes the predictions to
          benchmarks/results/realdata_oof/<design>/<option>-seed<seed>.csv (git-ignored: they
          carry the dev sets' labels, which stay outside the repository)
  report  cv: writes benchmarks/results/realdata_quality.json and a table: within-channel
          ROC-AUC, per-channel AUCs with subject-bootstrap CIs, channel leakage per label, the
          metadata-only baseline and the threshold's sd across seeds; `option xK` for every
          ensemble size K the seeds allow, over every K-seed set.
          transfer, joint: writes the design's entry of benchmarks/results/realdata_sources.json
          and a table per source (single models and the ensemble of all seeds), with paired
          gains over the default option, and the cross-source figures.

Exits 0 with a message when a data folder is absent.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from coughlab.determinism import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads, as the train stage does: folds train bit-identically

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from coughlab import LABELS
from coughlab.atomic import atomic_write_text
from coughlab.audio import AudioDecodeError, load_audio, quality_problem, resample, to_mono
from coughlab.baselines import youden_threshold
from coughlab.config import compose, params_from
from coughlab.duplicates import clip_groups, find_near_duplicates, to_rate
from coughlab.metrics import (
    binary_metrics,
    channel_auc,
    choose_threshold,
    metadata_baseline_scores,
    roc_auc,
    with_ci,
    within_channel_auc,
    within_channel_margin,
)
from coughlab.nets import load_model, predict_proba
from coughlab.stages.featurize import featurize_waves
from coughlab.training import train_model

from machine import machine_info, repo_relative

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "realdata"
# The real sources we have: two recording set-ups each in covid19-cough, many in Coswara.
SOURCES = {"covid19-cough": SHARED / "dev", "coswara": SHARED / "dev-coswara"}
REALDATA = SOURCES["covid19-cough"]
RESULTS = REPO / "benchmarks" / "results"
OOF_DIR = RESULTS / "realdata_oof"
# What each design trains on and scores; every clip of its sources is scored exactly once.
DESIGNS = {
    "cv": "round 2: covid19-cough alone, 5-fold cross-validation",
    "transfer": "leave one source out: train on one source (15 % of its subjects the valid "
                "split), score every clip of the other; both directions",
    "joint": "both sources, 5-fold cross-validation grouped by subject across sources, "
             "stratified by source x channel x label, scored per source",
}
TELEPHONE = ["audio.sample_rate=8000", "audio.n_fft=512", "audio.hop_length=128",
             "audio.n_mels=40", "audio.f_min=300", "audio.f_max=3400",
             "audio.band_mean_norm=true"]
# Each option is a set of Hydra overrides on conf/, exactly as `dvc exp run -S` would take them,
# spelt out in full so that changing conf/'s defaults never changes what an option means.
# All train one network per fold (train.members=1): ensembles are scored from the seeds.
# 10 epochs, not conf's 20: on the 2 shared CPU cores we had, 20 epochs x 5 folds x 3 seeds x
# 3 options would have taken about 8 hours. Every option here trains the same 10 epochs.
ONE = ["train.members=1", "train.epochs=10", "train.channel_augment.gain=0",
       "train.channel_augment.tilt=0"]
BALANCED, CLASS_WEIGHTED = ["train.balance=channel_label"], ["train.balance=label"]
CENTRE, WINDOWS = ["audio.windows=1"], ["audio.windows=5", "audio.max_seconds=30"]
CHANNEL = ["train.channel_augment.gain=1.0", "train.channel_augment.tilt=0.5"]
CMN = ["audio.band_mean_norm=true"]
OPTIONS = {
    "baseline": ONE + CENTRE + CLASS_WEIGHTED,
    "telephone": ONE + CENTRE + TELEPHONE + CLASS_WEIGHTED,
    "balanced": ONE + CENTRE + BALANCED,
    "telephone+balanced": ONE + CENTRE + TELEPHONE + BALANCED,
    "balanced+windows": ONE + WINDOWS + BALANCED,
    "balanced+windows+channel-aug": ONE + WINDOWS + BALANCED + CHANNEL,
    # Round 3, for a change of recording set-up: per-recording spectral normalisation; the
    # bandwidth every set-up shares (call-center is 8 kHz) with it; both with channel
    # augmentation.
    "balanced+windows+cmn": ONE + WINDOWS + BALANCED + CMN,
    "balanced+windows+narrowband": ONE + WINDOWS + BALANCED + TELEPHONE,
    "balanced+windows+cmn+channel-aug": ONE + WINDOWS + BALANCED + CMN + CHANNEL,
    # Only the loud events of each recording (its coughs), silence and quiet speech between
    # them cut out before the windows are taken: a probe here (cough_events), not in the graph.
    "balanced+windows+events": ONE + WINDOWS + BALANCED,
}
# Options that change the waveform before featurize, beyond what conf/ can say.
EVENT_OPTIONS = {"balanced+windows+events"}
EVENT_FRAME_S, EVENT_BELOW_PEAK_DB, EVENT_PAD_S, EVENT_MIN_S = 0.02, 20.0, 0.14, 0.5
# What conf/ configures (audio.windows, train.balance, train.channel_augment).
DEFAULT_OPTION = "balanced+windows"
# The folds and valid splits: fixed, whatever the model seed (see the module docstring).
CV_SEED = 42
FOLDS = 5
VALID_FRACTION = 0.15
BOOTSTRAP = 1000
# Issue 19's bar, on means over seeds: within-channel AUC, its sd over seeds, leakage per
# label, and the sd of the threshold (each seed's, from its folds' pooled valid clips).
TARGETS = {"within_channel": 0.76, "within_channel_sd": 0.01, "leakage": 0.62,
           "threshold_sd": 0.03}


def load_clips(data_dirs: list[Path], quality) -> pd.DataFrame:
    """Decode and quality-gate every clip as combine does; one row per kept clip, with `wave`."""
    rows = []
    for data_dir in data_dirs:
        rows += load_folder(data_dir, quality)
    return pd.DataFrame(rows)


def load_folder(data_dir: Path, quality) -> list[dict]:
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
    return rows


def duplicate_groups(clips: pd.DataFrame) -> pd.Series:
    """Each clip's subject group: its subject, or the first subject of its re-sent copies."""
    waves = [to_rate(resample(w, sr, 16000), 16000)
             for w, sr in zip(clips["wave"], clips["orig_sr"])]
    pairs = find_near_duplicates(len(waves), waves.__getitem__)
    group = clip_groups(len(waves), pairs)
    print(f"{len(pairs)} near-duplicate pairs grouped", file=sys.stderr)
    return pd.Series(clips["subject_id"].to_numpy()[group], index=clips.index)


def cough_events(wave: np.ndarray, sr: int) -> np.ndarray:
    """The wave's loud events (frames within EVENT_BELOW_PEAK_DB of its loudest, padded by
    EVENT_PAD_S each side) joined end to end; the whole wave if they last under EVENT_MIN_S."""
    hop = max(1, int(EVENT_FRAME_S * sr))
    frames = len(wave) // hop
    if frames == 0:
        return wave
    power = np.square(wave[:frames * hop].reshape(frames, hop)).mean(axis=1)
    level = 10 * np.log10(power + 1e-12)
    loud = level >= level.max() - EVENT_BELOW_PEAK_DB
    pad = int(EVENT_PAD_S / EVENT_FRAME_S)
    keep = np.convolve(loud, np.ones(2 * pad + 1))[pad:pad + frames] > 0
    samples = np.repeat(keep, hop)
    events = wave[:frames * hop][samples]
    return events if len(events) >= EVENT_MIN_S * sr else wave


def strata(clips: pd.DataFrame) -> pd.Series:
    return clips["source"] + "/" + clips["channel"] + "/" + clips["label"]


def folds(clips: pd.DataFrame, seed: int = CV_SEED) -> np.ndarray:
    """Fold number per clip: grouped by subject group, stratified by source x channel x label."""
    fold = np.empty(len(clips), dtype=int)
    splitter = StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(clips, strata(clips), clips["group"])):
        fold[test] = k
    return fold


def hold_out_valid(clips: pd.DataFrame, seed: int = CV_SEED) -> np.ndarray:
    """True for the ~15 % of subject groups (stratified like the folds): the valid split."""
    splitter = StratifiedGroupKFold(n_splits=round(1 / VALID_FRACTION), shuffle=True,
                                    random_state=seed)
    _, valid = next(splitter.split(clips, strata(clips), clips["group"]))
    mask = np.zeros(len(clips), dtype=bool)
    mask[valid] = True
    return mask


def write_split(path: Path, x: np.ndarray, clips: pd.DataFrame) -> None:
    """A featurize-layout split (x `[clips, windows, 1, mels, frames]`) for train_model, which
    balances its batches over source x channel x label."""
    np.savez(path, x=x, y=clips["label"].map(LABELS.index).to_numpy(np.int8),
             path=clips["path"].to_numpy(str), source=clips["source"].to_numpy(str),
             channel=clips["channel"].to_numpy(str))


def test_masks(clips: pd.DataFrame, design: str) -> list[np.ndarray]:
    """The clips each model of `design` scores (every clip once); it trains on the others."""
    if design == "transfer":
        return [(clips["source"] != source).to_numpy() for source in SOURCES]
    fold = folds(clips)
    return [fold == k for k in range(FOLDS)]


def run_option(clips: pd.DataFrame, option: str, seed: int, design: str = "cv") -> pd.DataFrame:
    """Out-of-fold P(positive) for every clip, plus each model's valid-split predictions."""
    params = params_from(compose(REPO / "conf", OPTIONS[option] + [f"seed={seed}"]))
    audio = params.audio
    waves = [resample(w, sr, audio.sample_rate) for w, sr in zip(clips["wave"], clips["orig_sr"])]
    if option in EVENT_OPTIONS:
        waves = [cough_events(w, audio.sample_rate) for w in waves]
    x = featurize_waves(waves, audio, desc=f"featurize {audio.sample_rate} Hz")
    scored = []
    for k, test in enumerate(test_masks(clips, design)):
        start = time.perf_counter()
        rest = clips[~test].reset_index(drop=True)
        valid = hold_out_valid(rest)
        x_rest = x[~test]
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            write_split(tmp / "train.npz", x_rest[~valid], rest[~valid])
            write_split(tmp / "valid.npz", x_rest[valid], rest[valid])
            train_model(params, tmp, tmp / "model", tmp / "checkpoints")
            net, _ = load_model(tmp / "model" / "model.pt")
        trained_on = "+".join(sorted(rest["source"].unique()))
        for part, mask_x, frame in (("test", x[test], clips[test]),
                                    ("valid", x_rest[valid], rest[valid])):
            scored.append(frame.drop(columns="wave").assign(
                fold=k, part=part, seed=seed, trained_on=trained_on,
                p=predict_proba(net, mask_x)))
        print(f"{design} seed {seed} model {k} (trained on {trained_on}, {int((~test).sum())} "
              f"clips): {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return pd.concat(scored, ignore_index=True)


def design_sources(design: str) -> list[str]:
    return ["covid19-cough"] if design == "cv" else list(SOURCES)


def oof_file(design: str, option: str, seed: int) -> Path:
    return OOF_DIR / design / f"{option}-seed{seed}.csv"


def run(options: list[str], seeds: list[int], design: str = "cv") -> None:
    params = params_from(compose(REPO / "conf"))
    clips = load_clips([SOURCES[s] for s in design_sources(design)], params.data.quality)
    print(f"{len(clips)} clips decoded", file=sys.stderr)
    clips["group"] = duplicate_groups(clips)
    for name in options:
        for seed in seeds:
            out = oof_file(design, name, seed)
            if out.exists():
                print(f"{out.name}: done already", file=sys.stderr)
                continue
            frame = run_option(clips, name, seed, design)
            out.parent.mkdir(parents=True, exist_ok=True)
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


def test_clips(oof: pd.DataFrame) -> pd.DataFrame:
    """The out-of-fold rows (each clip once) with `y`, and `subject_id` set so that the
    bootstrap resamples subject groups: a re-sent pair is one person, drawn together."""
    oof = oof.assign(subject_id=oof["group"].astype(str))
    return oof[oof["part"] == "test"].assign(y=lambda f: (f["label"] == LABELS[1]).astype(int))


def paired_gain(oof: pd.DataFrame, references: list[pd.DataFrame]) -> dict:
    """Within-channel AUC of `oof` minus the mean of the `references`' on the same clips, with
    a CI from the same subject resamples for both sides: the CI of the difference itself,
    much narrower than two overlapping per-option CIs suggest."""
    test = test_clips(oof)
    refs = [test_clips(r).set_index("path")["p"].reindex(test["path"]).to_numpy()
            for r in references]
    if any(np.isnan(r).any() for r in refs):
        raise ValueError("the runs compared did not score the same clips")

    def gain(frame: pd.DataFrame, weights=None):
        reference = [within_channel_auc(frame.assign(p=r), weights) for r in refs]
        return within_channel_auc(frame, weights) - np.mean(reference, axis=0)

    return with_ci(test, gain, BOOTSTRAP, key="gain")


def seed_figures(oof: pd.DataFrame) -> dict:
    """Every figure for one option x seed, each AUC with its subject-bootstrap 95 % CI."""
    test = test_clips(oof).assign(baseline=fold_baseline(oof))
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
    """Mean and sd over seeds of each AUC, the mean CI bounds, and the thresholds' sd (None
    from a single run: one seed, or one seed set)."""
    out = {}
    for name in runs[0]:
        if name in ("thresholds", "pooled_threshold"):
            continue
        values = [r[name]["roc_auc"] for r in runs if r[name]["roc_auc"] is not None]
        out[name] = {"mean": statistics.mean(values),
                     "sd": statistics.stdev(values) if len(values) > 1 else None,
                     "ci_low": statistics.mean(r[name]["roc_auc_ci_low"] for r in runs),
                     "ci_high": statistics.mean(r[name]["roc_auc_ci_high"] for r in runs)}
    for rule in ("calibrated", "youden"):
        # Each fold's model with its own valid split, as the pipeline sets one per model ...
        values = [t[rule] for r in runs for t in r["thresholds"]]
        out[f"threshold_{rule}"] = {"mean": statistics.mean(values),
                                    "sd": statistics.stdev(values) if len(values) > 1 else None}
        # ... and one per seed, from the valid clips of all its folds pooled.
        values = [r["pooled_threshold"][rule] for r in runs]
        out[f"pooled_threshold_{rule}"] = {
            "mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None}
    return out


def meets_targets(summary: dict) -> dict[str, bool]:
    """Each target met (True/False), or None where one run cannot measure an sd."""
    def at_most(value, bound):
        return None if value is None else value <= bound

    within = summary["within_channel"]
    return {"within_channel": within["mean"] >= TARGETS["within_channel"],
            "within_channel_sd": at_most(within["sd"], TARGETS["within_channel_sd"]),
            "leakage": all(summary[f"leakage_{label}"]["mean"] <= TARGETS["leakage"]
                           for label in LABELS),
            "threshold_sd": at_most(summary["pooled_threshold_calibrated"]["sd"],
                                    TARGETS["threshold_sd"])}


def default_option() -> str:
    """The row of conf/'s default for real data (ensemble=full): see docs/quality.md."""
    params = params_from(compose(REPO / "conf", ["ensemble=full"]))
    name = DEFAULT_OPTION
    return name if params.train.members == 1 else f"{name} x{params.train.members}"


def table(results: dict) -> str:
    def sd(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    def cell(f: dict) -> str:
        spread = "; ".join(f"{what}: {f[key]:.3f}" for key, what in (
            ("sd_disjoint", "disjoint sets"), ("sd_if_independent", "independent"))
            if f.get(key) is not None)
        return (f"{f['mean']:.3f} ± {sd(f['sd'])}{f' ({spread})' if spread else ''} "
                f"[{f['ci_low']:.2f}, {f['ci_high']:.2f}]")

    columns = ["within_channel", "call-center", "telegram", "overall", "leakage_negative",
               "leakage_positive", "baseline_within_channel", "baseline_overall", "margin"]
    def gain(result: dict) -> str:
        g = result.get("gain_over_default_option")
        return "" if g is None else f"{g['mean']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]"

    lines = ["| option | runs | " + " | ".join(columns) + f" | within_channel gain, paired, "
             f"over {DEFAULT_OPTION} on the same seeds (xK: its xK; its own xK: its single "
             "models) | threshold sd per model, per seed (calibrated / Youden) |",
             "|---" * (len(columns) + 4) + "|"]
    default = default_option()
    for name, result in results.items():
        s = result["summary"]
        label = (f"**{name}** (default)" if name == default else
                 f"**{name}** (default's settings, one member: {default} needs more seeds)"
                 if name == DEFAULT_OPTION and default not in results else name)
        runs = len(result.get("seed_sets", result.get("seeds", [])))
        lines.append(f"| {label} | {runs} | " + " | ".join(cell(s[c]) for c in columns) +
                     f" | {gain(result)} | {sd(s['threshold_calibrated']['sd'])} / "
                     f"{sd(s['threshold_youden']['sd'])}, "
                     f"{sd(s['pooled_threshold_calibrated']['sd'])} / "
                     f"{sd(s['pooled_threshold_youden']['sd'])} |")
    return "\n".join(lines)


def ensemble_of(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per-clip mean of several seeds' P(positive): what an ensemble of their models predicts
    (the folds and valid splits are the same for every seed, see CV_SEED)."""
    keys = ["part", "fold", "path"]
    indexed = [f.set_index(keys).sort_index() for f in frames]
    p = sum(f["p"] for f in indexed) / len(indexed)
    return indexed[0].assign(p=p, seed=-1).reset_index()


def gain_summary(pairs: list[tuple[pd.DataFrame, list[pd.DataFrame]]]) -> dict | None:
    """Mean over runs of `paired_gain` (each run against its own references), and its sd;
    None without a run to compare."""
    if not pairs:
        return None
    runs = [paired_gain(oof, refs) for oof, refs in pairs]
    values = [r["gain"] for r in runs]
    return {"mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else None,
            "ci_low": statistics.mean(r["gain_ci_low"] for r in runs),
            "ci_high": statistics.mean(r["gain_ci_high"] for r in runs), "runs": len(runs)}


def disjoint_sd(sets: list[tuple], runs: list[dict], seeds: list[int], k: int) -> float | None:
    """Within-channel sd over the sets that share no seed (seeds in order, k at a time): a
    K-member ensemble's own seed-to-seed spread; None with fewer than two such sets."""
    chunks = [tuple(seeds[i:i + k]) for i in range(0, len(seeds) - k + 1, k)]
    values = [runs[sets.index(chunk)]["within_channel"]["roc_auc"] for chunk in chunks]
    return statistics.stdev(values) if len(values) > 1 else None


def default_reference(name: str, default_runs: list[pd.DataFrame]) -> list[pd.DataFrame]:
    """What an ensemble of `name` over some seeds is compared with: for the default option
    itself, its single models on those seeds (what the ensemble adds); for another option,
    the default's ensemble of the same seeds (what the option adds at equal K)."""
    return default_runs if name == DEFAULT_OPTION else [ensemble_of(default_runs)]


def ensemble_results(name: str, frames: dict[int, pd.DataFrame], single_sd: float | None,
                     default_frames: dict[int, pd.DataFrame]) -> dict[str, dict]:
    """`option xK` for every ensemble size K >= 2 the seeds allow, over all K-seed sets.

    The sets share seeds, so their sd understates a fresh K-seed ensemble's (and one set has
    none); the within-channel summary also gives the single model's sd / sqrt(K), what K
    members with independent errors would reach, as `sd_if_independent`. Each set's gain is
    over the default option on the same seeds (`default_reference`).
    """
    out = {}
    seeds = sorted(frames)
    for k in range(2, len(seeds) + 1):
        sets = list(itertools.combinations(seeds, k))
        runs = [seed_figures(ensemble_of([frames[s] for s in members])) for members in sets]
        summary = summarize(runs)
        summary["within_channel"]["sd_if_independent"] = (
            None if single_sd is None else single_sd / math.sqrt(k))
        summary["within_channel"]["sd_disjoint"] = disjoint_sd(sets, runs, seeds, k)
        gain = gain_summary([(ensemble_of([frames[s] for s in members]),
                              default_reference(name, [default_frames[s] for s in members]))
                             for members in sets if set(members) <= set(default_frames)])
        out[f"{name} x{k}"] = {"overrides": OPTIONS[name] + [f"ensemble of seeds {list(m)}"
                                                             for m in sets[:1]],
                               "seed_sets": [list(m) for m in sets], "summary": summary,
                               "gain_over_default_option": gain,
                               "meets_targets": meets_targets(summary)}
    return out


def predictions(option: str, seeds: list[int], design: str = "cv") -> dict[int, pd.DataFrame]:
    """The predictions `run` wrote for each of the seeds that has them."""
    files = {seed: oof_file(design, option, seed) for seed in seeds}
    return {seed: pd.read_csv(f, dtype={"subject_id": str, "group": str})
            for seed, f in files.items() if f.exists()}


def report(options: list[str], seeds: list[int]) -> None:
    """Score the out-of-fold predictions on disk; an option with none here keeps the figures
    the results file already has for it (the predictions carry labels, so they are not
    committed: a fresh clone has none, and must not wipe the committed results)."""
    result_file = RESULTS / "realdata_quality.json"
    previous = json.loads(result_file.read_text())["options"] if result_file.exists() else {}
    results = {}
    default_frames = predictions(DEFAULT_OPTION, seeds)
    for name in options:
        frames = predictions(name, seeds)
        if not frames:
            kept = {key: value for key, value in previous.items()
                    if key == name or key.startswith(f"{name} x")}
            found_before = "kept the committed figures" if kept else "none committed either"
            print(f"{name}: no predictions here; {found_before} (`run` measures it)",
                  file=sys.stderr)
            results.update(kept)
            continue
        if len(frames) < len(seeds):
            print(f"{name}: only seeds {sorted(frames)} have predictions", file=sys.stderr)
        runs = [seed_figures(frame) for frame in frames.values()]
        summary = summarize(runs)
        gain = (None if name == DEFAULT_OPTION else gain_summary(
            [(frames[s], [default_frames[s]]) for s in frames if s in default_frames]))
        results[name] = {"overrides": OPTIONS[name], "seeds": sorted(frames), "summary": summary,
                         "gain_over_default_option": gain,
                         "meets_targets": meets_targets(summary), "per_seed": runs}
        results.update(ensemble_results(name, frames, summary["within_channel"]["sd"],
                                        default_frames))
    payload = {"benchmark": "realdata_quality", "dataset": repo_relative(REALDATA),
               "protocol": f"{FOLDS}-fold cross-validation, grouped by subject (re-sent "
                           "recordings one subject), stratified by channel x label; folds and "
                           f"valid split (15 % of the training folds' subjects) fixed by "
                           f"CV_SEED={CV_SEED}, the seed varies the model only; 'option xK': "
                           "per-clip mean of K seeds' predictions (a K-member ensemble)",
               "default": default_option(),
               "bootstrap": {"resamples": BOOTSTRAP, "unit": "subject"}, "targets": TARGETS,
               "options": results, "machine": machine_info()}
    atomic_write_text(result_file, json.dumps(payload, indent=2) + "\n")
    print(table(results))


def source_rows(oof: pd.DataFrame, source: str) -> pd.DataFrame:
    """The test rows of one source, and the valid rows of the models that scored them."""
    test = oof[(oof["part"] == "test") & (oof["source"] == source)]
    valid = oof[(oof["part"] == "valid") & oof["fold"].isin(test["fold"].unique())]
    return pd.concat([test, valid], ignore_index=True)


def operating_point(oof: pd.DataFrame) -> dict[str, float]:
    """Sensitivity and specificity on the test clips at each model's own threshold (the
    pipeline's rule on that model's valid split): does the threshold carry over?"""
    hits = Counter()
    for k, test in test_clips(oof).groupby("fold"):
        valid = oof[(oof["part"] == "valid") & (oof["fold"] == k)]
        threshold = choose_threshold((valid["label"] == LABELS[1]).astype(int), valid["p"])
        hits.update(binary_metrics(test["y"], test["p"], threshold)["confusion"])
    return {"sensitivity": hits["tp"] / max(hits["tp"] + hits["fn"], 1),
            "specificity": hits["tn"] / max(hits["tn"] + hits["fp"], 1)}


def source_figures(oof: pd.DataFrame, source: str, design: str) -> dict:
    """One source's figures from one run: within-channel and overall ROC-AUC with subject
    CIs, per channel, leakage where the source has two channels, the operating point, and
    (where the models saw this source's set-ups) the margin over the metadata baseline."""
    rows = source_rows(oof, source)
    test = test_clips(rows)
    figures = {"within_channel": with_ci(test, within_channel_auc, BOOTSTRAP),
               "overall": with_ci(test, roc_auc, BOOTSTRAP), **operating_point(rows),
               "clips": len(test), "positives": int(test["y"].sum()),
               "subjects": int(test["subject_id"].nunique())}
    for channel, frame in test.groupby("channel"):
        figures[f"channel {channel}"] = with_ci(frame, roc_auc, BOOTSTRAP)
    if test["channel"].nunique() > 1:
        for k, label in enumerate(LABELS):
            figures[f"leakage_{label}"] = with_ci(test[test["y"] == k], channel_auc, BOOTSTRAP)
    if design != "transfer":
        test = test.assign(baseline=fold_baseline(rows))
        figures["margin"] = with_ci(test, within_channel_margin, BOOTSTRAP)
    return figures


def cross_source_figures(oof: pd.DataFrame) -> dict:
    """Over both sources' clips: overall ROC-AUC, and how well the score tells the sources
    apart within each label (0.5: not at all)."""
    test = test_clips(oof)
    figures = {"overall, both sources": with_ci(test, roc_auc, BOOTSTRAP)}
    for k, label in enumerate(LABELS):
        figures[f"source leakage, {label}"] = with_ci(
            test[test["y"] == k].assign(channel=lambda f: f["source"]), channel_auc, BOOTSTRAP)
    return figures


def mean_over_runs(runs: list[dict]) -> dict:
    """Mean (and sd over runs) of each figure; AUC-like figures with their mean CI bounds."""
    out = {}
    for name, first in runs[0].items():
        if isinstance(first, dict):
            defined = [r[name] for r in runs if r[name]["roc_auc_ci_low"] is not None]
            if not defined:
                continue
            values = [f["roc_auc"] for f in defined]
            out[name] = {"mean": statistics.mean(values),
                         "sd": statistics.stdev(values) if len(values) > 1 else None,
                         "ci_low": statistics.mean(f["roc_auc_ci_low"] for f in defined),
                         "ci_high": statistics.mean(f["roc_auc_ci_high"] for f in defined)}
        else:
            out[name] = statistics.mean(r[name] for r in runs)
    return out


def source_gain(oof: pd.DataFrame, reference: pd.DataFrame, source: str) -> dict:
    """Paired within-channel gain on one source's clips (both sides, same subject resamples)."""
    return paired_gain(source_rows(oof, source), [source_rows(reference, source)])


def mean_gain(gains: list[dict]) -> dict | None:
    if not gains:
        return None
    return {"mean": statistics.mean(g["gain"] for g in gains),
            "ci_low": statistics.mean(g["gain_ci_low"] for g in gains),
            "ci_high": statistics.mean(g["gain_ci_high"] for g in gains), "runs": len(gains)}


def gain_over_one_source(frames: dict[int, pd.DataFrame], option: str) -> dict | None:
    """joint only: on covid19-cough's clips, the paired within-channel gain of training on
    both sources over training on covid19-cough alone (design cv), same option and seeds."""
    alone = predictions(option, list(frames))
    return mean_gain([paired_gain(source_rows(frames[s], "covid19-cough"), [alone[s]])
                      for s in alone])


def option_by_source(frames: dict[int, pd.DataFrame], default: dict[int, pd.DataFrame],
                     design: str, is_default: bool) -> dict:
    """Per source: the mean over seeds of single models, and the ensemble of all seeds (xK);
    each with its paired gain over the default option (singles: seed by seed; xK: against
    the default's xK of the same seeds; the default's own xK: against its single models)."""
    seeds = sorted(frames)
    ensemble = ensemble_of([frames[s] for s in seeds])
    shared = [s for s in seeds if s in default]
    out = {}
    for source in design_sources(design):
        single = mean_over_runs([source_figures(frames[s], source, design) for s in seeds])
        single["gain"] = None if is_default else mean_gain(
            [source_gain(frames[s], default[s], source) for s in shared])
        out[source] = {"single": single}
        if len(seeds) > 1:
            figures = mean_over_runs([source_figures(ensemble, source, design)])
            if is_default:
                figures["gain"] = mean_gain([paired_gain(source_rows(ensemble, source),
                                                         [source_rows(frames[s], source)
                                                          for s in seeds])])
            elif shared == seeds:
                figures["gain"] = mean_gain([source_gain(
                    ensemble, ensemble_of([default[s] for s in seeds]), source)])
            out[source][f"x{len(seeds)}"] = figures
    if design != "cv":
        out["cross-source"] = {"single": mean_over_runs([cross_source_figures(frames[s])
                                                         for s in seeds])}
        if len(seeds) > 1:
            out["cross-source"][f"x{len(seeds)}"] = mean_over_runs(
                [cross_source_figures(ensemble)])
    return out


def sources_table(design: str, results: dict) -> str:
    def auc(f: dict | None) -> str:
        if f is None:
            return ""
        sd = f" ± {f['sd']:.3f}" if f.get("sd") is not None else ""
        return f"{f['mean']:.3f}{sd} [{f['ci_low']:.2f}, {f['ci_high']:.2f}]"

    def gain(g: dict | None) -> str:
        return "" if g is None else f"{g['mean']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]"

    lines = [f"design {design}: {DESIGNS[design]}", "",
             "| option | scored on | models | within-channel | overall | per channel | "
             "leakage neg / pos | margin over metadata | within-channel gain, paired | "
             "sens / spec at own threshold |", "|---" * 10 + "|"]
    for option, by_source in results.items():
        for source, kinds in by_source.items():
            for kind, f in kinds.items():
                name = option if kind == "single" else f"{option} {kind}"
                if source == "cross-source":
                    lines.append(f"| {name} | both (cross-source) | {kind} | | "
                                 f"{auc(f.get('overall, both sources'))} | | "
                                 f"{auc(f.get('source leakage, negative'))} / "
                                 f"{auc(f.get('source leakage, positive'))} (source) | | | |")
                    continue
                channels = "; ".join(f"{k[8:]} {auc(v)}" for k, v in f.items()
                                     if k.startswith("channel "))
                leak = (f"{auc(f['leakage_negative'])} / {auc(f['leakage_positive'])}"
                        if "leakage_negative" in f else "")
                lines.append(
                    f"| {name} | {source} ({f['clips']:.0f} clips, {f['positives']:.0f} pos) "
                    f"| {kind} | {auc(f['within_channel'])} | {auc(f['overall'])} | "
                    f"{channels} | {leak} | {auc(f.get('margin'))} | {gain(f.get('gain'))}"
                    + (f" (both sources over covid19-cough alone: "
                       f"{gain(f['gain_over_covid19_cough_alone'])})"
                       if f.get("gain_over_covid19_cough_alone") else "") + " | "
                    f"{f['sensitivity']:.2f} / {f['specificity']:.2f} |")
    return "\n".join(lines)


def report_sources(design: str, options: list[str], seeds: list[int]) -> None:
    """Score one design's out-of-fold predictions per source into realdata_sources.json
    (each design keeps its own entry; a design or option without predictions here keeps
    the committed figures)."""
    result_file = RESULTS / "realdata_sources.json"
    payload = json.loads(result_file.read_text()) if result_file.exists() else {
        "benchmark": "realdata_sources", "designs": {}}
    previous = payload["designs"].get(design, {}).get("options", {})
    default = predictions(DEFAULT_OPTION, seeds, design)
    results = {}
    for option in options:
        frames = predictions(option, seeds, design)
        if not frames:
            print(f"{option}: no predictions for design {design}; kept what was committed",
                  file=sys.stderr)
            if option in previous:
                results[option] = previous[option]
            continue
        results[option] = option_by_source(frames, default, design, option == DEFAULT_OPTION)
        if design == "joint":
            results[option]["covid19-cough"]["single"]["gain_over_covid19_cough_alone"] = (
                gain_over_one_source(frames, option))
        results[option]["seeds"] = sorted(frames)
    payload["designs"][design] = {
        "description": DESIGNS[design],
        "datasets": {s: repo_relative(SOURCES[s]) for s in design_sources(design)},
        "protocol": f"folds and valid splits fixed by CV_SEED={CV_SEED}, grouped by subject "
                    "group across sources, stratified by source x channel x label; "
                    f"{BOOTSTRAP} subject-bootstrap resamples; 'xK': per-clip mean of K seeds",
        "default": DEFAULT_OPTION,
        "default_members": params_from(compose(REPO / "conf", ["ensemble=full"])).train.members,
        "overrides": {o: OPTIONS[o] for o in results}, "options": results,
        "machine": machine_info()}
    atomic_write_text(result_file, json.dumps(payload, indent=2) + "\n")
    print(sources_table(design, {o: {k: v for k, v in r.items() if k != "seeds"}
                                 for o, r in results.items()}))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("phase", choices=["run", "report"])
    parser.add_argument("--design", choices=list(DESIGNS), default="cv",
                        help="; ".join(f"{k}: {v}" for k, v in DESIGNS.items())
                        .replace("%", "%%"))  # argparse %-formats help
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44],
                        help="report: seeds missing for an option are left out, with a note")
    args = parser.parse_args(argv)
    missing = [str(SOURCES[s]) for s in design_sources(args.design)
               if not (SOURCES[s] / "labels.csv").exists()]
    if missing:
        print(f"no real data at {', '.join(missing)}; nothing to benchmark")
        return
    if args.phase == "run":
        run(args.options, args.seeds, args.design)
    elif args.design == "cv":
        report(args.options, args.seeds)
    else:
        report_sources(args.design, args.options, args.seeds)


if __name__ == "__main__":
    main()
