"""Stage combine: decode every fetched clip, mono, one sample rate, quality gate, split.

Outputs (build/combined/):
- clips/...wav      mono 32-bit float at audio.sample_rate, at the build/fetched/ path (+ .wav
                    if not wav); float, because the Lambda feeds float samples to the graph
- manifest.csv      one row per kept clip: labels.csv columns (path -> the wav, fetched_path the
                    original) + split, orig_sr, orig_channels, seconds
- quarantine.csv    one row per rejected clip with its reason (unreadable, empty, silent, ...)
- summary.json      counts per split x label x source, quarantine counts per reason, the
                    near-duplicate groups (re-sent recordings) that were made one subject, and
                    the sources held out (data.split.held_out_sources: in test only)

Text starting like a spreadsheet formula (= + - @ tab CR) is written with a leading quote
(coughlab.escape.csv_cell), so no spreadsheet opening these runs it.

Quarantine is never fatal on its own; combine fails only if the quarantined fraction exceeds
data.quality.max_quarantine_fraction, which signals a broken source rather than bad clips.
Splits are subject-disjoint (no person in two splits; possible duplicates of one person, by
`person_fingerprint`, stay together; so do near-duplicate recordings, the same audio re-sent
under another id, re-trimmed, re-encoded or rescaled, found across all sources by
coughlab.duplicates) and stratified by source x channel x label, from `seed` (a clip without a
channel counts as its source's one channel). Every clip of a source named in
data.split.held_out_sources goes to test (a leave-one-source-out run), and so does any subject
grouped with one of its clips.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from coughlab import LABELS, SPLITS, duplicates
from coughlab.atomic import atomic_dir
from coughlab.audio import (
    AudioDecodeError,
    load_audio,
    quality_problem,
    resample,
    to_mono,
    write_float_wav,
)
from coughlab.config import QualityConfig, SplitConfig
from coughlab.escape import read_csv_cells, write_csv
from coughlab.progress import progress_bar
from coughlab.stages.cli import path_option, stage_parser


class TooManyQuarantined(RuntimeError):
    pass


class SplitError(ValueError):
    """A source has too few independent subjects to appear in every split, or a split lacks
    a label."""


# Column a source may fill so that possible recordings of one person share a split
# (coughlab.sources.FINGERPRINT; not imported, so combine does not depend on the sources).
FINGERPRINT = "person_fingerprint"


def subject_groups(df: pd.DataFrame, linked: list[tuple[str, str]] = ()) -> pd.Series:
    """`subject_id -> group`: subjects sharing a non-empty person_fingerprint (possibly one
    person recorded twice), or `linked` in pairs (near-duplicate recordings), form one group,
    named after its first subject id in sorted order."""
    parent = {s: s for s in sorted(df["subject_id"].unique())}

    def root(s: str) -> str:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    if FINGERPRINT in df.columns:
        pairs = df.loc[df[FINGERPRINT].fillna("").astype(str) != "", [FINGERPRINT, "subject_id"]]
        for _, subjects in sorted(pairs.groupby(FINGERPRINT)["subject_id"]):
            first, *rest = sorted(set(subjects))
            for other in rest:
                a, b = sorted((root(first), root(other)))
                parent[b] = a
    for one, other in linked:
        a, b = sorted((root(one), root(other)))
        parent[b] = a
    return pd.Series({s: root(s) for s in parent}, name="group")


def _majority(values: pd.Series) -> str:
    """Most frequent value; ties go to the first in sorted order (deterministic)."""
    return values.value_counts().sort_index().idxmax()


def recording_channels(df: pd.DataFrame) -> pd.Series:
    """Each clip's channel; a clip without one counts as its source's one channel (as evaluate
    and featurize count it)."""
    channel = (df["channel"].fillna("").astype(str) if "channel" in df.columns
               else pd.Series("", index=df.index))
    return channel.where(channel != "", df["source"])


def split_subjects(df: pd.DataFrame, split: SplitConfig, seed: int,
                   linked: list[tuple[str, str]] = ()) -> pd.Series:
    """Assign each row the split of its subject, seeded.

    Subject-disjoint, and possible duplicates of one person (equal person_fingerprint) and
    `linked` subject pairs (near-duplicate recordings) stay together. Stratified by source x
    channel x label: within each source, each channel x label cell's groups are shuffled and
    cut by the split fractions (`_cells`) from a stream seeded by `seed` and the source, so a
    channel whose labels lean one way is in every split with both; then every source is made
    to appear in every split with a non-zero fraction, or SplitError names the source with too
    few subjects. Groups with a clip of a source in `split.held_out_sources` go to test whole
    before any of that (`held_out_groups`). A group's source, channel and label are the
    majority of its clips. Every split in use must hold clips of both labels (`check_labels`).
    """
    groups = subject_groups(df, linked)
    row_group = df["subject_id"].map(groups)
    strata = df.assign(channel=recording_channels(df)).groupby(row_group).agg(
        source=("source", _majority), channel=("channel", _majority), label=("label", _majority))
    fractions = {"test": split.test, "valid": split.valid}
    needed = ["train", *(name for name, f in fractions.items() if f > 0)]
    held_out = held_out_groups(df, row_group, split.held_out_sources)
    assignment = {group: "test" for group in held_out}
    strata = strata.drop(index=held_out)
    for source in sorted(strata["source"].unique()):
        in_source = strata[strata["source"] == source]
        if len(in_source) < len(needed):
            raise SplitError(
                f"source {source!r} has {len(in_source)} independent subject(s) (possible "
                f"duplicates of one person counted once); {len(needed)} are needed to put it in "
                f"{', '.join(needed)}. Add recordings, leave it out of data.sources, or set "
                "data.split.valid / data.split.test to 0.")
        # Each source its own stream: adding, dropping or holding out another source leaves
        # this one's split as it was, so runs over different sources compare on it.
        rng = np.random.default_rng([seed, *source.encode()])
        for members in _cells(in_source):
            members = [members[i] for i in rng.permutation(len(members))]
            n = len(members)
            counts = {name: int(round(n * f)) for name, f in fractions.items()}
            if n >= 3:  # every split gets each cell when there are enough people
                counts = {name: max(c, 1) if fractions[name] > 0 else 0
                          for name, c in counts.items()}
            for i, group in enumerate(members):
                assignment[group] = ("test" if i < counts["test"] else
                                     "valid" if i < counts["test"] + counts["valid"] else "train")
        _cover_every_split(list(in_source.index), needed, assignment)
    split_of_row = row_group.map(assignment)
    check_labels(df["label"], split_of_row, [*needed, *(["test"] if held_out else [])])
    return split_of_row


def held_out_groups(df: pd.DataFrame, row_group: pd.Series, held_out: list[str]) -> list[str]:
    """The groups with a clip of a held-out source: all of them go to test, so no recording
    of those sources (nor a near-duplicate of one) is trained on; SplitError for a name that is
    no source of the data, or for holding out every source."""
    sources = sorted(df["source"].unique())
    unknown = [name for name in held_out if name not in sources]
    if unknown:
        raise SplitError(f"data.split.held_out_sources names {', '.join(map(repr, unknown))}, "
                         f"which is not a source in the data (sources: {', '.join(sources)})")
    if sources and set(sources) <= set(held_out):
        raise SplitError(f"data.split.held_out_sources holds out every source "
                         f"({', '.join(sources)}): none is left to train on")
    touches = df["source"].isin(held_out).groupby(row_group).any()
    return sorted(touches.index[touches])


def _cells(strata: pd.DataFrame) -> list[list[str]]:
    """One source's groups by label, then channel: each channel x label cell of at least 3
    groups is cut on its own, the smaller cells of a label pooled into one, so 3 independent
    subjects of a label still reach every split however their channels spread them."""
    cells = []
    for _, in_label in strata.groupby("label", sort=True):
        by_channel = [sorted(cell.index) for _, cell in in_label.groupby("channel", sort=True)]
        cells += [members for members in by_channel if len(members) >= 3]
        pooled = sorted(group for members in by_channel if len(members) < 3 for group in members)
        cells += [pooled] if pooled else []
    return cells


def check_labels(labels: pd.Series, split_of_row: pd.Series, needed: list[str]) -> None:
    """SplitError, with the clips per split and label, unless every split in `needed` holds
    clips of both labels.

    A one-class train split teaches nothing, a one-class valid split cannot place the
    threshold and a one-class test split has no ROC-AUC: caught here, before featurize and
    train spend their time, not at evaluate.
    """
    counts = labels.groupby(split_of_row).value_counts()
    in_use = [name for name in SPLITS if name in needed]
    if all(counts.get((name, label), 0) > 0 for name in in_use for label in LABELS):
        return
    found = "; ".join(f"{name}: " + ", ".join(f"{counts.get((name, label), 0)} {label}"
                                              for label in LABELS) for name in in_use)
    raise SplitError(
        "every split in use needs clips of both labels, which takes at least 3 independent "
        "subjects of each label, more when they come from several sources (docs/pipeline.md, "
        f"How much data); add recordings of the missing label. Clips per split: {found}")


def _cover_every_split(groups: list[str], needed: list[str], assignment: dict[str, str]) -> None:
    """Move groups (the last placed in the fullest split) until each needed split has one."""
    for name in needed:
        members = {n: [g for g in groups if assignment[g] == n] for n in needed}
        if not members[name]:
            donor = max(needed, key=lambda n: len(members[n]))
            assignment[members[donor][-1]] = name


def wav_path(fetched_path: str) -> str:
    """Where a fetched clip's decoded copy goes: x.wav stays, x.mp3 becomes x.mp3.wav
    (no clashes)."""
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
    write_float_wav(dst, out, sample_rate)
    return {"orig_sr": sr, "orig_channels": wave.shape[0], "seconds": round(mono.size / sr, 3)}


def clip_fingerprint(path: Path) -> duplicates.Fingerprint:
    """The landmark hashes of a clip combine wrote (mono float WAV)."""
    wave, sr = load_audio(path)
    return duplicates.fingerprint(duplicates.to_rate(wave[0], sr))


def near_duplicate_pairs(clips_dir: Path, manifest: pd.DataFrame,
                         prints: list[duplicates.Fingerprint],
                         sample_rate: int) -> list[duplicates.Pair]:
    """Confirmed near-duplicate clip pairs (row numbers of `manifest`), reading only candidates."""
    def wave8k(k: int) -> np.ndarray:
        wave, sr = load_audio(clips_dir / manifest["path"].iloc[k])
        return duplicates.to_rate(wave[0], sr)

    return duplicates.find_near_duplicates(
        len(manifest), wave8k, prints,
        progress=lambda it, desc: progress_bar(it, desc=desc, unit="pair"))


def duplicate_report(manifest: pd.DataFrame, pairs: list[duplicates.Pair]) -> dict:
    """summary.json's account: how pairs are decided, and every group of re-sent recordings."""
    group = duplicates.clip_groups(len(manifest), pairs)
    members: dict[int, list[int]] = {}
    for k in sorted({k for pair in pairs for k in (pair.i, pair.j)}):
        members.setdefault(group[k], []).append(k)
    xcorr: dict[int, float] = {}
    for pair in pairs:
        xcorr[group[pair.i]] = min(xcorr.get(group[pair.i], 1.0), pair.xcorr)
    rows = manifest.reset_index(drop=True)
    return {
        "method": "landmark-hash candidates (>= {} matching hashes at one offset), confirmed by "
                  "max normalised cross-correlation at {} Hz >= {}".format(
                      duplicates.MIN_MATCHES, duplicates.RATE, duplicates.XCORR_THRESHOLD),
        "pairs": len(pairs),
        "groups": [{"paths": rows["path"].iloc[clips].tolist(),
                    "subjects": sorted(set(rows["subject_id"].iloc[clips])),
                    "labels": sorted(set(rows["label"].iloc[clips])),
                    "split": rows["split"].iloc[clips[0]],
                    "min_xcorr": xcorr[g]}
                   for g, clips in sorted(members.items())],
    }


