"""Content digests: how coughlab pins downloads, keys checkpoints, names models and records
the DVC md5s of what a model came from.

Files are read in chunks, so multi-GB archives are hashed without loading them into memory.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO

CHUNK = 1 << 20
VERSION_CHARS = 12


def feed(digest, fh: IO[bytes]) -> int:
    """Update the hashlib object `digest` with the rest of `fh`, chunk by chunk; bytes read."""
    seen = 0
    while chunk := fh.read(CHUNK):
        seen += len(chunk)
        digest.update(chunk)
    return seen


def file_hexdigest(path: Path | str, algorithm: str) -> str:
    """hashlib's `algorithm` digest (sha256, md5, ...) of the file at `path`."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        feed(digest, fh)
    return digest.hexdigest()


def sha256_file(path: Path | str) -> str:
    return file_hexdigest(path, "sha256")


def model_version(path: Path | str) -> str:
    """The short id export-lambda writes to model.json and the deploy gate checks."""
    return sha256_file(path)[:VERSION_CHARS]
