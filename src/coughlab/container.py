"""SageMaker training-container entrypoint: `python -m coughlab.container train`.

SageMaker runs `docker run <image> train` and talks to the container through files under
/opt/ml ($SM_BASE_DIR or --base-dir overrides it, so tests run it without Docker):

  input/config/hyperparameters.json  training params, one dotted key per leaf, JSON-text values
  input/data/features/               the channel with train.npz and valid.npz
  checkpoints/                       synced to S3 by SageMaker, restored after a spot restart;
                                     checkpoint.pt plus the training curves in live/
  model/model.pt                     SageMaker packs model/ into model.tar.gz on success
  output/failure                     the reason SageMaker shows when the job fails

A spot interruption (or StopTrainingJob) arrives as SIGTERM: training stops at once and exits
143. Every epoch's checkpoint is written atomically, so what is on disk is always the last
completed epoch, and the restarted job resumes from it with the same end result.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import OmegaConf

from coughlab.atomic import atomic_write_text
from coughlab.config import Params

BASE_DIR_ENV = "SM_BASE_DIR"
DEFAULT_BASE_DIR = Path("/opt/ml")
CHANNEL = "features"
TRAINING_SPLITS = ("train", "valid")
LIVE_SUBDIR = "live"
CHECKPOINT_FILE = "checkpoint.pt"  # coughlab.model.CHECKPOINT_FILE, named without importing torch
# The Params sections training reads (model.pt records audio); data and the SageMaker job
# settings stay on the launching side.
TRAINING_SECTIONS = ("seed", "lr", "audio", "model", "train")
EXIT_TERMINATED = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


@dataclass(frozen=True)
class Layout:
    """The SageMaker training contract's paths under one base directory (/opt/ml)."""
    base: Path

    @property
    def hyperparameters(self) -> Path:
        return self.base / "input" / "config" / "hyperparameters.json"

    @property
    def features(self) -> Path:
        return self.base / "input" / "data" / CHANNEL

    @property
    def model(self) -> Path:
        return self.base / "model"

    @property
    def checkpoints(self) -> Path:
        return self.base / "checkpoints"

    @property
    def live(self) -> Path:
        """Curves live beside the checkpoint so a restarted job appends to them."""
        return self.checkpoints / LIVE_SUBDIR

    @property
    def failure(self) -> Path:
        return self.base / "output" / "failure"


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"train": {"epochs": 20}} -> {"train.epochs": 20}."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def hyperparameters(params: Params) -> dict[str, str]:
    """The training params as SageMaker hyperparameters (which must be strings).

    One dotted key per leaf ("train.epochs") keeps each value readable in the SageMaker
    console and far below its 2,500-character limit; JSON text keeps the types exact
    (0.003 stays a float, "cnn" a string), so the container rebuilds identical Params.
    """
    tree = {key: value for key, value in asdict(params).items() if key in TRAINING_SECTIONS}
    del tree["train"]["sagemaker"]
    return {key: json.dumps(value) for key, value in flatten(tree).items()}


def params_from_hyperparameters(values: dict[str, str]) -> Params:
    """Inverse of `hyperparameters`; a wrong key or type is an error, as in params.yaml."""
    nested: dict = {}
    for key, text in values.items():
        try:
            value = json.loads(text)
        except (TypeError, json.JSONDecodeError):
            raise ValueError(f"hyperparameter {key!r} = {text!r} is not JSON text") from None
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Params), nested))
    except Exception as exc:
        raise ValueError(f"hyperparameters do not fit coughlab's params: {exc}") from None


def read_params(path: Path) -> Params:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: SageMaker writes it from the job's "
                                "HyperParameters")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a JSON object of strings, not {type(values).__name__}")
    return params_from_hyperparameters(values)


def check_features(features_dir: Path) -> None:
    missing = [f"{split}.npz" for split in TRAINING_SPLITS
               if not (features_dir / f"{split}.npz").is_file()]
    if missing:
        raise FileNotFoundError(f"input channel {CHANNEL!r} ({features_dir}) lacks "
                                f"{', '.join(missing)}: the job's InputDataConfig must point "
                                "at the uploaded build/features")


class TerminationRequested(BaseException):
    """Raised by the SIGTERM handler; a BaseException so no `except Exception` swallows it."""


def raise_termination(signum, frame) -> None:
    raise TerminationRequested


def train(layout: Layout) -> Path:
    """Train on the channel's features, resuming from layout.checkpoints when it matches."""
    params = read_params(layout.hyperparameters)
    check_features(layout.features)
    # torch and fastai take seconds to import: only after the cheap checks above passed.
    from coughlab.model import train_model

    return train_model(params, layout.features, layout.model, layout.checkpoints, layout.live)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train coughlab inside a SageMaker training container (the image from "
        "docker/train.Dockerfile). Reads hyperparameters and the 'features' channel, resumes "
        "from the checkpoints dir, writes model/model.pt; on error writes output/failure and "
        "exits 1; on SIGTERM (spot interruption) keeps the last epoch checkpoint and exits 143.")
    parser.add_argument("command", choices=["train"], help="SageMaker starts the image with `train`")
    parser.add_argument("--base-dir", type=Path,
                        default=Path(os.environ.get(BASE_DIR_ENV, DEFAULT_BASE_DIR)),
                        help=f"SageMaker's root directory (default ${BASE_DIR_ENV} or "
                        f"{DEFAULT_BASE_DIR})")
    args = parser.parse_args(argv)
    layout = Layout(args.base_dir)
    signal.signal(signal.SIGTERM, raise_termination)
    try:
        path = train(layout)
    except TerminationRequested:
        checkpoint = layout.checkpoints / CHECKPOINT_FILE
        kept = (f"{checkpoint} holds the last completed epoch; a restarted job resumes from it"
                if checkpoint.exists() else "no epoch had completed; a restarted job starts over")
        print(f"container: SIGTERM, training stopped: {kept}", file=sys.stderr, flush=True)
        return EXIT_TERMINATED
    except Exception as exc:
        traceback.print_exc()
        reason = f"{type(exc).__name__}: {exc}"
        atomic_write_text(layout.failure, reason + "\n")
        print(f"container: training failed: {reason}", file=sys.stderr, flush=True)
        return 1
    print(f"container: wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
