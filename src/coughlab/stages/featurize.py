"""Stage featurize: one fixed-length, centre-cropped log-mel window per clip, per split.

Writes build/features/{train,valid,test}.npz with `x` (float16 [n, 1, n_mels, frames]),
`y` (0 = negative, 1 = positive) and `path` (the manifest path, to join back source/channel).
The window is the same centre crop/pad the exported Lambda model applies, so offline metrics
are the metrics of the deployed graph.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from tqdm import tqdm

from coughlab import LABELS
from coughlab.atomic import atomic_dir
from coughlab.audio import Featurizer, fit_length
from coughlab.config import AudioConfig, load_params
from coughlab.stages.combine import SPLITS

IN = Path("build/combined")
OUT = Path("build/features")
BATCH = 64


@torch.inference_mode()
def featurize_clips(paths: list[Path], cfg: AudioConfig, desc: str = "featurize") -> np.ndarray:
    featurizer = Featurizer(cfg).eval()
    chunks = []
    for start in tqdm(range(0, len(paths), BATCH), desc=desc, unit="batch"):
        waves = []
        for path in paths[start : start + BATCH]:
            wave, sr = sf.read(path, dtype="float32")
            if sr != cfg.sample_rate:
                raise ValueError(f"{path}: {sr} Hz, expected {cfg.sample_rate} Hz from combine")
            waves.append(fit_length(torch.from_numpy(wave), featurizer.length))
        chunks.append(featurizer.logmel(torch.stack(waves)).numpy().astype(np.float16))
    return np.concatenate(chunks) if chunks else np.zeros((0, 1, cfg.n_mels, 0), np.float16)


def featurize(src: Path, out: Path, cfg: AudioConfig) -> dict[str, int]:
    manifest = pd.read_csv(src / "manifest.csv", dtype={"subject_id": str})
    counts = {}
    with atomic_dir(out) as tmp:
        for split in SPLITS:
            rows = manifest[manifest["split"] == split]
            x = featurize_clips([src / "clips" / p for p in rows["path"]], cfg, f"featurize {split}")
            y = rows["label"].map(LABELS.index).to_numpy(np.int8)
            np.savez_compressed(tmp / f"{split}.npz", x=x, y=y, path=rows["path"].to_numpy(str))
            counts[split] = len(rows)
    print(f"featurize: {counts}")
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in", dest="src", type=Path, default=IN)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    featurize(args.src, args.out, load_params().audio)


if __name__ == "__main__":
    main()
