"""Atomic outputs: a stage that dies half-way leaves the previous output or nothing, never a mix.

Temporary siblings are named `.<name>.<pid>-<random>.tmp` after the process writing them. A
process killed outright (kill -9, OOM) cannot clean up, so the next atomic write of the same
output removes the leftovers whose process is gone, and only those: a run still going in
parallel keeps its own.

Outputs get explicit modes (files 0644, folders 0755), not mkstemp/mkdtemp's private 0600/0700
nor the umask's: they leave this machine (DVC remote, a container image run as a non-root
user, the Lambda zip) and must be readable there.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path

FILE_MODE = 0o644
DIR_MODE = 0o755


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


def _alive(pid: str) -> bool:
    """Whether the process a temporary name carries (as digits) may still be running. A number
    no process can have (0, or more than a pid_t holds: os.kill would raise OverflowError) is a
    writer long gone."""
    if len(pid) > 10 or not 0 < int(pid) < 2**31:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_leftovers(path: Path) -> list[Path]:
    """Delete the temporary siblings of `path` that a process no longer running left behind.

    A previous output moved aside (`.<name>.old-<pid>`) by a process killed before its new
    output took its place is put back, not deleted. Returns what was removed.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)-.*\.tmp|old-(\d+))")
    removed = []
    for sibling in path.parent.glob(f".{path.name}.*"):
        match = pattern.fullmatch(sibling.name)
        if match is None or _alive(match[1] or match[2]):
            continue
        if match[2] and not path.exists():
            sibling.rename(path)
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        removed.append(sibling)
    return removed


@contextlib.contextmanager
def atomic_dir(path: Path | str):
    """Yield a temporary sibling directory; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(DIR_MODE)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: Path | str, mode: str = "wb"):
    """Yield an open temporary file next to `path`; fsync and rename over `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    with atomic_file(path, "w") as fh:
        fh.write(text)
