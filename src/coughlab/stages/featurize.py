"""Stage featurize: log-mel windows over the whole of every clip, per split.

Writes build/features/{train,valid,test}.npz with `x` (float32 [n, audio.windows, 1, n_mels,
frames]: audio.windows windows of audio.clip_seconds evenly spaced over the clip's centred
audio.max_seconds; float16 would move P(positive) by more than the Lambda parity gate
allows), `y` (0 = negative,
1 = positive), `path` (the manifest path, to join back the manifest's columns), `source` and
`channel` (the recording channel, or the source where there is none): train balances over
source x channel x label, so two sources' channels of one name (both "web") stay two.
The windows are those the exported graph cuts (coughlab.features.WindowedFeaturizer), so
offline metrics are the metrics of the deployed graph.

The features are the same bytes on every x86-64 CPU: the log-mel's matrix products (its DFT
and mel projection) run with train's pinned kernels (coughlab.determinism, before torch loads).
"""
from __future__ import annotations

from coughlab.determinism import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: its kernel choice is made at import

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from coughlab import LABELS, SPLITS  # noqa: E402
from coughlab.atomic import atomic_dir  # noqa: E402
from coughlab.config import AudioConfig  # noqa: E402
from coughlab.determinism import reproducible_cpu_kernels  # noqa: E402
from coughlab.features import WindowedFeaturizer  # noqa: E402
from coughlab.progress import progress_bar  # noqa: E402
from coughlab.stages.cli import path_option, stage_parser  # noqa: E402


@torch.inference_mode()
def featurize_waves(waves: list[np.ndarray], cfg: AudioConfig,
                    desc: str = "featurize") -> np.ndarray:
    """Log-mel windows `[n, windows, 1, n_mels, frames]` of mono clips at `cfg.sample_rate`.

    One clip at a time: the windows' positions depend on each clip's own length.
    """
    featurizer = WindowedFeaturizer(cfg).eval()
    with reproducible_cpu_kernels():
        out = [featurizer(torch.from_numpy(np.ascontiguousarray(w, np.float32))[None])[0].numpy()
               for w in progress_bar(waves, desc=desc, unit="clip")]
    if not out:
        frames = featurizer(torch.zeros(1, featurizer.length)).shape[-1]
        return np.zeros((0, cfg.windows, 1, cfg.n_mels, frames), np.float32)
    return np.stack(out)


def read_clip(path: Path, cfg: AudioConfig) -> np.ndarray:
    wave, sr = sf.read(path, dtype="float32")
    if sr != cfg.sample_rate:
        raise ValueError(f"{path}: {sr} Hz, expected {cfg.sample_rate} Hz from combine")
    return wave


def featurize_clips(paths: list[Path], cfg: AudioConfig, desc: str = "featurize") -> np.ndarray:
    return featurize_waves([read_clip(p, cfg) for p in paths], cfg, desc)


def channels(manifest: pd.DataFrame) -> pd.Series:
    """Each clip's recording channel; the source stands in where a source has no channels."""
    if "channel" not in manifest.columns:
        return manifest["source"].astype(str)
    return manifest["channel"].fillna(manifest["source"]).astype(str)


def featurize(src: Path, out: Path, cfg: AudioConfig) -> dict[str, int]:
    manifest = pd.read_csv(src / "manifest.csv", dtype={"subject_id": str})
    manifest["channel"] = channels(manifest)
    counts = {}
    with atomic_dir(out) as tmp:
        for split in SPLITS:
            rows = manifest[manifest["split"] == split]
            x = featurize_clips([src / "clips" / p for p in rows["path"]], cfg,
                                f"featurize {split}")
            y = rows["label"].map(LABELS.index).to_numpy(np.int8)
            np.savez_compressed(tmp / f"{split}.npz", x=x, y=y, path=rows["path"].to_numpy(str),
                                source=rows["source"].to_numpy(str),
                                channel=rows["channel"].to_numpy(str))
            counts[split] = len(rows)
    print(f"featurize: {counts}")
    return counts


def main(argv: list[str] | None = None) -> None:
    parser, params = stage_parser("featurize", "featurize", __doc__)
    path_option(parser, "--in", params.paths.combined, "combine's folder (manifest.csv + clips)",
                "src")
    path_option(parser, "--out", params.paths.features, "folder to write")
    args = parser.parse_args(argv)
    featurize(args.src, args.out, params.audio)


if __name__ == "__main__":
    main()
