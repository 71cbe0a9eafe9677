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
import os
from pathlib import Path, PurePosixPath
from typing import Callable, Sequence

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


def quoted(path: str, limit: int = 80) -> str:
    """A path for a one-line message: repr (NULs, newlines escaped), long ones shortened."""
    if len(path) <= limit:
        return repr(path)
    return f"{path[:limit]!r}... ({len(path)} characters)"


def listed(numbers: list[int]) -> str:
    """[2, 4, 5] -> "2, 4 and 5"."""
    return ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}"


def path_problem(root: Path, rel: str) -> tuple[str | None, tuple[int, int] | None]:
    """(why `rel` is not a file inside `root`, None) or (None, the file's device and inode).

    Whatever the path holds (a NUL byte, thousands of characters, a component longer than the
    file system allows, a link loop), the answer is a reason, never an exception.
    """
    if "\0" in rel:
        return f"path {quoted(rel)} contains a NUL byte", None
    path = Path(rel)
    if path.is_absolute() or ".." in path.parts:
        return f"path {quoted(rel)} must be relative to the data folder without '..'", None
    try:
        full = (root / path).resolve()
        if not full.is_relative_to(root):
            return f"path {quoted(rel)} points outside the data folder", None
        if not full.is_file():
            return f"file {quoted(rel)} does not exist", None
        st = os.stat(full)
    except OSError as err:
        return f"path {quoted(rel)} cannot be used: {err.strerror or err}", None
    except (RuntimeError, ValueError) as err:  # a link loop (RuntimeError before Python 3.13)
        return f"path {quoted(rel)} cannot be used: {err}", None
    return None, (st.st_dev, st.st_ino)


def validate_labels(df: pd.DataFrame, root: Path, what: str = "labels.csv",
                    lines: Sequence[int] | None = None) -> pd.DataFrame:
    """Check schema, label values, and that each path is a file inside `root`.

    Paths are normalised first, so one file cannot be listed twice under two spellings, nor
    twice through a link of any kind: duplicates are found by device and inode, so symbolic
    and hard links to one file are one file. Paths that are absolute or climb out of `root`
    (`../`) are rejected, not resolved: a labels file must never make the pipeline read
    outside its own data. Every problem is one line naming the file, line and reason: `lines`
    are the physical lines the rows start on (a quoted field may hold newlines), by default
    one a row after the header. No rows at all is an error too.
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
    lines = list(range(2, len(df) + 2)) if lines is None else list(lines)
    seen = {}  # (device, inode) -> the first path listing that file, and its line
    for line, row in zip(lines, df.itertuples(index=False)):
        where = f"{what} line {line}"
        if any(pd.isna(getattr(row, c)) or getattr(row, c) == "" for c in REQUIRED_COLUMNS):
            problems.append(f"{where}: empty value in {REQUIRED_COLUMNS}")
            continue
        if row.label not in LABELS:
            problems.append(f"{where}: label {quoted(row.label)} is not one of {list(LABELS)}")
        problem, file_id = path_problem(root, row.path)
        if problem is not None:
            problems.append(f"{where}: {problem}")
        elif file_id in seen and seen[file_id][0] != row.path:
            first, first_line = seen[file_id]
            problems.append(f"{where}: {quoted(row.path)} is the same file as "
                            f"{quoted(first)} (line {first_line})")
        else:
            seen.setdefault(file_id, (row.path, line))
    on_lines = pd.Series(lines, index=df.index).groupby(df["path"], sort=False).agg(list)
    problems += [f"{what}: path {quoted(p)} is listed more than once: lines {listed(found)}"
                 for p, found in on_lines.items() if len(found) > 1][:10]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise LabelsError(f"{len(problems)} problem(s) in {what}:\n  {shown}{more}")
    return df


# Importing the modules registers their sources.
from coughlab.sources import coswara, coughvid, covid19_cough, local, virufy  # noqa: E402,F401
