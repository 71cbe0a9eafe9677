"""`covid19-cough`: call-center and Telegram coughs (github.com/covid19-cough/dataset, CC0 1.0).

Every file used is checked against its git blob sha1 in the committed manifest of the pinned
commit (coughlab.sources.pins), whatever bytes GitHub's archive zip happens to have.

metadata.json lists every recording raw/<uuid>.mp3 (1324 at the pinned commit):
`covid19` (true -> positive, false -> negative), `source` (call-center: 8 kHz stereo,
telegram: 48 kHz mono; kept as `channel`) and `verified` (PCR-confirmed, kept as a column).
Some audio was uploaded more than once under different names. A group of
byte-identical files whose labels disagree is dropped whole, since nothing says which label is
right; a group that agrees keeps one copy (the first name in sorted order), so the same audio
can never sit in two splits. There are no participant ids upstream: subject_id is
`c19c-<uuid>` (the ids of the shared development copy of this dataset).
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd

from coughlab.config import DataConfig
from coughlab.progress import progress_bar
from coughlab.sources import LabelsError, register
from coughlab.sources.archive import ExtractBudget, clip_table, safe_name
from coughlab.sources.pins import github_archive, load_manifest, verify_members

NAME = "covid19-cough"
WHAT = "call-center (8 kHz stereo) and Telegram (48 kHz mono) mp3, labels from metadata.json"
LICENCE = "CC0 1.0"
SUBJECT_PREFIX = "c19c-"
CHANNELS = {"call-center", "telegram"}
METADATA = "metadata.json"


@register(NAME)
def fetch_covid19_cough(dest: Path, cfg: DataConfig) -> pd.DataFrame:
    manifest = load_manifest(cfg.covid19_cough, cfg)
    with github_archive(cfg.covid19_cough, cfg, ExtractBudget(NAME, cfg.extract)) as archive:
        verify_members(archive, manifest, [METADATA])
        records = json.load(archive.open(METADATA))
        rows, dropped = label_records(records, set(manifest.paths("raw/")))
        verify_members(archive, manifest, [row["path"] for row in rows])
        # verified, so the manifest's blob hash is the content's: equal hash, equal bytes
        digests = {row["path"]: manifest.blobs[row["path"]] for row in rows}
        rows, dropped_dupes = drop_duplicates(rows, digests)
        for row in progress_bar(rows, desc=NAME, unit="clip"):
            archive.extract(row["path"], dest)
    dropped.update(dropped_dupes)
    return clip_table(NAME, rows, dropped)


def label_records(records: list[dict], present: set[str]) -> tuple[list[dict], Counter]:
    """One row per metadata record whose audio is in the archive; reasons for the others."""
    if not isinstance(records, list):
        raise LabelsError(f"{NAME}: metadata.json should be a list of records")
    rows, dropped = [], Counter()
    for record in records:
        filename = safe_name(str(record.get("filename", "")), "file name")
        path = f"raw/{filename}"
        if path not in present:
            dropped["audio missing"] += 1
            continue
        if not isinstance(record.get("covid19"), bool):
            dropped["no covid19 label"] += 1
            continue
        channel = record.get("source")
        if channel not in CHANNELS:
            raise LabelsError(f"{NAME}: {filename} has source {channel!r}, expected {CHANNELS}")
        verified = record.get("verified")
        rows.append({
            "path": path,
            "label": "positive" if record["covid19"] else "negative",
            "subject_id": SUBJECT_PREFIX + Path(filename).stem,
            "source": NAME,
            "channel": channel,
            "verified": "" if verified is None else str(bool(verified)),
            "orig_name": filename,
        })
    return rows, dropped


def drop_duplicates(rows: list[dict], digests: dict[str, str]) -> tuple[list[dict], Counter]:
    """Drop byte-identical groups with disagreeing labels; keep one copy of agreeing groups."""
    groups = defaultdict(list)
    for row in rows:
        groups[digests[row["path"]]].append(row)
    kept, dropped = [], Counter()
    for group in groups.values():
        if len({row["label"] for row in group}) > 1:
            dropped["identical audio, contradictory labels"] += len(group)
            continue
        kept.append(min(group, key=lambda row: row["path"]))
        if len(group) > 1:
            dropped["identical audio, extra copy"] += len(group) - 1
    return sorted(kept, key=lambda row: row["path"]), dropped
