"""Where labelled recordings come from.

A source is a function `fetch(dest, data_cfg) -> DataFrame`: it puts audio files under `dest`
and returns one row per clip with the columns in `REQUIRED_COLUMNS` (plus optional ones such as
`channel`), `path` relative to `dest`. The fetch stage validates every source's rows the same
way (`validate_labels`) before anything downstream sees them.

A source may add `person_fingerprint`: equal for recordings whose person-describing metadata
(age, gender, history, symptoms: everything but ids and dates) is identical, so that combine
keeps possible recordings of one person in one split.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Callable

import pandas as pd

from coughlab import LABELS
from coughlab.config import DataConfig

REQUIRED_COLUMNS = ["path", "label", "subject_id", "source"]
FINGERPRINT = "person_fingerprint"

SourceFetch = Callable[[Path, DataConfig], pd.DataFrame]
SOURCES: dict[str, SourceFetch] = {}


class LabelsError(ValueError):
    """labels.csv (or a source's metadata) is not usable; the message lists every problem."""


def register(name: str):
    def wrap(fn: SourceFetch) -> SourceFetch:
        SOURCES[name] = fn
        return fn
    return wrap


def get_source(name: str) -> SourceFetch:
    try:
        return SOURCES[name]
    except KeyError:
        known = ", ".join(sorted(SOURCES))
        raise LabelsError(f"unknown data source {name!r}; known sources: {known}") from None


def require_columns(df: pd.DataFrame, columns: list[str], what: str) -> None:
    """Fail naming every missing column, before a KeyError from deep inside a loop would."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise LabelsError(f"{what}: missing column(s) {missing}; required: {columns}; "
                          f"found: {list(df.columns)}")


def person_fingerprint(source: str, metadata: dict[str, str]) -> str:
    """A short key of a person's metadata; "" when it says nothing (every value blank)."""
    values = {k: str(v).strip().lower() for k, v in sorted(metadata.items())}
    if not any(values.values()):
        return ""
    blob = json.dumps(values, sort_keys=True).encode()
    return f"{source}:{hashlib.sha1(blob).hexdigest()[:16]}"


def normalise_path(path: str) -> str:
    """One spelling per file: `./clips/a.wav` and `clips//./a.wav` are `clips/a.wav`."""
    return str(PurePosixPath(path)) if path else path


def validate_labels(df: pd.DataFrame, root: Path, what: str = "labels.csv") -> pd.DataFrame:
    """Check schema, label values, and that each path is a file inside `root`.

    Paths are normalised first, so one file cannot be listed twice under two spellings (nor
    twice through a link: duplicates are found on the resolved file too). Paths that are
    absolute or climb out of `root` (`../`) are rejected, not resolved: a labels file must
    never make the pipeline read outside its own data. No rows at all is an error too.
    """
    require_columns(df, REQUIRED_COLUMNS, what)
    if df.empty:
        raise LabelsError(f"{what}: lists no clips (only a header); nothing to fetch")
    df = df.copy()
    for col in REQUIRED_COLUMNS:
        df[col] = df[col].astype("string").str.strip()
    df["path"] = df["path"].map(normalise_path, na_action="ignore")
    problems = []
    root = root.resolve()
    resolved = {}
    for line, row in zip(range(2, len(df) + 2), df.itertuples(index=False)):
        where = f"{what} line {line}"
        if any(pd.isna(getattr(row, c)) or getattr(row, c) == "" for c in REQUIRED_COLUMNS):
            problems.append(f"{where}: empty value in {REQUIRED_COLUMNS}")
            continue
        if row.label not in LABELS:
            problems.append(f"{where}: label {row.label!r} is not one of {list(LABELS)}")
        rel = Path(row.path)
        if rel.is_absolute() or ".." in rel.parts:
            problems.append(f"{where}: path {row.path!r} must be relative to the data folder "
                            "without '..'")
            continue
        full = (root / rel).resolve()
        if not full.is_relative_to(root):
            problems.append(f"{where}: path {row.path!r} points outside the data folder")
        elif not full.is_file():
            problems.append(f"{where}: file {row.path!r} does not exist")
        elif full in resolved and resolved[full] != row.path:
            problems.append(f"{where}: {row.path!r} is the same file as {resolved[full]!r}")
        else:
            resolved[full] = row.path
    dupes = df["path"][df["path"].duplicated()].unique()
    problems += [f"{what}: path {p!r} is listed more than once" for p in dupes[:10]]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise LabelsError(f"{len(problems)} problem(s) in {what}:\n  {shown}{more}")
    return df


# Importing the modules registers their sources.
from coughlab.sources import local  # noqa: E402,F401
from coughlab.sources import coswara, coughvid, covid19_cough, virufy  # noqa: E402,F401
