"""Typed view of params.yaml.

DVC's Hydra integration composes conf/ into params.yaml; the stages read params.yaml only,
so `dvc repro` and `dvc exp run -S ...` see the same values. Merging into these dataclasses
turns a typo such as `-S trian.epochs=3` into an error instead of a silently ignored key.
conf/ is the only home of the values: the dataclasses give types and no defaults, so a key
missing from params.yaml is an error that names it, never a value from here.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

PARAMS_FILE = Path("params.yaml")
CONF_DIR = Path("conf")


@dataclass
class SplitConfig:
    valid: float
    test: float
    # Sources whose every clip goes to test (leave-one-source-out): train and valid never hear them.
    held_out_sources: list[str]


@dataclass
class QualityConfig:
    min_seconds: float
    silence_dbfs: float
    max_quarantine_fraction: float


@dataclass
class DownloadConfig:
    """How files are downloaded; none of it changes what fetch writes."""
    workers: int
    retries: int
    # Per-read timeout, and the deadline for one file's whole transfer: a server trickling
    # bytes never hits the first; the bytes received so far stay for the next run to resume.
    timeout_s: float
    deadline_s: float
    # The most bytes taken for a file with no content pin (GitHub's archive zips: only their
    # members are pinned); a larger body is refused and deleted.
    max_unpinned_bytes: int


@dataclass
class ExtractLimits:
    """What one source's archives may unpack to, so a crafted archive cannot fill the disk."""
    max_total_bytes: int
    max_members: int
    # uncompressed / compressed; audio compresses a few times at most, bombs a thousandfold
    max_ratio: float


@dataclass
class GitHubPin:
    """A public GitHub repository at one commit. Each file fetch uses is checked against its git
    blob sha1 in the committed manifest `sources/manifests/<owner>_<name>@<commit>.tsv`.
    `url` is a template over {repo}, {commit} (and {path} for single files)."""
    repo: str
    commit: str
    url: str


@dataclass
class CoughvidConfig:
    """A Zenodo file pinned by the md5 and size Zenodo publishes for it."""
    url: str
    md5: str
    size: int
    min_cough_detected: float


@dataclass
class CoswaraConfig(GitHubPin):
    # collection dates (folder names such as 20200413); empty: all of them
    dates: list[str]
    recordings: list[str]


@dataclass
class VirufyConfig(GitHubPin):
    clips: str


@dataclass
class DataConfig:
    sources: list[str]
    local_dir: str
    split: SplitConfig
    quality: QualityConfig
    # Downloaded files; $COUGHLAB_CACHE overrides, None means ~/.cache/coughlab/downloads.
    cache_dir: Optional[str]
    # Folder of upstream manifests (git blob sha1 per file); None: the ones shipped in
    # coughlab/sources/manifests. Tests point it at fixture repositories.
    manifest_dir: Optional[str]
    download: DownloadConfig
    extract: ExtractLimits
    # Per-source settings (pinned versions, filters); see conf/data/.
    coughvid: CoughvidConfig
    coswara: CoswaraConfig
    virufy: VirufyConfig
    covid19_cough: GitHubPin


@dataclass
class AudioConfig:
    sample_rate: int
    clip_seconds: float
    n_fft: int
    hop_length: int
    n_mels: int
    f_min: float
    f_max: float
    # Subtract each mel band's mean over the window (cepstral mean normalisation): removes a
    # recording channel's fixed frequency response and the recording level.
    band_mean_norm: bool
    # Windows of clip_seconds scored per clip, evenly spaced over the whole clip (their
    # P(positive) averaged); in training each clip gives one of them at random per epoch.
    windows: int
    # Longest recording scored: a longer one is cut to its centred max_seconds.
    max_seconds: float


@dataclass
class ModelConfig:
    arch: str
    width: int
    dropout: float


@dataclass
class SpecAugmentConfig:
    freq_mask: int
    time_mask: int
    n_masks: int


@dataclass
class ChannelAugmentConfig:
    # sd of a random per-clip level and of the weights of a smooth random frequency response,
    # in log-mel units (see coughlab.training.ChannelAugment); 0 turns it off.
    gain: float
    tilt: float


@dataclass
class SageMakerConfig:
    """Managed-spot job settings (only read when train.backend == "sagemaker").

    Account-specific values (role, bucket, image, region) come from the environment instead,
    so params.yaml stays the same in every account; see coughlab.aws.sagemaker.
    """
    instance_type: str
    volume_size_gb: int
    max_run_seconds: int
    # Training time plus time spent waiting for spot capacity; must exceed max_run_seconds.
    max_wait_seconds: int
    s3_prefix: str


@dataclass
class TrainConfig:
    backend: str
    epochs: int
    batch_size: int
    weight_decay: float
    spec_augment: SpecAugmentConfig
    channel_augment: ChannelAugmentConfig
    # Networks trained (seeds seed, seed + 1, ...) and shipped as one averaged ensemble.
    members: int
    # label: class-weighted loss. channel_label: batches drawn evenly from every
    # source x channel x label cell, so the recording channel predicts nothing about the label.
    balance: str
    # See conf/train/sagemaker.yaml.
    sagemaker: SageMakerConfig


@dataclass
class PathsConfig:
    """Where the stages read and write (conf/paths/): dvc.yaml interpolates the same values."""
    fetched: str
    combined: str
    features: str
    model: str
    checkpoints: str
    train_reports: str
    graph: str
    metrics: str
    evaluation: str
    plots: str
    bundle: str
    record: str


@dataclass
class TrainingParams:
    """What training reads, and all a SageMaker job receives (model.pt records audio)."""
    seed: int
    lr: float
    audio: AudioConfig
    model: ModelConfig
    train: TrainConfig


@dataclass
class Params(TrainingParams):
    paths: PathsConfig
    data: DataConfig


class ParamsError(ValueError):
    """params.yaml lacks a key, has one too many, or a value of the wrong type."""


def params_from(tree, origin: str = "params", schema: type = Params):
    """Validate a params tree (dict or OmegaConf) against `schema`: an unknown key, a wrong
    type or a missing key is a ParamsError naming the key and `origin`."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), tree))
    except MissingMandatoryValue as exc:
        raise ParamsError(f"{origin}: no value for {exc.full_key}; conf/ is where every value "
                          "lives: run `make params` after editing it") from None
    except OmegaConfBaseException as exc:
        raise ParamsError(f"{origin}: {exc.full_key}: {exc.msg}") from None


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read params.yaml and validate it against `Params`; unknown or missing keys are errors."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run stages from the repository root")
    return params_from(OmegaConf.load(path), str(path))


def compose(conf_dir: Path | str = CONF_DIR, overrides: list[str] | None = None) -> dict:
    """Compose conf/ exactly as `dvc exp run` does (Hydra compose API, config.yaml)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

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
