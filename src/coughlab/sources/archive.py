"""What the downloaded public sources share: reading archives safely, and reporting what was kept.

Archives wrap their content in one folder (GitHub: `<repo>-<commit>/`, Zenodo's COUGHVID v3:
`coughvid_20211012/`); `Archive` names members relative to it, so sources can use the paths
the datasets document (`metadata.json`, `clinical/labels.csv`) and write out only the files
they keep instead of unpacking whole multi-GB archives.

Archive content is hostile until checked. Before anything is written, `Archive` refuses a zip
with a member name that could land outside the destination (`..`, absolute, backslashes) or
more members than `data.extract.max_members`; `ExtractBudget` caps what one source writes
(`max_total_bytes`) and how far data may inflate (`max_ratio`, uncompressed / compressed), for
zip members and tar streams alike.
"""
from __future__ import annotations

import io
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import IO, Callable

import pandas as pd

from coughlab.config import ExtractLimits
from coughlab.sources import LabelsError

# Finder metadata that macOS zip tools add next to the real top-level folder.
IGNORED_PREFIXES = ("__MACOSX/",)
CHUNK = 1 << 20
# Ratios are judged once this much has been produced: small text files may compress 100x.
RATIO_FLOOR = 1 << 20


class UnsafeArchive(LabelsError):
    """An archive tries to write outside its destination or to unpack beyond the limits."""


class CorruptArchive(LabelsError):
    """The file is not a readable zip (cut short, or not an archive at all)."""


class ExtractBudget:
    """Caps on what one source unpacks, shared by every archive and stream it reads."""

    def __init__(self, source: str, limits: ExtractLimits):
        self.source, self.limits = source, limits
        self.written = 0
        self.members = 0

    def count_member(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise UnsafeArchive(f"{self.source}: more than data.extract.max_members="
                                f"{self.limits.max_members} archive members (at {name!r})")

    def check_ratio(self, name: str, produced: int, consumed: int) -> None:
        if produced > RATIO_FLOOR and produced > self.limits.max_ratio * max(consumed, 1):
            raise UnsafeArchive(
                f"{self.source}: {name!r} inflates {produced} bytes from {consumed}, beyond "
                f"data.extract.max_ratio={self.limits.max_ratio:g}: refusing a likely archive bomb")

    def reserve(self, name: str, size: int) -> None:
        """Refuse, before writing, a member that would take the source past max_total_bytes."""
        if self.written + size > self.limits.max_total_bytes:
            raise UnsafeArchive(
                f"{self.source}: extracting {name!r} ({size} bytes) would exceed "
                f"data.extract.max_total_bytes={self.limits.max_total_bytes}")

    def copy(self, src: IO[bytes], target: Path, name: str, size: int) -> None:
        """Write `src` (declared `size` bytes) to `target`; never more than declared."""
        self.reserve(name, size)
        target.parent.mkdir(parents=True, exist_ok=True)
        done = 0
        try:
            with open(target, "wb") as dst:
                while chunk := src.read(CHUNK):
                    done += len(chunk)
                    if done > size:
                        raise UnsafeArchive(f"{self.source}: {name!r} holds more than the "
                                            f"{size} bytes it declares")
                    dst.write(chunk)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        self.written += done


def unsafe_member(name: str) -> bool:
    """True for a member name that could resolve outside the folder it is extracted to."""
    path = PurePosixPath(name)
    return (name.startswith("/") or "\\" in name or "\0" in name or ".." in path.parts
            or (len(name) > 1 and name[1] == ":"))


class Archive:
    """A zip read in place: members named relative to its top folder, checked before use."""

    def __init__(self, path: Path | str, budget: ExtractBudget):
        self.source = budget.source
        self.budget = budget
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(path)
        except zipfile.BadZipFile as err:
            raise CorruptArchive(f"{self.source}: {path} is not a zip archive ({err})") from err
        infos = self._zip.infolist()
        for info in infos:
            budget.count_member(info.filename)
            if unsafe_member(info.filename):
                self._zip.close()
                raise UnsafeArchive(f"{self.source}: refusing archive {path}: member "
                                    f"{info.filename!r} would land outside the destination")
        infos = [i for i in infos if not i.is_dir() and not i.filename.startswith(IGNORED_PREFIXES)]
        prefix = _common_folder([i.filename for i in infos])
        self._members = {i.filename[len(prefix):]: i for i in infos}

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc) -> None:
        self._zip.close()

    def names(self) -> list[str]:
        return sorted(self._members)

    def size(self, name: str) -> int:
        return self._info(name).file_size

    def _info(self, name: str) -> zipfile.ZipInfo:
        try:
            return self._members[name]
        except KeyError:
            raise LabelsError(f"{self.source}: the archive has no {name}; is the configured URL "
                              "the dataset's archive?") from None

    def open(self, name: str) -> IO[bytes]:
        info = self._info(name)
        self.budget.check_ratio(name, info.file_size, info.compress_size)
        return self._zip.open(info)

    def extract(self, name: str, dest: Path) -> None:
        """Copy member `name` to `dest/name` (streamed: members can be large)."""
        root = dest.resolve()
        target = dest / name
        if not target.resolve().is_relative_to(root):
            raise UnsafeArchive(f"{self.source}: member {name!r} would land outside {dest}")
        with self.open(name) as src:
            self.budget.copy(src, target, name, self._info(name).file_size)


def _common_folder(names: list[str]) -> str:
    """`top/` when every name lives under the same top folder, else ``."""
    tops = {PurePosixPath(n).parts[0] for n in names if "/" in n}
    if len(tops) == 1 and all("/" in n for n in names):
        return tops.pop() + "/"
    return ""


class CountingReader(io.RawIOBase):
    """Passes reads through, counting bytes and calling `check(total)` after each read."""

    def __init__(self, raw: IO[bytes], check: Callable[[int], None] | None = None):
        self._raw, self._check = raw, check
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.count += n
        if self._check is not None:
            self._check(self.count)
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


def safe_name(part: str, what: str) -> str:
    """A path component taken from archive data, refused if it could leave its folder."""
    if part in ("", ".", "..") or "/" in part or "\\" in part or "\0" in part:
        raise UnsafeArchive(f"refusing unsafe {what} {part!r} from an archive")
    return part


def clip_table(source: str, rows: list[dict], dropped: Counter) -> pd.DataFrame:
    """The rows a source kept, after saying what it dropped and why; none kept is an error."""
    reasons = dict(dropped) or "nothing"
    if not rows:
        raise LabelsError(f"{source}: no clips left to use (dropped: {reasons}); check the "
                          "archive and this source's settings in conf/data/")
    print(f"{source}: kept {len(rows)} clips; dropped {reasons}")
    return pd.DataFrame(rows)