def combine(src_dir: Path, out: Path, sample_rate: int, quality: QualityConfig,
            split: SplitConfig, seed: int) -> dict:
    labels = read_csv_cells(src_dir / "labels.csv")
    with atomic_dir(out) as tmp:
        kept, quarantined, prints = [], [], []
        for row in progress_bar(labels.to_dict("records"), desc="combine", unit="clip"):
            clip = wav_path(row["path"])
            result = process_clip(src_dir / row["path"], tmp / "clips" / clip, sample_rate, quality)
            if "reason" in result:
                quarantined.append({"path": row["path"], "label": row["label"],
                                    "source": row["source"], **result})
            else:
                prints.append(clip_fingerprint(tmp / "clips" / clip))
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
        pairs = near_duplicate_pairs(tmp / "clips", manifest, prints, sample_rate)
        linked = [(manifest["subject_id"].iloc[p.i], manifest["subject_id"].iloc[p.j])
                  for p in pairs]
        manifest["split"] = split_subjects(manifest, split, seed, linked)
        write_csv(manifest, tmp / "manifest.csv")
        quarantine = pd.DataFrame(quarantined,
                                  columns=["path", "label", "source", "reason", "detail"])
        write_csv(quarantine, tmp / "quarantine.csv")
        summary = {**summarize(manifest, quarantine, sample_rate),
                   "held_out_sources": sorted(split.held_out_sources),
                   "near_duplicates": duplicate_report(manifest, pairs)}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"combine: kept {len(manifest)} clips, quarantined {len(quarantine)} "
          f"{summary['quarantined_by_reason']}; {len(pairs)} near-duplicate pair(s) "
          "share a subject")
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
        "quarantined_by_reason": {k: int(v)
                                  for k, v in quarantine["reason"].value_counts().items()},
    }


def main(argv: list[str] | None = None) -> None:
    parser, p = stage_parser("combine", "combine", __doc__)
    path_option(parser, "--in", p.paths.fetched, "fetch's folder (labels.csv + clips)", "src")
    path_option(parser, "--out", p.paths.combined, "folder to write")
    args = parser.parse_args(argv)
    try:
        combine(args.src, args.out, p.audio.sample_rate, p.data.quality, p.data.split, p.seed)
    except (SplitError, TooManyQuarantined) as exc:  # the data, not the code: one line
        raise SystemExit(f"combine: {exc}") from None


if __name__ == "__main__":
    main()
