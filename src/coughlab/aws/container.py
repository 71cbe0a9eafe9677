"""SageMaker training-container entrypoint: `python -m coughlab.aws.container train`.

SageMaker runs `docker run <image> train` and talks to the container through files under
/opt/ml ($SM_BASE_DIR or --base-dir overrides it, so tests run it without Docker):

  input/config/hyperparameters.json  training params, one dotted key per leaf, JSON-text values
  input/data/features/               the channel with train.npz and valid.npz
  checkpoints/                       synced to S3 by SageMaker, restored after a spot restart;
                                     checkpoint.json + checkpoint-NNNN.pt, and the curves in live/
  model/model.pt                     SageMaker packs model/ into model.tar.gz on success
  output/data/                       the training curves, packed into output.tar.gz
  output/failure                     the reason SageMaker shows when the job fails

A spot interruption (or StopTrainingJob, or MaxRuntime) arrives as SIGTERM, about two minutes
before SIGKILL: training finishes the running epoch, checkpoints it and exits 143. Every
checkpoint is written atomically, so even if SIGKILL comes first, what is on disk (and in S3)
is the last completed epoch, and the restarted job resumes from it to the same end result.
The SIGTERM handler goes in before torch and fastai are imported (seconds): as PID 1 in the
container, a signal without a handler would be ignored, not fatal.

Before training it logs the device it got and, on a GPU instance type, refuses to train on
the CPU (output/failure says why: usually a host driver too old for the image's CUDA).
"""
from __future__ import annotations

# Only light imports at module level: `main` installs the SIGTERM handler before torch/fastai.
from coughlab.determinism import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: its kernel choice is made at import

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import sys
import traceback
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from coughlab.atomic import atomic_write_text
from coughlab.config import ParamsError, TrainingParams, params_from

BASE_DIR_ENV = "SM_BASE_DIR"
DEFAULT_BASE_DIR = Path("/opt/ml")
CHANNEL = "features"
TRAINING_SPLITS = ("train", "valid")
# The Params sections training reads (model.pt records audio); data and paths stay on the
# launching side.
TRAINING_SECTIONS = tuple(f.name for f in dataclasses.fields(TrainingParams))
EXIT_TERMINATED = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM
CHECKPOINT_FILE = "checkpoint.json"  # coughlab.checkpoint's name for it, without importing torch
# The NVIDIA kernel driver's view: its version, and one entry per GPU the container can see.
NVIDIA_PROC = Path("/proc/driver/nvidia")
# SageMaker's CUDA instance families: ml.g4dn, ml.g5, ml.g6, ml.g6e, ml.gr6, ml.p3, ml.p4d, ml.p5...
GPU_INSTANCE = re.compile(r"ml\.(g|gr|p)\d")


@dataclass(frozen=True)
class Layout:
    """The SageMaker training contract's paths under one base directory (/opt/ml)."""
    base: Path

    @property
    def hyperparameters(self) -> Path:
        return self.base / "input" / "config" / "hyperparameters.json"

    @property
    def resource_config(self) -> Path:
        """SageMaker's description of the host: current_host, current_instance_type, hosts."""
        return self.base / "input" / "config" / "resourceconfig.json"

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
        return self.checkpoints / "live"

    @property
    def output_data(self) -> Path:
        return self.base / "output" / "data"

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


def hyperparameters(params: TrainingParams) -> dict[str, str]:
    """The training params as SageMaker hyperparameters (which must be strings).

    One dotted key per leaf ("train.epochs") keeps each value readable in the SageMaker
    console and far below its 2,500-character limit; JSON text keeps the types exact
    (0.003 stays a float, "cnn" a string), so the container rebuilds identical Params.
    """
    tree = {key: value for key, value in asdict(params).items() if key in TRAINING_SECTIONS}
    return {key: json.dumps(value) for key, value in flatten(tree).items()}


def params_from_hyperparameters(values: dict[str, str]) -> TrainingParams:
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
        return params_from(nested, "hyperparameters", TrainingParams)
    except ParamsError as exc:
        raise ValueError(f"hyperparameters do not fit coughlab's params: {exc}") from None


def read_params(path: Path) -> TrainingParams:
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
    """Fail with the file's name, not a numpy error from deep inside training."""
    import numpy as np

    missing = [f"{split}.npz" for split in TRAINING_SPLITS
               if not (features_dir / f"{split}.npz").is_file()]
    if missing:
        raise FileNotFoundError(f"input channel {CHANNEL!r} ({features_dir}) lacks "
                                f"{', '.join(missing)}: the job's InputDataConfig must point "
                                "at the uploaded build/features")
    for split in TRAINING_SPLITS:
        path = features_dir / f"{split}.npz"
        try:
            with np.load(path) as npz:
                arrays = set(npz.files)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path} is not a features file from the featurize stage "
                             f"({exc})") from None
        if not {"x", "y"} <= arrays:
            raise ValueError(f"{path} lacks the arrays x and y the featurize stage writes")


