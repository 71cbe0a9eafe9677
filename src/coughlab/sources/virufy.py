"""`virufy`: Virufy clinical coughs (github.com/virufy/virufy-data).

Licence: CC BY-NC-SA 4.0 with Virufy's addenda (no redistribution without their written
approval; cite their paper, virufy.org/paper): use it for research, and never publish the
fetched clips or commit them anywhere.

16 patients recorded in a hospital, each with a PCR result. clinical/labels.csv has one row
per patient recording: `cough_filename` (e.g. `neg-0421-083-cough-m-53.mp3`, the recording in
clinical/original/<pos|neg>/) and `corona_test` (the PCR result: positive -> positive,
negative -> negative, anything else dropped). data.virufy.clips picks `segmented`
(clinical/segmented/<pos|neg>/<recording>-<n>.mp3: the dataset's own cut of each recording at
silences, non-cough segments removed; 121 clips) or `original` (the whole recordings).
subject_id is `virufy-<recording>`, so all of a recording's segments stay in one split. Two
recordings may still be one person on two days (patients 083 and 095 share age, gender,
history and symptoms): `person_fingerprint` hashes every labels.csv column but the file name
and the result, and combine keeps recordings with equal fingerprints in one split.
Every file used is checked against the committed manifest of the pinned commit.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath

import pandas as pd

from coughlab.config import DataConfig
from coughlab.sources import FINGERPRINT, LabelsError, person_fingerprint, register, require_columns
from coughlab.sources.archive import ExtractBudget, clip_table
from coughlab.sources.pins import github_archive, load_manifest, verify_members

NAME = "virufy"
WHAT = ("16 hospital patients with PCR results, clinical mp3 (data.virufy.clips: segmented or "
        "original)")
LICENCE = "CC BY-NC-SA 4.0 + addendum: no redistribution without Virufy's approval"
# labels.csv columns that name the recording or its result rather than describe the person
NOT_PERSON = {"cough_filename", "corona_test"}
CHANNEL = "virufy-clinical"
LABELS_CSV = "clinical/labels.csv"
PCR_LABELS = {"positive": "positive", "negative": "negative"}
CLIPS = ("segmented", "original")
AUDIO_SUFFIXES = {".mp3", ".wav"}


@register(NAME)
def fetch_virufy(dest: Path, cfg: DataConfig) -> pd.DataFrame:
    clips = cfg.virufy.clips
    if clips not in CLIPS:
        raise LabelsError(f"{NAME}: data.virufy.clips is {clips!r}; choose one of {list(CLIPS)}")
    manifest = load_manifest(cfg.virufy, cfg)
    with github_archive(cfg.virufy, cfg, ExtractBudget(NAME, cfg.extract)) as archive:
        verify_members(archive, manifest, [LABELS_CSV])
        labels = pd.read_csv(archive.open(LABELS_CSV), dtype=str, keep_default_na=False)
        recordings, dropped = recording_labels(labels)
        fingerprints = recording_fingerprints(labels)
        rows = []
        for name in manifest.paths(f"clinical/{clips}/"):
            if PurePosixPath(name).suffix.lower() not in AUDIO_SUFFIXES:
                continue
            recording = recording_of(PurePosixPath(name).stem, recordings)
            if recording is None:
                dropped["clip of an unlabelled recording"] += 1
                continue
            rows.append({"path": name, "label": recordings[recording],
                         "subject_id": f"{NAME}-{recording}", "source": NAME,
                         "channel": CHANNEL, FINGERPRINT: fingerprints[recording]})
        verify_members(archive, manifest, [row["path"] for row in rows])
        for row in rows:
            archive.extract(row["path"], dest)
    return clip_table(NAME, rows, dropped)


def recording_fingerprints(labels: pd.DataFrame) -> dict[str, str]:
    """`recording stem -> fingerprint` of the columns that describe the person."""
    person = [c for c in labels.columns if c not in NOT_PERSON and not c.startswith("Unnamed")
              and c.strip()]
    return {PurePosixPath(row["cough_filename"].strip()).stem:
            person_fingerprint(NAME, {c: row[c] for c in person})
            for row in labels.to_dict("records")}


def recording_labels(labels: pd.DataFrame) -> tuple[dict[str, str], Counter]:
    """`recording stem -> label` from the PCR column; counts of the rows left out."""
    require_columns(labels, ["cough_filename", "corona_test"], f"{NAME}: {LABELS_CSV}")
    recordings, dropped = {}, Counter()
    for filename, result in zip(labels["cough_filename"], labels["corona_test"]):
        label = PCR_LABELS.get(result.strip().lower())
        if label is None:
            dropped[f"PCR result {result or '(blank)'}"] += 1
        else:
            recordings[PurePosixPath(filename.strip()).stem] = label
    return recordings, dropped


def recording_of(stem: str, recordings: dict[str, str]) -> str | None:
    """The labelled recording a clip comes from: itself, or `<recording>-<n>` for a segment."""
    if stem in recordings:
        return stem
    base, _, index = stem.rpartition("-")
    return base if index.isdigit() and base in recordings else None
