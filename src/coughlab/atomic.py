"""Atomic outputs: a stage that dies half-way leaves the previous output or nothing, never a mix.

Outputs get explicit modes (files 0644, folders 0755), not mkstemp/mkdtemp's private 0600/0700
nor the umask's: they leave this machine (DVC remote, a container image run as a non-root
user, the Lambda zip) and must be readable there.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

FILE_MODE = 0o644
DIR_MODE = 0o755


@contextlib.contextmanager
def atomic_dir(path: Path | str):
    """Yield a temporary sibling directory; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