class TerminationRequested(BaseException):
    """Ends training after a SIGTERM; a BaseException so no `except Exception` swallows it."""


class SigtermFlag:
    """The SIGTERM handler: it only records the request, for training to act on at an epoch end."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame) -> None:
        self.requested = True


def stop_on_sigterm(flag: SigtermFlag):
    """A fastai callback that stops at the end of the running epoch, once its checkpoint is saved.

    Stopping mid-epoch would throw that epoch away: checkpoints exist only at epoch ends,
    where resuming gives bit-identical weights. After the last epoch it lets training finish,
    since only saving model.pt is left. Built here, not at import, because fastai is heavy.
    """
    from fastai.callback.core import Callback

    from coughlab.training import LiveMetrics

    class StopOnSigterm(Callback):
        order = LiveMetrics.order + 1  # after EpochCheckpoint and LiveMetrics

        def after_epoch(self):
            if flag.requested and self.epoch < self.n_epoch - 1:
                raise TerminationRequested

    return StopOnSigterm()


class DeviceError(RuntimeError):
    """A GPU instance on which torch cannot use CUDA: training there would run on the CPU."""


def instance_type(layout: Layout) -> str | None:
    """current_instance_type from resourceconfig.json; None outside SageMaker."""
    try:
        return json.loads(layout.resource_config.read_text()).get("current_instance_type")
    except (OSError, ValueError, AttributeError):
        return None


def visible_gpus(nvidia_proc: Path) -> int:
    gpus = nvidia_proc / "gpus"
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


def driver_version(nvidia_proc: Path) -> str | None:
    """The NVIDIA kernel driver's version ("NVRM version: ... Kernel Module  535.183.01 ...")."""
    try:
        text = (nvidia_proc / "version").read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]*)", text)
    return found.group(1) if found else None


def device_report(torch, nvidia_proc: Path) -> dict[str, object]:
    """What training will run on, for the job's log."""
    available = torch.cuda.is_available()
    return {"torch": torch.__version__, "torch CUDA": torch.version.cuda,
            "CUDA available": available,
            "device": torch.cuda.get_device_name(0) if available else "cpu",
            "driver": driver_version(nvidia_proc), "GPUs visible": visible_gpus(nvidia_proc)}


def check_device(layout: Layout) -> None:
    """Log the device; on a GPU instance without usable CUDA, fail rather than train on the CPU."""
    import torch

    report = device_report(torch, NVIDIA_PROC)
    print("container: " + ", ".join(f"{key}: {value}" for key, value in report.items()),
          flush=True)
    itype = instance_type(layout)
    on_gpu_instance = bool(itype and GPU_INSTANCE.match(itype)) or report["GPUs visible"] > 0
    if on_gpu_instance and not report["CUDA available"]:
        raise DeviceError(
            f"{itype or 'this host'} ({report['GPUs visible']} GPUs visible to the driver): torch "
            f"{report['torch']} (CUDA {report['torch CUDA']}) cannot use CUDA with NVIDIA driver "
            f"{report['driver'] or 'unknown'}; refusing to train on the CPU of a GPU instance. "
            "The image's CUDA needs a newer host driver (docker/train.Dockerfile says which), "
            "or use a CPU instance type")


def publish_curves(layout: Layout) -> None:
    """Copy the per-epoch curves into output/data, which SageMaker uploads as output.tar.gz.

    Into the existing directory, never by renaming it: SageMaker (and its local mode) may
    mount it, and a mount point cannot be renamed. A copy that fails half-way fails the job
    (exit 1), and the stage downloads output.tar.gz only from a Completed job.
    """
    layout.output_data.mkdir(parents=True, exist_ok=True)
    shutil.copytree(layout.live, layout.output_data, dirs_exist_ok=True)


def train(layout: Layout, flag: SigtermFlag) -> Path:
    """Train on the channel's features, resuming from layout.checkpoints when it matches."""
    params = read_params(layout.hyperparameters)
    check_features(layout.features)
    from coughlab.training import train_model  # torch and fastai: seconds, under the handler

    check_device(layout)
    if flag.requested:  # SIGTERM while starting: nothing trained, nothing to save
        raise TerminationRequested
    path = train_model(params, layout.features, layout.model, layout.checkpoints, layout.live,
                       callbacks=[stop_on_sigterm(flag)])
    publish_curves(layout)
    return path


