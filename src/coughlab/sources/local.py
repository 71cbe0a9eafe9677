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
    df = validate_labels(read_labels(labels_csv), root, str(labels_csv))
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


def read_labels(labels_csv: Path) -> pd.DataFrame:
    """labels.csv as strings; a file that is not UTF-8 text CSV fails naming the line and why."""
    raw = labels_csv.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise LabelsError(f"{labels_csv} line {line}: not UTF-8 text (byte "
                          f"0x{raw[err.start]:02x} at offset {err.start}); save it as UTF-8") from None
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise LabelsError(f"{labels_csv} is empty: it needs a header "
                          "(path,label,subject_id,source,channel) and one row per clip") from None
    except pd.errors.ParserError as err:
        line, reason = csv_problem(text) or ("?", " ".join(str(err).split()))
        raise LabelsError(f"{labels_csv} line {line}: not a readable CSV row ({reason})") from None


def csv_problem(text: str) -> tuple[int, str] | None:
    """(line where the first bad row starts, why) by the csv module's stricter reading."""
    reader = csv.reader(io.StringIO(text), strict=True)
    start, width = 1, None
    try:
        for row in reader:
            if width is None:
                width = len(row)
            elif len(row) != width:
                return start, f"{len(row)} fields, the header has {width}"
            start = reader.line_num + 1
    except csv.Error as err:
        return start, str(err)
    return None
