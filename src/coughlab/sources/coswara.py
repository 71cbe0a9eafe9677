"""`coswara`: Project Coswara, IISc Bangalore (github.com/iiscleap/Coswara-Data, CC BY 4.0).

Pinned at commit 4942c97e (the licence is CC BY 4.0 from 4ebe2c76, 2023-05-23, on; before it
was CC BY-NC-ND 4.0). The repository is many GB, so fetch downloads only what it needs, file
by file from `data.coswara.url` (raw.githubusercontent.com/<repo>/<commit>/<path>), several at
once (`data.download.workers`), resumable, each checked against its git blob sha1 in the
committed manifest: combined_data.csv and, for each collection date in `data.coswara.dates`
(empty: all), the parts `<date>/<date>.tar.gz.aa`, `.ab`, ... (concatenated in name order
they form one tarball of `<date>/<id>/<recording>.wav`, 44.1/48 kHz). The tarballs are
streamed, within the `data.extract` caps, and only the recordings named in
data.coswara.recordings (cough-heavy, cough-shallow) are written, as
`<date>/<id>/<recording>.wav`. combined_data.csv gives each participant `id` a
`covid_status`: positive_* (mild, moderate, asymp) -> positive; healthy -> negative; the rest
(exposed, recovered, other respiratory illness, ...) is dropped. subject_id is
`coswara-<id>`, so a participant's two coughs stay in one split; `person_fingerprint` covers
the other columns but ids, dates and test results, for people who took part twice.
"""
from __future__ import annotations

import gzip
import io
import re
import tarfile
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import IO, Iterable

import pandas as pd

from coughlab.config import DataConfig
from coughlab.download import cache_dir, fetch_file
from coughlab.progress import progress_bar
from coughlab.sources import FINGERPRINT, LabelsError, person_fingerprint, register, require_columns
from coughlab.sources.archive import (
    CountingReader,
    ExtractBudget,
    UnsafeArchive,
    clip_table,
    safe_name,
    unsafe_member,
)
from coughlab.sources.pins import Manifest, load_manifest

NAME = "coswara"
WHAT = ("44.1/48 kHz wav per participant (data.coswara.recordings), covid_status from "
        "combined_data.csv")
LICENCE = "CC BY 4.0 (from commit 4ebe2c76 on)"
CHANNEL = "coswara-web"
METADATA = "combined_data.csv"
POSITIVE_PREFIX = "positive_"
NEGATIVE_STATUS = "healthy"
TAR_PART = re.compile(r"^(?P<folder>[^/]+)/[^/]+\.tar\.gz\.[a-z]+$")
# combined_data.csv columns that identify a visit or its result rather than the person
NOT_PERSON = re.compile(r"^(id|covid_status|test_status|.*date.*)$", re.IGNORECASE)


@register(NAME)
def fetch_coswara(dest: Path, cfg: DataConfig) -> pd.DataFrame:
    wanted = set(cfg.coswara.recordings)
    manifest = load_manifest(cfg.coswara, cfg)
    parts_by_date = select_dates(tar_parts(manifest.paths()), cfg.coswara.dates)
    files = download_files(manifest, [METADATA, *sum(parts_by_date.values(), [])], cfg)
    metadata = pd.read_csv(files[METADATA], dtype=str, keep_default_na=False)
    labels, dropped = participant_labels(metadata)
    fingerprints = participant_fingerprints(metadata)
    budget = ExtractBudget(NAME, cfg.extract)
    rows = []
    for date, parts in progress_bar(sorted(parts_by_date.items()), desc=f"{NAME} extracting",
                                    unit="date"):
        rows += extract_date([files[p] for p in parts], safe_name(date, "date folder"), labels,
                             wanted, dest, budget)
    for row in rows:
        row[FINGERPRINT] = fingerprints.get(row["subject_id"].removeprefix(f"{NAME}-"), "")
    subjects = {row["subject_id"] for row in rows}
    silent = sum(f"{NAME}-{pid}" not in subjects for pid in labels)
    if silent:
        dropped["participants with no wanted recording"] = silent
    return clip_table(NAME, rows, dropped)