def run(layout: Layout, flag: SigtermFlag) -> int:
    """Train; the exit status and output/failure follow the SageMaker contract."""
    try:
        path = train(layout, flag)
    except TerminationRequested:
        checkpoint = layout.checkpoints / CHECKPOINT_FILE
        state = f"stopped after saving {checkpoint}" if checkpoint.exists() else "stopped"
        print(f"container: SIGTERM: {state}; a restarted job resumes from the last checkpoint",
              file=sys.stderr, flush=True)
        return EXIT_TERMINATED
    except Exception as exc:
        traceback.print_exc()
        reason = f"{type(exc).__name__}: {exc}"
        atomic_write_text(layout.failure, reason + "\n")
        print(f"container: training failed: {reason}", file=sys.stderr, flush=True)
        return 1
    print(f"container: wrote {path}", flush=True)
    return 0


# The smoke job's own settings, not the project's (the image holds no conf/): the smallest
# network, one epoch, and a tiny mel grid, through every part of the training path.
SELFCHECK_PARAMS = {
    "seed": 0, "lr": 0.003,
    "audio": {"sample_rate": 16000, "clip_seconds": 1.0, "n_fft": 256, "hop_length": 128,
              "n_mels": 16, "f_min": 20.0, "f_max": 7600.0, "band_mean_norm": False,
              "windows": 1, "max_seconds": 1.0},
    "model": {"arch": "cnn", "width": 4, "dropout": 0.0},
    "train": {"backend": "local", "epochs": 1, "batch_size": 8, "weight_decay": 0.0,
              "spec_augment": {"freq_mask": 2, "time_mask": 2, "n_masks": 1},
              "channel_augment": {"gain": 0.0, "tilt": 0.0}, "members": 1, "balance": "label",
              "sagemaker": {"instance_type": "ml.m5.xlarge", "volume_size_gb": 1,
                            "max_run_seconds": 600, "max_wait_seconds": 1200,
                            "s3_prefix": "selfcheck"}},
}


def synthetic_job(base: Path) -> Layout:
    """A tiny job under `base` laid out as SageMaker would: random features, one epoch."""
    import numpy as np

    layout = Layout(base)
    params = params_from(SELFCHECK_PARAMS, "selfcheck", TrainingParams)
    atomic_write_text(layout.hyperparameters, json.dumps(hyperparameters(params)))
    layout.features.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in TRAINING_SPLITS:
        y = np.arange(16) % 2
        np.savez(layout.features / f"{split}.npz", y=y.astype(np.int8),
                 x=rng.normal(size=(16, 1, 1, params.audio.n_mels, 32)).astype(np.float32),
                 path=np.array([f"{split}/{i}.wav" for i in range(16)]),
                 channel=np.array(["app"] * 16))
    return layout


def selfcheck() -> int:
    """The image build's smoke test: one CUDA runtime across the torch family, then a one-epoch
    job through the whole training path, so a broken image fails at build, not in a paid job."""
    import tempfile

    from coughlab.aws.cudalibs import check_installed

    try:
        print(f"container: selfcheck: {check_installed()}", flush=True)
    except RuntimeError as exc:
        print(f"container: selfcheck failed: {exc}", file=sys.stderr, flush=True)
        return 1
    with tempfile.TemporaryDirectory(prefix="coughlab-selfcheck-") as tmp:
        layout = synthetic_job(Path(tmp))
        status = run(layout, SigtermFlag())
        if status != 0 or not (layout.model / "model.pt").is_file():
            print("container: selfcheck failed: the one-epoch job did not write model.pt",
                  file=sys.stderr, flush=True)
            return status or 1
    print("container: selfcheck passed", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train coughlab inside a SageMaker training container (the image from "
        "docker/train.Dockerfile). Reads hyperparameters and the 'features' channel, resumes "
        "from the checkpoints dir, writes model/model.pt and the curves to output/data; on "
        "error writes output/failure and exits 1; on SIGTERM (spot interruption) checkpoints "
        "the running epoch and exits 143.")
    parser.add_argument("command", choices=["train", "selfcheck"],
                        help="SageMaker starts the image with `train`; the image build runs "
                        "`selfcheck` (torch-family CUDA runtimes agree, one epoch on synthetic "
                        "features in a temporary directory; --base-dir is not used)")
    parser.add_argument("--base-dir", type=Path,
                        default=Path(os.environ.get(BASE_DIR_ENV, DEFAULT_BASE_DIR)),
                        help=f"SageMaker's root directory (default ${BASE_DIR_ENV} or "
                        f"{DEFAULT_BASE_DIR})")
    args = parser.parse_args(argv)
    if args.command == "selfcheck":
        return selfcheck()
    flag = SigtermFlag()
    previous = signal.signal(signal.SIGTERM, flag)  # first: before torch and fastai load
    try:
        return run(Layout(args.base_dir), flag)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
