"""`coughvid`: COUGHVID v3 crowdsourced coughs (Zenodo record 7024894, `public_dataset_v3.zip`,
CC BY 4.0).

The zip (2,297,542,075 bytes, pinned by the md5 Zenodo publishes) holds `coughvid_20211012/`
with `<uuid>.webm` (Opus), `<uuid>.ogg` (Vorbis) or `<uuid>.wav` recordings, a `<uuid>.json`
per recording, and metadata_compiled.csv with one row per uuid. The label is
the self-reported `status`: COVID-19 -> positive, healthy -> negative; `symptomatic` and blank
statuses are dropped. So are recordings whose `cough_detected` score (the dataset's own cough
detector, 0-1) is below data.coughvid.min_cough_detected: many uploads hold speech or noise.
Each upload has its own uuid and no participant id, so subject_id is `coughvid-<uuid>`.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath

import pandas as pd

from coughlab.config import DataConfig
from coughlab.download import Pin, cache_dir, cache_path, fetch_file
from coughlab.progress import progress_bar
from coughlab.sources import LabelsError, register, require_columns
from coughlab.sources.archive import Archive, ExtractBudget, clip_table

NAME = "coughvid"
WHAT = "crowdsourced webm/ogg/wav coughs, self-reported status, cough_detected score"
LICENCE = "CC BY 4.0"
CHANNEL = "coughvid-web"
METADATA = "metadata_compiled.csv"
STATUS_LABELS = {"COVID-19": "positive", "healthy": "negative"}
# One recording per uuid; should an upload come in two formats, the first of these wins.
AUDIO_SUFFIXES = (".webm", ".ogg", ".wav")


@register(NAME)
def fetch_coughvid(dest: Path, cfg: DataConfig) -> pd.DataFrame:
    with Archive(zenodo_archive(cfg), ExtractBudget(NAME, cfg.extract)) as archive:
        metadata = pd.read_csv(archive.open(METADATA), dtype={"uuid": str, "status": str})
        rows, dropped = label_rows(metadata, audio_by_uuid(archive.names()),
                                   cfg.coughvid.min_cough_detected)
        for row in progress_bar(rows, desc=NAME, unit="clip"):
            archive.extract(row["path"], dest)
    return clip_table(NAME, rows, dropped)


def zenodo_archive(cfg: DataConfig) -> Path:
    """The cached zip, downloaded and checked against Zenodo's md5 and size."""
    settings = cfg.coughvid
    if not settings.md5:
        raise LabelsError(f"{NAME}: data.coughvid.md5 is empty; the archive is only used "
                          "pinned (Zenodo lists each file's md5 on the record page)")
    return fetch_file(settings.url, cache_path(cache_dir(cfg), settings.url),
                      Pin("md5", settings.md5, settings.size or None), cfg.download)


def audio_by_uuid(names: list[str]) -> dict[str, str]:
    """`uuid -> file name` for the audio files at the top of the archive."""
    audio = {}
    for suffix in reversed(AUDIO_SUFFIXES):
        audio.update({PurePosixPath(n).stem: n for n in names
                      if "/" not in n and PurePosixPath(n).suffix == suffix})
    return audio


def label_rows(metadata: pd.DataFrame, audio: dict[str, str],
               min_cough_detected: float) -> tuple[list[dict], Counter]:
    """One row per usable recording; counts of the others by reason."""
    require_columns(metadata, ["uuid", "cough_detected", "status"], f"{NAME}: {METADATA}")
    scores = pd.to_numeric(metadata["cough_detected"], errors="coerce")
    rows, dropped = [], Counter()
    for uuid, status, score in zip(metadata["uuid"], metadata["status"], scores):
        label = STATUS_LABELS.get(status)
        if label is None:
            dropped[f"status {status}" if isinstance(status, str) else "no status"] += 1
        elif not score >= min_cough_detected:  # NaN scores fail too
            dropped[f"cough_detected < {min_cough_detected}"] += 1
        elif uuid not in audio:
            dropped["audio missing"] += 1
        else:
            rows.append({"path": audio[uuid], "label": label, "subject_id": f"{NAME}-{uuid}",
                         "source": NAME, "channel": CHANNEL, "cough_detected": score})
    return rows, dropped
