"""Real-data quality: which modelling option hears coughs rather than phone lines.

On ../shared/realdata/dev (888 real covid19-cough clips: call-center 8 kHz stereo, mostly
positive; telegram 48 kHz mono, mostly negative) every option is scored by subject-grouped,
channel x label stratified 5-fold cross-validation: each clip is scored once, by a model that
never saw its subject. Each fold trains with the pipeline's own code (combine's decode, quality
gate and resampler, featurize's windows, train_model) on the other folds, of which 15 % of
subjects are held out as the valid split that picks the threshold, as evaluate does.

Two phases, so the expensive one runs once:
  run     trains every option x seed x fold; writes out-of-fold predictions to
          benchmarks/results/realdata_oof/<option>-seed<seed>.csv
  report  reads them and writes benchmarks/results/realdata_quality.json and a table:
          within-channel ROC-AUC, per-channel AUCs with subject-bootstrap CIs, channel
          leakage per label, the metadata-only baseline and the threshold's sd across seeds.

Exits 0 with a message when the data folder is absent.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from coughlab import LABELS
from coughlab.audio import AudioDecodeError, load_audio, quality_problem, resample, to_mono
from coughlab.config import compose, params_from
from coughlab.model import load_model, predict_proba, train_model
from coughlab.stages.featurize import featurize_waves

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata" / "dev"
RESULTS = REPO / "benchmarks" / "results"
OOF_DIR = RESULTS / "realdata_oof"
TELEPHONE = ["audio.sample_rate=8000", "audio.n_fft=512", "audio.hop_length=128",
             "audio.n_mels=40", "audio.f_min=300", "audio.f_max=3400",
             "audio.band_mean_norm=true"]
# Each option is a set of Hydra overrides on conf/, exactly as `dvc exp run -S` would take them.
OPTIONS = {
    "baseline": [],
    "telephone": TELEPHONE,
    "balanced": ["train.balance=channel_label"],
    "telephone+balanced": TELEPHONE + ["train.balance=channel_label"],
}
FOLDS = 5
VALID_FRACTION = 0.15


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


if __name__ == "__main__":
    main()
