"""Typed view of params.yaml.

DVC's Hydra integration composes conf/ into params.yaml; the stages read params.yaml only,
so `dvc repro` and `dvc exp run -S ...` see the same values. Merging into these dataclasses
turns a typo such as `-S trian.epochs=3` into an error instead of a silently ignored key.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

PARAMS_FILE = Path("params.yaml")
CONF_DIR = Path("conf")


@dataclass
class SplitConfig:
    valid: float = 0.15
    test: float = 0.15


@dataclass
class QualityConfig:
    min_seconds: float = 0.3
    silence_dbfs: float = -60.0
    max_quarantine_fraction: float = 0.2


@dataclass
class DownloadConfig:
    """How files are downloaded; none of it changes what fetch writes."""
    workers: int = 4
    retries: int = 5
    # Per-read timeout, and the deadline for one file's whole transfer: a server trickling
    # bytes never hits the first; the bytes received so far stay for the next run to resume.
    timeout_s: float = 60.0
    deadline_s: float = 6 * 3600.0
    # The most bytes taken for a file with no content pin (GitHub's archive zips: only their
    # members are pinned); a larger body is refused and deleted.
    max_unpinned_bytes: int = 4 * 1024 ** 3


@dataclass
class ExtractLimits:
    """What one source's archives may unpack to, so a crafted archive cannot fill the disk."""
    max_total_bytes: int = 32 * 1024 ** 3
    max_members: int = 200_000
    # uncompressed / compressed; audio compresses a few times at most, bombs a thousandfold
    max_ratio: float = 100.0


@dataclass
class GitHubPin:
    """A public GitHub repository at one commit. Each file fetch uses is checked against its git
    blob sha1 in the committed manifest `sources/manifests/<owner>_<name>@<commit>.tsv`.
    `url` is a template over {repo}, {commit} (and {path} for single files)."""
    repo: str = ""
    commit: str = ""
    url: str = ""


@dataclass
class CoughvidConfig:
    """A Zenodo file pinned by the md5 and size Zenodo publishes for it."""
    url: str = ""
    md5: str = ""
    size: int = 0
    min_cough_detected: float = 0.8


@dataclass
class CoswaraConfig(GitHubPin):
    # collection dates (folder names such as 20200413); empty: all of them
    dates: list[str] = field(default_factory=list)
    recordings: list[str] = field(default_factory=lambda: ["cough-heavy", "cough-shallow"])


@dataclass
class VirufyConfig(GitHubPin):
    clips: str = "segmented"


@dataclass
class DataConfig:
    sources: list[str] = field(default_factory=lambda: ["local"])
    local_dir: str = "data"
    split: SplitConfig = field(default_factory=SplitConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    # Downloaded files; $COUGHLAB_CACHE overrides, None means ~/.cache/coughlab/downloads.
    cache_dir: Optional[str] = None
    # Folder of upstream manifests (git blob sha1 per file); None: the ones shipped in
    # coughlab/sources/manifests. Tests point it at fixture repositories.
    manifest_dir: Optional[str] = None
    download: DownloadConfig = field(default_factory=DownloadConfig)
    extract: ExtractLimits = field(default_factory=ExtractLimits)
    # Per-source settings (pinned versions, filters); see conf/data/.
    coughvid: CoughvidConfig = field(default_factory=CoughvidConfig)
    coswara: CoswaraConfig = field(default_factory=CoswaraConfig)
    virufy: VirufyConfig = field(default_factory=VirufyConfig)
    covid19_cough: GitHubPin = field(default_factory=GitHubPin)


@dataclass
class AudioConfig:
    sample_rate: int = 16000
    clip_seconds: float = 3.0
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 64
    f_min: float = 20.0
    f_max: float = 7600.0
    # Subtract each mel band's mean over the window (cepstral mean normalisation): removes a
    # recording channel's fixed frequency response and the recording level.
    band_mean_norm: bool = False
    # Windows of clip_seconds scored per clip, evenly spaced over the whole clip (their
    # P(positive) averaged); in training each clip gives one of them at random per epoch.
    windows: int = 1
    # Longest recording scored: a longer one is cut to its centred max_seconds.
    max_seconds: float = 30.0


@dataclass
class ModelConfig:
    arch: str = "cnn"
    width: int = 16
    dropout: float = 0.2


@dataclass
class SpecAugmentConfig:
    freq_mask: int = 8
    time_mask: int = 16
    n_masks: int = 2


@dataclass
class ChannelAugmentConfig:
    # sd of a random per-clip level and of the weights of a smooth random frequency response,
    # in log-mel units (see coughlab.model.ChannelAugment); 0 turns it off.
    gain: float = 0.0
    tilt: float = 0.0


@dataclass
class SageMakerConfig:
    """Managed-spot job settings (only read when train.backend == "sagemaker").

    Account-specific values (role, bucket, image, region) come from the environment instead,
    so params.yaml stays the same in every account; see coughlab.sagemaker.
    """
    instance_type: str = "ml.g6.xlarge"  # documented R535 driver (docs/sagemaker.md)
    volume_size_gb: int = 30
    max_run_seconds: int = 3600
    # Training time plus time spent waiting for spot capacity; must exceed max_run_seconds.
    max_wait_seconds: int = 7200
    s3_prefix: str = "coughlab"


@dataclass
class TrainConfig:
    backend: str = "local"
    epochs: int = 20
    batch_size: int = 32
    weight_decay: float = 0.01
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    channel_augment: ChannelAugmentConfig = field(default_factory=ChannelAugmentConfig)
    # Networks trained (seeds seed, seed + 1, ...) and shipped as one averaged ensemble.
    members: int = 1
    # label: class-weighted loss. channel_label: batches drawn evenly from every
    # channel x label cell, so the recording channel predicts nothing about the label.
    balance: str = "label"
    # See conf/train/sagemaker.yaml.
    sagemaker: SageMakerConfig = field(default_factory=SageMakerConfig)


@dataclass
class Params:
    seed: int = 42
    lr: float = 3e-3
    data: DataConfig = field(default_factory=DataConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def params_from(tree) -> Params:
    """Validate a params tree (dict or OmegaConf) against `Params`; unknown keys, wrong types
    are OmegaConf errors, missing keys take the defaults."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Params), tree))


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read params.yaml and validate it against `Params`; unknown keys are errors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run stages from the repository root")
    return params_from(OmegaConf.load(path))


def compose(conf_dir: Path | str = CONF_DIR, overrides: list[str] | None = None) -> dict:
    """Compose conf/ exactly as `dvc exp run` does (Hydra compose API, config.yaml)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=overrides or [])
    return OmegaConf.to_container(cfg, resolve=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Recompose params.yaml from conf/ (what `dvc exp run` does before running). "
        "Use after editing conf/ by hand, then commit params.yaml.")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. lr=1e-3 model=resnet18")
    parser.add_argument("--conf-dir", default=str(CONF_DIR))
    parser.add_argument("--out", default=str(PARAMS_FILE))
    args = parser.parse_args(argv)
    from coughlab.atomic import atomic_write_text

    atomic_write_text(Path(args.out), OmegaConf.to_yaml(compose(args.conf_dir, args.overrides)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
