"""`local`: the labelled-recordings zone in data/ (tracked by data.dvc).

The zone is one labelled folder (a labels.csv at its top) or several: then every immediate
sub-folder holding a labels.csv is one, read in name order with its paths prefixed by the
sub-folder's name, so a public set and your own recordings can sit side by side. Each folder is
checked as a zone of its own (no path reaches out of it), its rows keep the `source` its
labels.csv gives, and its licence files (ATTRIBUTION*, LICENSE*, README* at its top) are copied
along, so a licence travels with its data.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import sys
from pathlib import Path

import pandas as pd

from coughlab.config import DataConfig
from coughlab.sources import LabelsError, path_problem, quoted, register, validate_labels

WHAT = "your labelled recordings in data.local_dir with a labels.csv (default: the embedded sample)"
LICENCE = "yours"
LICENCE_FILES = ("ATTRIBUTION", "LICENSE", "README")


@register("local")
def fetch_local(dest: Path, cfg: DataConfig) -> pd.DataFrame:
    root = Path(cfg.local_dir)
    folders = labelled_folders(root)
    frames, first_seen = [], {}
    for name, folder in folders.items():
        labels_csv = folder / "labels.csv"
        labels, lines = read_labels(labels_csv)
        df = validate_labels(labels, folder, str(labels_csv), lines)
        check_not_listed_elsewhere(folder, df, lines, labels_csv, name, first_seen)
        warn_unlisted(folder, set(df["path"]), f"not in {labels_csv}")
        for rel in [*df["path"], *licence_files(folder)]:
            target = dest / name / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / rel, target)
        frames.append(df.assign(path=(name + "/" if name else "") + df["path"]))
    if "" not in folders:
        warn_unlisted(root, set(), "in no labelled folder (a sub-folder with a labels.csv)",
                      skip=set(folders))
    return pd.concat(frames, ignore_index=True)


def labelled_folders(root: Path) -> dict[str, Path]:
    """{prefix: folder}: {"": root} when root has a labels.csv, else each immediate sub-folder
    holding one, by name; neither is an error naming both layouts."""
    if (root / "labels.csv").is_file():
        return {"": root}
    found = {}
    if root.is_dir():
        found = {sub.name: sub for sub in sorted(root.iterdir(), key=lambda p: p.name)
                 if sub.is_dir() and (sub / "labels.csv").is_file()}
    if not found:
        raise LabelsError(f"{root}/labels.csv not found and no sub-folder of it holds a "
                          "labels.csv: give data.local_dir one labelled folder or a folder of "
                          f"them; `python -m coughlab.sample {root}` writes the embedded sample, "
                          "`dvc pull data.dvc` fetches the tracked one")
    return found


def licence_files(folder: Path) -> list[str]:
    """The ATTRIBUTION*, LICENSE* and README* files at the top of a labelled folder; one that
    leads out of the folder (a link) is refused, as a clip's path would be."""
    names = sorted(p.name for p in folder.iterdir()
                   if p.name.upper().startswith(LICENCE_FILES) and not p.is_dir())
    for name in names:
        problem, _ = path_problem(folder.resolve(), name)
        if problem is not None:
            raise LabelsError(f"{folder}: licence file {problem}")
    return names


def check_not_listed_elsewhere(folder: Path, df: pd.DataFrame, lines: list[int], labels_csv: Path,
                               prefix: str, first_seen: dict) -> None:
    """One file (a hard link) listed by two labelled folders is refused, as within one folder:
    `first_seen` maps (device, inode) to the zone path and labels.csv line that listed it."""
    for line, rel in zip(lines, df["path"]):
        stat = os.stat(folder / rel)
        listed_as = f"{prefix}/{rel}" if prefix else rel
        first = first_seen.setdefault((stat.st_dev, stat.st_ino), (listed_as, labels_csv, line))
        if first[1] != labels_csv:
            raise LabelsError(f"{labels_csv} line {line}: {quoted(rel)} is the same file as "
                              f"{quoted(first[0])} ({first[1]} line {first[2]})")


AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".webm", ".m4a", ".mp4", ".aac"}
SHOWN_UNLISTED = 5


def warn_unlisted(root: Path, listed: set[str], why: str, skip: set[str] = frozenset()
                  ) -> list[str]:
    """Audio files under `root` that are not `listed` (nor under a sub-folder in `skip`):
    fetch leaves them out, so say so, and `why`."""
    unlisted = sorted(rel for rel in (p.relative_to(root).as_posix() for p in root.rglob("*")
                                      if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
                      if rel not in listed and rel.split("/")[0] not in skip)
    if unlisted:
        more = (f" and {len(unlisted) - SHOWN_UNLISTED} more" if len(unlisted) > SHOWN_UNLISTED
                else "")
        print(f"fetch: WARNING: {len(unlisted)} audio file(s) in {root} are {why} and are left "
              f"out: {', '.join(unlisted[:SHOWN_UNLISTED])}{more}; add a row for each to use it",
              file=sys.stderr)
    return unlisted


def read_labels(labels_csv: Path) -> tuple[pd.DataFrame, list[int]]:
    """labels.csv as strings, with the physical line each row starts on (a quoted field may
    hold newlines); a file that is not UTF-8 text CSV with one name per column, and as many
    fields on every row, fails naming the line and why."""
    raw = labels_csv.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise LabelsError(f"{labels_csv} line {line}: not UTF-8 text (byte "
                          f"0x{raw[err.start]:02x} at offset {err.start}); "
                          "save it as UTF-8") from None
    try:
        header, rows, lines = csv_rows(text)
    except CsvProblem as problem:
        raise LabelsError(f"{labels_csv} line {problem.line}: {problem}") from None
    if header is None:
        raise LabelsError(f"{labels_csv} is empty: it needs a header "
                          "(path,label,subject_id,source,channel) and one row per clip")
    return pd.DataFrame(rows, columns=header), lines


class CsvProblem(ValueError):
    """Why a CSV file cannot be read as one table, and the line where that shows."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


def csv_rows(text: str) -> tuple[list[str] | None, list[list[str]], list[int]]:
    """(header, rows, the line each row starts on) by the csv module's strict reading; blank
    lines are skipped. The first problem is a CsvProblem: one clear error, where a trailing
    comma on every row would otherwise shift every column."""
    reader = csv.reader(io.StringIO(text), strict=True)
    header, rows, lines, start = None, [], [], 1
    try:
        for row in reader:
            if row:
                if header is None:
                    header = checked_header(row)
                elif len(row) != len(header):
                    raise CsvProblem(start, f"not a readable CSV row ({width(row, header)})")
                else:
                    rows.append(row)
                    lines.append(start)
            start = reader.line_num + 1
    except csv.Error as err:
        raise CsvProblem(start, f"not a readable CSV row ({err})") from None
    return header, rows, lines


def checked_header(names: list[str]) -> list[str]:
    """The header, refused when a column has no name or a name twice (which column would
    `label` be?)."""
    first: dict[str, int] = {}
    for number, name in enumerate(names, start=1):
        if not name.strip():
            hint = " (a trailing comma?)" if number == len(names) else ""
            raise CsvProblem(1, f"column {number} has no name{hint}")
        if name.strip() in first:
            raise CsvProblem(1, f"column {name.strip()!r} appears twice (columns "
                             f"{first[name.strip()]} and {number})")
        first[name.strip()] = number
    return names


def width(row: list[str], header: list[str]) -> str:
    """A row's field count against the header's, with the likely cause when it is commas."""
    extra = len(row) - len(header)
    said = f"{len(row)} fields, the header has {len(header)}"
    if extra > 0 and not any(field.strip() for field in row[len(header):]):
        said += " (a trailing comma?)" if extra == 1 else " (trailing commas?)"
    return said
