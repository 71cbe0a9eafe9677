"""What every benchmark result records about the machine, so figures can be compared fairly."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def load_average() -> float:
    """1-minute load average: a busy shared machine explains a noisy run."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def machine_info() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count()}


def repo_relative(path: Path | str) -> str:
    """`path` as seen from the repository root (e.g. ../shared/realdata/dev): results files
    must not carry the absolute paths of the machine they ran on."""
    return os.path.relpath(Path(path).resolve(), Path(__file__).resolve().parents[1])
