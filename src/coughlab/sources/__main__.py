"""List the data sources: what each is, its licence, pinned version, size, and whether it is cached.

    python -m coughlab.sources            # reads params.yaml when run in the repository
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coughlab.config import PARAMS_FILE, DataConfig, load_params
from coughlab.download import cache_dir, cache_path
from coughlab.sources import SOURCES
from coughlab.sources.coswara import METADATA as COSWARA_METADATA
from coughlab.sources.coswara import select_dates, tar_parts
from coughlab.sources.pins import PinMismatch, load_manifest


def mib(n: int) -> str:
    return f"{n / 2 ** 20:,.1f} MiB"


def describe(name: str, cfg: DataConfig) -> dict[str, str]:
    """One source's row: what, licence, version, size, cached."""
    module = sys.modules[SOURCES[name].__module__]
    row = {"source": name, "what": module.WHAT, "licence": module.LICENCE}
    if name == "local":
        labels = Path(cfg.local_dir) / "labels.csv"
        row.update(version=f"{cfg.local_dir}/ (data.dvc)", size="-",
                   cached="yes" if labels.is_file() else f"no ({labels} missing)")
    elif name == "coughvid":
        c = cfg.coughvid
        path = cache_path(cache_dir(cfg), c.url)
        done = path.is_file() and path.stat().st_size == c.size
        row.update(version=f"{c.url} md5 {c.md5}",
                   size=f"{c.size:,} bytes ({mib(c.size)}), one zip",
                   cached=f"yes: {path}" if done else "no")
    else:
        row.update(github_row(name, cfg))
    return row


def github_row(name: str, cfg: DataConfig) -> dict[str, str]:
    pin = getattr(cfg, name.replace("-", "_"))
    try:
        manifest = load_manifest(pin, cfg)
    except PinMismatch as err:
        return {"version": f"{pin.repo}@{pin.commit}", "size": "?", "cached": str(err)}
    version = f"github.com/{pin.repo} @ {pin.commit}"
    if name == "coswara":
        parts = select_dates(tar_parts(manifest.paths()), pin.dates)
        paths = [COSWARA_METADATA, *sum(parts.values(), [])]
        folder = cache_dir(cfg) / f"{pin.repo.replace('/', '_')}@{pin.commit}"
        have = [folder / p for p in paths if (folder / p).is_file()]
        return {"version": version,
                "size": f"{len(paths)} files ({len(parts)} dates), sizes not published",
                "cached": f"{len(have)}/{len(paths)} files, "
                          f"{mib(sum(p.stat().st_size for p in have))}"}
    url = pin.url.format(repo=pin.repo, commit=pin.commit)
    path = cache_path(cache_dir(cfg), url)
    return {"version": version,
            "size": f"one GitHub zip, {len(manifest.blobs)} files pinned by git blob sha1",
            "cached": f"yes: {path} ({mib(path.stat().st_size)})" if path.is_file() else "no"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m coughlab.sources",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=PARAMS_FILE,
                        help="params.yaml to read (default: %(default)s; run from the repository)")
    args = parser.parse_args(argv)
    cfg = load_params(args.params).data
    selected = set(cfg.sources)
    for name in sorted(SOURCES):
        row = describe(name, cfg)
        mark = " (selected in data.sources)" if name in selected else ""
        print(f"{name}{mark}\n" + "".join(f"  {k:8} {row[k]}\n" for k in
                                          ("what", "licence", "version", "size", "cached")))


if __name__ == "__main__":
    main()
