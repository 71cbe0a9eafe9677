"""Resumable training checkpoints: the on-disk format, and what a checkpoint must match.

Checkpoints may come from S3, so nothing here is unpickled: a checkpoint's fingerprint is
read from its JSON record, and checked, before its tensors are touched, and the tensors load
with `weights_only=True`.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from fastcore.foundation import L

from coughlab.atomic import atomic_file, atomic_write_text
from coughlab.closure import SRC, module_closure
from coughlab.config import Params
from coughlab.digest import sha256_file

# The checkpoint's JSON record (fingerprint, epoch, logged curves, digest of its tensor file);
# the tensors are in checkpoint-<epoch>.pt beside it.
CHECKPOINT_FILE = "checkpoint.json"
CHECKPOINT_TENSORS = re.compile(r"checkpoint-\d{4,}\.pt")
# Set by the SageMaker job to its image URI: checkpoints from another image are not resumed.
TRAINING_IMAGE_ENV = "COUGHLAB_TRAINING_IMAGE"


@dataclass
class Checkpoint:
    """A completed epoch: what resuming needs to continue exactly as if never stopped."""
    epoch: int
    history: list[dict[str, float]]  # the logged metrics of every epoch up to `epoch`
    tensors: dict  # "model", "opt" and the Recorder's smoothed loss ("smooth_loss")


def plain(value):
    """`value` as dicts, lists, numbers and torch.Tensor only, which `weights_only` loading
    accepts: fastai keeps its own list type and tensor subclass, its schedules numpy floats."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, L)):
        return [plain(item) for item in value]
    if isinstance(value, torch.Tensor):
        return value.as_subclass(torch.Tensor)
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_checkpoint(checkpoint_dir: Path, fingerprint_hex: str, checkpoint: Checkpoint) -> None:
    """Tensors first, then the JSON record naming them (the commit), then older tensor files.

    A kill at any point leaves a record whose tensor file exists and matches its digest.
    """
    name = f"checkpoint-{checkpoint.epoch:04d}.pt"
    with atomic_file(checkpoint_dir / name) as fh:
        torch.save(checkpoint.tensors, fh)
    record = {"fingerprint": fingerprint_hex, "epoch": checkpoint.epoch, "tensors": name,
              "sha256": sha256_file(checkpoint_dir / name), "history": checkpoint.history}
    atomic_write_text(checkpoint_dir / CHECKPOINT_FILE, json.dumps(record, indent=2) + "\n")
    for old in checkpoint_dir.glob("checkpoint*.pt"):
        if old.name != name:
            old.unlink(missing_ok=True)


def valid_history(history, last_epoch: int) -> bool:
    """One {metric name: number} per epoch up to `last_epoch`."""
    return (isinstance(history, list) and len(history) == last_epoch + 1
            and all(isinstance(row, dict) and all(isinstance(value, (int, float))
                                                  for value in row.values()) for row in history))


def read_checkpoint_record(path: Path) -> dict | None:
    """The JSON record, or None (with the reason printed) when it is not one we wrote."""
    try:
        record = json.loads(path.read_text())
        valid = (isinstance(record, dict) and isinstance(record.get("fingerprint"), str)
                 and isinstance(record.get("epoch"), int) and isinstance(record.get("sha256"), str)
                 and CHECKPOINT_TENSORS.fullmatch(str(record.get("tensors"))) is not None
                 and valid_history(record.get("history"), record["epoch"]))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        valid = False
    if not valid:
        print(f"train: ignoring {path}: not a coughlab checkpoint record")
        return None
    return record


def read_checkpoint(checkpoint_dir: Path, expected: str, device: torch.device) -> Checkpoint | None:
    """The checkpoint in `checkpoint_dir` if it matches `expected`, its tensors on `device`.

    The fingerprint and the tensor file's sha256 are checked from the JSON record before any
    tensor is read; the tensors load with `weights_only=True`, so a crafted file cannot run
    code. Everything goes straight to the learner's device (optimizer state included, as
    fastai's Learner.load does), or the first Adam step on a GPU mixes CPU and CUDA tensors.
    """
    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    record = read_checkpoint_record(path)
    if record is None:
        return None
    if record["fingerprint"] != expected:
        print(f"train: ignoring {path}: it belongs to other params, features or training code")
        return None
    tensors = path.parent / record["tensors"]
    if not tensors.is_file() or sha256_file(tensors) != record["sha256"]:
        print(f"train: ignoring {path}: {tensors.name} is missing or incomplete")
        return None
    try:
        state = torch.load(tensors, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{tensors} holds more than plain tensors, refusing to load it "
                         f"(delete {checkpoint_dir} to start afresh): {exc}") from None
    return Checkpoint(record["epoch"], record["history"], state)


def code_digest() -> str:
    """sha256 of the coughlab sources training executes (the import closure of
    coughlab.training) and of the torch and fastai versions."""
    digest = hashlib.sha256(
        f"torch {torch.__version__} fastai {importlib.metadata.version('fastai')}".encode())
    for path in module_closure("coughlab.training"):
        digest.update(path.as_posix().encode() + bytes.fromhex(sha256_file(SRC / path)))
    return digest.hexdigest()


def fingerprint(params: Params, features_dir: Path, training_image: str | None = None) -> str:
    """What a checkpoint must match to be resumed: training params, the exact features, the
    training code and, on SageMaker, the image training runs in (`training_image`, by default
    $COUGHLAB_TRAINING_IMAGE, which the job sets).

    A finished checkpoint from older code would otherwise hand back the old weights.
    """
    if training_image is None:
        training_image = os.environ.get(TRAINING_IMAGE_ENV, "")
    digest = hashlib.sha256()
    # Not `members`: each member has its own fingerprint (its seed), so raising train.members
    # resumes the members already trained.
    train = {k: v for k, v in asdict(params.train).items()
             if k not in ("backend", "sagemaker", "members")}
    digest.update(json.dumps({"seed": params.seed, "lr": params.lr, "model": asdict(params.model),
                              "train": train, "code": code_digest(),
                              "image": training_image},
                             sort_keys=True).encode())
    for split in ("train", "valid"):
        digest.update(bytes.fromhex(sha256_file(Path(features_dir) / f"{split}.npz")))
    return digest.hexdigest()
