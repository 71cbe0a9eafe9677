"""`coswara`: Project Coswara, IISc Bangalore (github.com/iiscleap/Coswara-Data, CC BY 4.0).

The repository stores each collection date as one tar.gz split into parts,
`<date>/<date>.tar.gz.aa`, `.ab`, ... (concatenated in name order they form one tarball of
`<date>/<id>/<recording>.wav`, 44.1/48 kHz). The parts are streamed straight out of the
downloaded zip and only the recordings named in data.coswara.recordings (cough-heavy,
cough-shallow) are written, as `<date>/<id>/<recording>.wav`. combined_data.csv gives each
participant `id` a `covid_status`: positive_* (mild, moderate, asymp) -> positive; healthy ->
negative; the rest (exposed, recovered, other respiratory illness, ...) is dropped.
subject_id is `coswara-<id>`, so a participant's two coughs stay in one split.
"""
from __future__ import annotations

import io
import re
import shutil
import tarfile
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath
from typing import IO, Iterable

import pandas as pd
from tqdm import tqdm

from coughlab.config import DataConfig
from coughlab.download import fetch_archive
from coughlab.sources import register, require_columns
from coughlab.sources.archive import Archive, clip_table, safe_name

NAME = "coswara"
CHANNEL = "coswara-web"
METADATA = "combined_data.csv"
POSITIVE_PREFIX = "positive_"
NEGATIVE_STATUS = "healthy"
TAR_PART = re.compile(r"^(?P<folder>[^/]+)/[^/]+\.tar\.gz\.[a-z]+$")


@register(NAME)
def fetch_coswara(dest: Path, cfg: DataConfig) -> pd.DataFrame:
    wanted = set(cfg.coswara.recordings)
    with Archive(fetch_archive(NAME, cfg), NAME) as archive:
        metadata = pd.read_csv(archive.open(METADATA), dtype=str, keep_default_na=False)
        labels, dropped = participant_labels(metadata)
        rows = []
        parts_by_folder = tar_parts(archive.names())
        for folder, parts in tqdm(sorted(parts_by_folder.items()), desc=NAME, unit="date"):
            with io.BufferedReader(Concatenated(archive.open(p) for p in parts), 1 << 20) as stream:
                rows += extract_recordings(stream, safe_name(folder, "date folder"), labels,
                                           wanted, dest)
    subjects = {row["subject_id"] for row in rows}
    silent = sum(f"{NAME}-{pid}" not in subjects for pid in labels)
    if silent:
        dropped["participants with no wanted recording"] = silent
    return clip_table(NAME, rows, dropped)


def participant_labels(metadata: pd.DataFrame) -> tuple[dict[str, str], Counter]:
    """`id -> label` for the participants with a usable status; counts of dropped statuses."""
    require_columns(metadata, ["id", "covid_status"], f"{NAME}: {METADATA}")
    labels, dropped = {}, Counter()
    for pid, status in zip(metadata["id"], metadata["covid_status"]):
        if status.startswith(POSITIVE_PREFIX):
            labels[pid] = "positive"
        elif status == NEGATIVE_STATUS:
            labels[pid] = "negative"
        else:
            dropped[f"participants with status {status or '(blank)'}"] += 1
    return labels, dropped


def tar_parts(names: Iterable[str]) -> dict[str, list[str]]:
    """`date folder -> its tarball parts in order` (.aa, .ab, ... sort as they concatenate)."""
    parts = defaultdict(list)
    for name in names:
        match = TAR_PART.match(name)
        if match:
            parts[match["folder"]].append(name)
    return {folder: sorted(names) for folder, names in parts.items()}


def extract_recordings(stream: IO[bytes], folder: str, labels: dict[str, str],
                       wanted: set[str], dest: Path) -> list[dict]:
    """Write the wanted recordings of labelled participants from one date's tarball."""
    rows = []
    with tarfile.open(fileobj=stream, mode="r|gz") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if not member.isfile() or len(parts) < 2:
                continue
            pid, filename = parts[-2], parts[-1]
            recording = PurePosixPath(filename).stem
            if not (filename.endswith(".wav") and recording in wanted and pid in labels):
                continue
            path = f"{folder}/{safe_name(pid, 'participant id')}/{safe_name(filename, 'file')}"
            target = dest / path
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            rows.append({"path": path, "label": labels[pid], "subject_id": f"{NAME}-{pid}",
                         "source": NAME, "channel": CHANNEL, "recording": recording})
    return rows


class Concatenated(io.RawIOBase):
    """Binary streams read back to back as one, each closed once used up (split tarballs)."""

    def __init__(self, streams: Iterable[IO[bytes]]):
        self._streams = iter(streams)
        self._current = next(self._streams, None)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._current is not None:
            n = self._current.readinto(buffer)
            if n:
                return n
            self._current.close()
            self._current = next(self._streams, None)
        return 0

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None
        super().close()
