"""What the downloaded public sources share: reading a zip in place, and reporting what was kept.

Archives wrap their content in one folder (GitHub: `<repo>-<commit>/`, Zenodo's COUGHVID:
`public_dataset/`); `Archive` names members relative to it, so sources can use the paths
the datasets document (`metadata.json`, `clinical/labels.csv`) and write out only the files
they keep instead of unpacking whole multi-GB archives.
"""
from __future__ import annotations

import shutil
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import IO

import pandas as pd

from coughlab.sources import LabelsError

# Finder metadata that macOS zip tools add next to the real top-level folder.
IGNORED_PREFIXES = ("__MACOSX/",)


class Archive:
    def __init__(self, path: Path | str, source: str):
        self.source = source
        try:
            self._zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile as err:
            raise LabelsError(f"{source}: {path} is not a zip archive ({err})") from err
        infos = [i for i in self._zip.infolist()
                 if not i.is_dir() and not i.filename.startswith(IGNORED_PREFIXES)]
        prefix = _common_folder([i.filename for i in infos])
        self._members = {i.filename[len(prefix):]: i for i in infos}

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc) -> None:
        self._zip.close()

    def names(self) -> list[str]:
        return sorted(self._members)

    def open(self, name: str) -> IO[bytes]:
        try:
            info = self._members[name]
        except KeyError:
            raise LabelsError(f"{self.source}: the archive has no {name}; is the configured URL "
                              "the dataset's archive?") from None
        return self._zip.open(info)

    def extract(self, name: str, target: Path) -> None:
        """Copy member `name` to `target` (streamed: members can be large)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        with self.open(name) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def _common_folder(names: list[str]) -> str:
    """`top/` when every name lives under the same top folder, else ``."""
    tops = {PurePosixPath(n).parts[0] for n in names if "/" in n}
    if len(tops) == 1 and all("/" in n for n in names):
        return tops.pop() + "/"
    return ""


def safe_name(part: str, what: str) -> str:
    """A path component taken from archive data, refused if it could leave its folder."""
    if part in ("", ".", "..") or "/" in part or "\\" in part:
        raise LabelsError(f"refusing unsafe {what} {part!r} from an archive")
    return part


def clip_table(source: str, rows: list[dict], dropped: Counter) -> pd.DataFrame:
    """The rows a source kept, after saying what it dropped and why; none kept is an error."""
    reasons = dict(dropped) or "nothing"
    if not rows:
        raise LabelsError(f"{source}: no clips left to use (dropped: {reasons}); check the "
                          "archive and this source's settings in conf/data/")
    print(f"{source}: kept {len(rows)} clips; dropped {reasons}")
    return pd.DataFrame(rows)
