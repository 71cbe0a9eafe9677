"""`local`: the labelled-recordings zone in data/ (tracked by data.dvc)."""
from __future__ import annotations

import csv
import io
import shutil
import sys
from pathlib import Path

import pandas as pd

from coughlab.config import DataConfig
from coughlab.sources import LabelsError, register, validate_labels

WHAT = "your labelled recordings in data.local_dir with a labels.csv (default: the embedded sample)"
LICENCE = "yours"


@register("local")
def fetch_local(dest: Path, cfg: DataConfig) -> pd.DataFrame:
    root = Path(cfg.local_dir)
    labels_csv = root / "labels.csv"
    if not labels_csv.is_file():
        raise LabelsError(f"{labels_csv} not found: run `python -m coughlab.sample {root}` for the "
                          "embedded sample, or `dvc pull data.dvc`")
    labels, lines = read_labels(labels_csv)
    df = validate_labels(labels, root, str(labels_csv), lines)
    warn_unlisted(root, set(df["path"]), labels_csv)
    for rel in df["path"]:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, target)
    return df


AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".webm", ".m4a", ".mp4", ".aac"}
SHOWN_UNLISTED = 5


def warn_unlisted(root: Path, listed: set[str], labels_csv: Path) -> list[str]:
    """Audio files under `root` that labels.csv does not list: fetch leaves them out, so say so."""
    unlisted = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                      and p.relative_to(root).as_posix() not in listed)
    if unlisted:
        more = (f" and {len(unlisted) - SHOWN_UNLISTED} more" if len(unlisted) > SHOWN_UNLISTED
                else "")
        print(f"fetch: WARNING: {len(unlisted)} audio file(s) in {root} are not in {labels_csv} "
              f"and are left out: {', '.join(unlisted[:SHOWN_UNLISTED])}{more}; add a row for "
              "each to use it", file=sys.stderr)
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
