"""Stage combine: decode every fetched clip, mono, one sample rate, quality gate, split.

Outputs (build/combined/):
- clips/...wav      mono 32-bit float at audio.sample_rate (the Lambda feeds float samples to
                    the graph: 16-bit clips would make training see other numbers), at the build/fetched/ path (+ .wav if not wav)
- manifest.csv      one row per kept clip: labels.csv columns (path -> the wav, fetched_path the
                    original) + split, orig_sr, orig_channels, seconds
- quarantine.csv    one row per rejected clip with its reason (unreadable, empty, silent, ...)
- summary.json      counts per split x label x source, and quarantine counts per reason

Quarantine is never fatal on its own; combine fails only if the quarantined fraction exceeds
data.quality.max_quarantine_fraction, which signals a broken source rather than bad clips.
Splits are subject-disjoint (no person in two splits) and stratified by label, from `seed`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm import tqdm

from coughlab.atomic import atomic_dir
from coughlab.audio import AudioDecodeError, load_audio, quality_problem, resample, to_mono
from coughlab.config import QualityConfig, SplitConfig, load_params

IN = Path("build/fetched")
OUT = Path("build/combined")
SPLITS = ("train", "valid", "test")


class TooManyQuarantined(RuntimeError):
    pass


def split_subjects(df: pd.DataFrame, split: SplitConfig, seed: int) -> pd.Series:
    """Assign each row the split of its subject: subject-disjoint, label-stratified, seeded.

    A subject's label is its majority label, so a subject with mixed clips stays whole.
    """
    subject_label = df.groupby("subject_id")["label"].agg(lambda s: s.value_counts().idxmax())
    rng = np.random.default_rng(seed)
    assignment = {}
    for label in sorted(subject_label.unique()):
        subjects = sorted(subject_label.index[subject_label == label])
        subjects = [subjects[i] for i in rng.permutation(len(subjects))]
        n = len(subjects)
        n_test = int(round(n * split.test)) if n >= 3 else 0
        n_valid = int(round(n * split.valid)) if n >= 3 else 0
        if n >= 3:  # keep every split non-empty for every label when there are enough people
            n_test, n_valid = max(n_test, 1), max(n_valid, 1)
        for i, subj in enumerate(subjects):
            assignment[subj] = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
    return df["subject_id"].map(assignment)


def wav_path(fetched_path: str) -> str:
    """Where a fetched clip's decoded copy goes: x.wav stays, x.mp3 becomes x.mp3.wav (no clashes)."""
    return fetched_path if fetched_path.lower().endswith(".wav") else fetched_path + ".wav"


def process_clip(src: Path, dst: Path, sample_rate: int, quality: QualityConfig) -> dict:
    """Decode, mix down, check and resample one clip; returns its stats or a quarantine reason."""
    try:
        wave, sr = load_audio(src)
    except AudioDecodeError as err:
        return {"reason": "unreadable", "detail": str(err)}
    mono = to_mono(wave)
    reason = quality_problem(mono, sr, quality)
    if reason:
        return {"reason": reason, "detail": f"{mono.size} samples at {sr} Hz"}
    out = resample(mono, sr, sample_rate)
    dst.parent.mkdir(parents=True, exist_ok=True)
    sf.write(dst, out, sample_rate, subtype="FLOAT")
    return {"orig_sr": sr, "orig_channels": wave.shape[0], "seconds": round(mono.size / sr, 3)}


def combine(src_dir: Path, out: Path, sample_rate: int, quality: QualityConfig,
            split: SplitConfig, seed: int) -> dict:
    labels = pd.read_csv(src_dir / "labels.csv", dtype=str, keep_default_na=False)
    with atomic_dir(out) as tmp:
        kept, quarantined = [], []
        for row in tqdm(labels.to_dict("records"), desc="combine", unit="clip"):
            clip = wav_path(row["path"])
            result = process_clip(src_dir / row["path"], tmp / "clips" / clip, sample_rate, quality)
            if "reason" in result:
                quarantined.append({"path": row["path"], "label": row["label"],
                                    "source": row["source"], **result})
            else:
                kept.append({**row, "path": clip, "fetched_path": row["path"], **result})
        fraction = len(quarantined) / max(len(labels), 1)
        if fraction > quality.max_quarantine_fraction:
            raise TooManyQuarantined(
                f"{len(quarantined)}/{len(labels)} clips ({fraction:.0%}) failed quality checks, "
                f"above data.quality.max_quarantine_fraction={quality.max_quarantine_fraction}; "
                f"first reasons: {[q['reason'] + ': ' + q['path'] for q in quarantined[:5]]}")
        manifest = pd.DataFrame(kept)
        if manifest.empty:
            raise TooManyQuarantined("no clip passed the quality checks")
        manifest["split"] = split_subjects(manifest, split, seed)
        manifest.to_csv(tmp / "manifest.csv", index=False)
        quarantine = pd.DataFrame(quarantined, columns=["path", "label", "source", "reason", "detail"])
        quarantine.to_csv(tmp / "quarantine.csv", index=False)
        summary = summarize(manifest, quarantine, sample_rate)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"combine: kept {len(manifest)} clips, quarantined {len(quarantine)} "
          f"{summary['quarantined_by_reason']}")
    return summary


def summarize(manifest: pd.DataFrame, quarantine: pd.DataFrame, sample_rate: int) -> dict:
    def nested(df: pd.DataFrame, *keys: str) -> dict:
        out: dict = {}
        for values, count in df.groupby(list(keys)).size().items():
            node = out
            for v in values[:-1]:
                node = node.setdefault(v, {})
            node[values[-1]] = int(count)
        return out

    return {
        "sample_rate": sample_rate,
        "clips": int(len(manifest)),
        "subjects": int(manifest["subject_id"].nunique()),
        "by_split_label": nested(manifest, "split", "label"),
        "by_split_source_label": nested(manifest, "split", "source", "label"),
        "subjects_by_split": {s: int(manifest.loc[manifest.split == s, "subject_id"].nunique())
                              for s in SPLITS},
        "quarantined": int(len(quarantine)),
        "quarantined_by_reason": {k: int(v) for k, v in quarantine["reason"].value_counts().items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in", dest="src", type=Path, default=IN)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    p = load_params()
    combine(args.src, args.out, p.audio.sample_rate, p.data.quality, p.data.split, p.seed)


if __name__ == "__main__":
    main()