def select_dates(parts_by_date: dict[str, list[str]], dates: list[str]) -> dict[str, list[str]]:
    """The dates asked for (all when none are); an unknown date is an error listing the known."""
    if not dates:
        return parts_by_date
    unknown = sorted(set(map(str, dates)) - set(parts_by_date))
    if unknown:
        raise LabelsError(f"{NAME}: data.coswara.dates has {unknown}, not collection dates at "
                          f"this commit; known: {sorted(parts_by_date)}")
    return {d: parts_by_date[d] for d in sorted(set(map(str, dates)))}


def download_files(manifest: Manifest, paths: list[str], cfg: DataConfig) -> dict[str, Path]:
    """Download `paths` of the pinned commit into the cache, verified, several at once."""
    folder = cache_dir(cfg) / f"{manifest.repo.replace('/', '_')}@{manifest.commit}"
    for path in paths:
        if unsafe_member(path):
            raise UnsafeArchive(f"{NAME}: refusing manifest path {path!r}")
    local = {path: folder / path for path in paths}
    lock, done = threading.Lock(), [0]
    with progress_bar(desc=f"{NAME} download", unit="B", unit_scale=True, unit_divisor=1024) as bar:
        bar.set_postfix_str(f"0/{len(paths)} files")

        def advance(n: int) -> None:
            with lock:
                bar.update(n)

        def one(path: str) -> None:
            url = cfg.coswara.url.format(repo=manifest.repo, commit=manifest.commit, path=path)
            fetch_file(url, local[path], manifest.pin(path), cfg.download, progress=advance)
            with lock:
                done[0] += 1
                bar.set_postfix_str(f"{done[0]}/{len(paths)} files")

        with ThreadPoolExecutor(max_workers=max(1, cfg.download.workers)) as pool:
            futures = [pool.submit(one, path) for path in paths]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return local


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


def participant_fingerprints(metadata: pd.DataFrame) -> dict[str, str]:
    person = [c for c in metadata.columns if not NOT_PERSON.match(c)]
    return {row["id"]: person_fingerprint(NAME, {c: row[c] for c in person})
            for row in metadata.to_dict("records")}


def tar_parts(names: Iterable[str]) -> dict[str, list[str]]:
    """`date folder -> its tarball parts in order` (.aa, .ab, ... sort as they concatenate)."""
    parts = defaultdict(list)
    for name in names:
        match = TAR_PART.match(name)
        if match:
            parts[match["folder"]].append(name)
    return {folder: sorted(names) for folder, names in parts.items()}


def extract_date(parts: list[Path], folder: str, labels: dict[str, str], wanted: set[str],
                 dest: Path, budget: ExtractBudget) -> list[dict]:
    """Stream one date's split tarball, writing the wanted recordings of labelled people.

    Compressed and uncompressed bytes are counted so that a tarball inflating past
    data.extract.max_ratio is refused while it is read, wanted member or not.
    """
    compressed = CountingReader(Concatenated(open(p, "rb") for p in parts))
    unpacked = CountingReader(
        gzip.GzipFile(fileobj=io.BufferedReader(compressed, 1 << 20)),
        lambda n: budget.check_ratio(f"{folder} tarball", n, compressed.count))
    with io.BufferedReader(unpacked, 1 << 20) as stream:
        return extract_recordings(stream, folder, labels, wanted, dest, budget)


def extract_recordings(stream: IO[bytes], folder: str, labels: dict[str, str],
                       wanted: set[str], dest: Path, budget: ExtractBudget) -> list[dict]:
    """Write the wanted recordings of labelled participants from one date's tarball."""
    rows = []
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            budget.count_member(member.name)
            parts = PurePosixPath(member.name).parts
            if not member.isfile() or len(parts) < 2:
                continue
            pid, filename = parts[-2], parts[-1]
            recording = PurePosixPath(filename).stem
            if not (filename.endswith(".wav") and recording in wanted and pid in labels):
                continue
            path = f"{folder}/{safe_name(pid, 'participant id')}/{safe_name(filename, 'file')}"
            with tar.extractfile(member) as src:
                budget.copy(src, dest / path, member.name, member.size)
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
