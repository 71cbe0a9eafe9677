"""sha256 content digests: how coughlab pins archives, keys checkpoints and names models.

Files are read in chunks, so multi-GB archives are hashed without loading them into memory.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO

CHUNK = 1 << 20
VERSION_CHARS = 12


def sha256_stream(fh: IO[bytes]) -> str:
    digest = hashlib.sha256()
    while chunk := fh.read(CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path | str) -> str:
    with open(path, "rb") as fh:
        return sha256_stream(fh)


def model_version(path: Path | str) -> str:
    """The short id export-lambda writes to model.json and the deploy gate checks."""
    return sha256_file(path)[:VERSION_CHARS]
