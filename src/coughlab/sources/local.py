"""`local`: the labelled-recordings zone in data/ (tracked by data.dvc)."""
from __future__ import annotations

import shutil
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
    try:
        df = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise LabelsError(f"{labels_csv} is empty: it needs a header "
                          "(path,label,subject_id,source,channel) and one row per clip") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise LabelsError(f"{labels_csv}: not a readable CSV ({err})") from err
    df = validate_labels(df, root, str(labels_csv))
    for rel in df["path"]:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, target)
    return df
