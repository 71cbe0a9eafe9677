"""Small builders shared by the unit tests: tiny params and learnable synthetic features."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from coughlab.config import compose


def write_params(workdir: Path, *overrides: str) -> Path:
    """A params.yaml composed from the repo's conf/ with Hydra overrides, as dvc exp run does."""
    root = Path(__file__).resolve().parents[1]
    params = compose(root / "conf", list(overrides))
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def make_features(out: Path, n_per_split=(48, 16, 16), n_mels=64, frames=48, seed=0) -> Path:
    """Features whose positives carry a brighter band: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "valid", "test"), n_per_split):
        y = np.arange(n) % 2
        x = rng.normal(size=(n, 1, n_mels, frames)).astype(np.float32)
        x[y == 1, :, 20:28, :] += 1.5
        np.savez_compressed(out / f"{split}.npz", x=x, y=y.astype(np.int8),
                            path=np.array([f"{split}/{i}.wav" for i in range(n)]),
                            channel=np.where(np.arange(n) % 3 == 0, "phone", "app"))
    return out


def git_repo(path: Path) -> Path:
    """An initialised repo with one commit (dvclive reads HEAD)."""
    import subprocess

    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "init"], cwd=path, check=True)
    return path
