"""Stage fetch: gather every configured source into build/fetched/ with one validated labels.csv.

Each source writes under build/fetched/<source>/; paths in labels.csv are relative to
build/fetched/, and text that starts like a spreadsheet formula is written with a leading
quote (coughlab.escape), which combine reads back off. The whole folder is replaced
atomically, so a failed download or a bad labels file leaves the previous output (or none),
never a half-written one.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from coughlab.atomic import atomic_dir
from coughlab.escape import write_csv
from coughlab.sources import LabelsError, get_source, validate_labels
from coughlab.stages.cli import path_option, stage_parser


def fetch(sources: list[str], data_cfg, out: Path) -> pd.DataFrame:
    if not sources:
        raise ValueError("data.sources is empty: name at least one source, e.g. [local]")
    with atomic_dir(out) as tmp:
        frames = []
        for name in sources:
            df = get_source(name)(tmp / name, data_cfg)
            df["path"] = name + "/" + df["path"]
            frames.append(df)
            print(f"fetch: {name}: {len(df)} clips")
        labels = validate_labels(pd.concat(frames, ignore_index=True), tmp, f"{out}/labels.csv")
        write_csv(labels, tmp / "labels.csv")
    return labels


def main(argv: list[str] | None = None) -> None:
    parser, params = stage_parser("fetch", "fetch", __doc__)
    path_option(parser, "--out", params.paths.fetched, "folder to write: clips + labels.csv")
    args = parser.parse_args(argv)
    try:
        fetch(params.data.sources, params.data, args.out)
    except LabelsError as err:  # the user's labels: what is wrong, where, never a traceback
        raise SystemExit(f"fetch: {err}") from None


if __name__ == "__main__":
    main()
