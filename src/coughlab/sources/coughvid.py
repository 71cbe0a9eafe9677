"""`coughvid`: COUGHVID crowdsourced coughs (Zenodo record 4498364, `public_dataset.zip`, CC BY 4.0).

The zip holds `public_dataset/` with `<uuid>.webm` (Opus) or `<uuid>.ogg` (Vorbis) recordings,
a `<uuid>.json` per recording, and metadata_compiled.csv with one row per uuid. The label is
the self-reported `status`: COVID-19 -> positive, healthy -> negative; `symptomatic` and blank
statuses are dropped. So are recordings whose `cough_detected` score (the dataset's own cough
detector, 0-1) is below data.coughvid.min_cough_detected: many uploads hold speech or noise.
Each upload has its own uuid and no participant id, so subject_id is `coughvid-<uuid>`.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath

import pandas as pd
from tqdm import tqdm

from coughlab.config import DataConfig
from coughlab.download import fetch_archive
from coughlab.sources import register, require_columns
from coughlab.sources.archive import Archive, clip_table

NAME = "coughvid"
CHANNEL = "coughvid-web"
METADATA = "metadata_compiled.csv"
STATUS_LABELS = {"COVID-19": "positive", "healthy": "negative"}
AUDIO_SUFFIXES = {".webm", ".ogg"}


@register(NAME)
def fetch_coughvid(dest: Path, cfg: DataConfig) -> pd.DataFrame:
    with Archive(fetch_archive(NAME, cfg), NAME) as archive:
        metadata = pd.read_csv(archive.open(METADATA), dtype={"uuid": str, "status": str})
        rows, dropped = label_rows(metadata, audio_by_uuid(archive.names()),
                                   cfg.coughvid.min_cough_detected)
        for row in tqdm(rows, desc=NAME, unit="clip"):
            archive.extract(row["path"], dest / row["path"])
    return clip_table(NAME, rows, dropped)


def audio_by_uuid(names: list[str]) -> dict[str, str]:
    """`uuid -> file name` for the audio files at the top of the archive."""
    return {PurePosixPath(n).stem: n for n in names
            if "/" not in n and PurePosixPath(n).suffix in AUDIO_SUFFIXES}


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
