"""Networks, fastai training with resumable checkpoints, and the saved-model format.

`train_model` is shared by the local backend (stage train) and the SageMaker container, so a
spot job and a laptop run produce the same artifact. Training is deterministic per epoch:
every epoch reseeds from (seed, epoch), so a run resumed from an epoch checkpoint ends with
the same weights as one that was never interrupted.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import random
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torchvision

# fastai.layers calls torch.jit.script at import time; torch 2.14 warns about it on every run.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
import fastai.callback.schedule  # noqa: F401  (patches Learner.fit_one_cycle)
import fastai.callback.data  # noqa: F401  (patches DataBlock.weighted_dataloaders)
from fastai.callback.core import Callback
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock
from fastai.data.transforms import IndexSplitter
from fastai.learner import Learner, Recorder
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import RocAucBinary
from fastai.optimizer import Adam
from fastai.torch_core import set_seed
from torch import nn

from coughlab import LABELS
from coughlab.atomic import atomic_file
from coughlab.audio import SpecAugment
from coughlab.config import AudioConfig, ModelConfig, Params, SpecAugmentConfig
from coughlab.digest import sha256_file

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"


def conv_block(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(n_in, n_out, 3, padding=1, bias=False), nn.BatchNorm2d(n_out),
                         nn.ReLU(inplace=True), nn.MaxPool2d(2))


def build_net(cfg: ModelConfig) -> nn.Module:
    """Log-mel `[batch, 1, mels, frames]` -> logits `[batch, 2]`.

    The input BatchNorm learns the feature scale, so no dataset statistics file has to travel
    with the model to the Lambda.
    """
    if cfg.arch == "cnn":
        w = cfg.width
        body = nn.Sequential(conv_block(1, w), conv_block(w, 2 * w), conv_block(2 * w, 4 * w),
                             conv_block(4 * w, 8 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        n_features = 8 * w
    elif cfg.arch in ("resnet18", "resnet34"):
        body = getattr(torchvision.models, cfg.arch)(weights=None)
        body.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        n_features = body.fc.in_features
        body.fc = nn.Identity()
    else:
        raise ValueError(f"unknown model.arch {cfg.arch!r}; choose cnn, resnet18 or resnet34")
    return nn.Sequential(nn.BatchNorm2d(1), body, nn.Dropout(cfg.dropout),
                         nn.Linear(n_features, len(LABELS)))


def load_split(features_dir: Path, split: str) -> dict[str, np.ndarray]:
    with np.load(Path(features_dir) / f"{split}.npz") as npz:
        return {k: npz[k] for k in npz.files}


def cell_weights(cells: list[np.ndarray]) -> np.ndarray:
    """Per-clip weights that give every combination of `cells` values the same total weight."""
    keys = np.array(["|".join(map(str, values)) for values in zip(*cells)])
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse])


def dataloaders(features_dir: Path, batch_size: int, seed: int, balance: str = "label"):
    """fastai DataLoaders over the featurized train and valid splits, and the loss's class weights.

    balance="label" weights the loss by inverse class frequency. balance="channel_label" draws
    training batches evenly from every channel x label cell instead: in the data the model
    sees, the recording channel then says nothing about the label, so learning it cannot pay.
    """
    train, valid = load_split(features_dir, "train"), load_split(features_dir, "valid")
    x = np.concatenate([train["x"], valid["x"]])
    y = np.concatenate([train["y"], valid["y"]])
    n_train = len(train["y"])
    if n_train == 0 or len(valid["y"]) == 0:
        raise ValueError(f"{features_dir}: train and valid splits must both be non-empty")
    block = DataBlock(
        blocks=(TransformBlock, CategoryBlock(vocab=list(LABELS))),
        get_x=lambda i: torch.from_numpy(x[i].astype(np.float32)),
        get_y=lambda i: LABELS[y[i]],
        splitter=IndexSplitter(range(n_train, len(y))),
    )
    set_seed(seed)
    items = list(range(len(y)))
    if balance == "label":
        counts = np.bincount(train["y"], minlength=len(LABELS)).astype(np.float32)
        class_weights = counts.sum() / (len(LABELS) * np.maximum(counts, 1))
        dls = block.dataloaders(items, bs=batch_size, num_workers=0)
    elif balance == "channel_label":
        wgts = np.concatenate([cell_weights([train["channel"], train["y"]]), np.ones(len(valid["y"]))])
        class_weights = np.ones(len(LABELS), np.float32)
        dls = block.weighted_dataloaders(items, wgts, bs=batch_size, num_workers=0)
    else:
        raise ValueError(f"train.balance={balance!r} is unknown; use label or channel_label")
    return dls, torch.tensor(class_weights, dtype=torch.float32)


class EpochSeed(Callback):
    """Reseed every RNG (and the shuffling) from (seed, epoch): resume == uninterrupted."""
    order = 0

    def __init__(self, seed: int):
        self.seed = seed

    def before_epoch(self):
        set_seed(self.seed * 1000 + self.epoch)
        self.dls.train.rng = random.Random(self.seed * 1000 + self.epoch)


class SpecAugmentCallback(Callback):
    """Mask the training batches only; validation and export see clean spectrograms."""

    def __init__(self, cfg: SpecAugmentConfig):
        self.augment = SpecAugment(cfg.freq_mask, cfg.time_mask, cfg.n_masks)

    def before_batch(self):
        if self.training:
            self.learn.xb = (self.augment(self.xb[0]),)


class EpochCheckpoint(Callback):
    """After each epoch, atomically save model + optimizer + epoch + fingerprint."""
    order = Recorder.order + 1

    def __init__(self, path: Path, fingerprint: str, start_epoch: int):
        self.path, self.fingerprint, self.start_epoch = Path(path), fingerprint, start_epoch

    def after_epoch(self):
        if self.epoch < self.start_epoch:  # fastai calls after_epoch for skipped epochs too
            return
        state = {"model": self.learn.model.state_dict(), "opt": self.learn.opt.state_dict(),
                 "epoch": self.epoch, "fingerprint": self.fingerprint}
        with atomic_file(self.path) as fh:
            torch.save(state, fh)


class LiveMetrics(Callback):
    """Log train/valid loss and valid ROC-AUC per epoch to dvclive (training curves)."""
    order = EpochCheckpoint.order + 1

    def __init__(self, live, start_epoch: int):
        self.live, self.start_epoch = live, start_epoch

    def after_epoch(self):
        if self.epoch < self.start_epoch:
            return
        names = self.recorder.metric_names[1:-1]  # drop "epoch" and "time"
        self.live.step = self.epoch
        for name, value in zip(names, self.recorder.log[1:]):
            self.live.log_metric(name, float(value))
        self.live.next_step()


def fingerprint(params: Params, features_dir: Path) -> str:
    """What a checkpoint must match to be resumed: training params and the exact features."""
    digest = hashlib.sha256()
    train = {k: v for k, v in asdict(params.train).items() if k not in ("backend", "sagemaker")}
    digest.update(json.dumps({"seed": params.seed, "lr": params.lr, "model": asdict(params.model),
                              "train": train}, sort_keys=True).encode())
    for split in ("train", "valid"):
        digest.update(bytes.fromhex(sha256_file(Path(features_dir) / f"{split}.npz")))
    return digest.hexdigest()


def resume_epoch(learn: Learner, checkpoint: Path, expected: str) -> int:
    """Load a matching checkpoint into `learn`; return the first epoch still to run."""
    if not checkpoint.exists():
        return 0
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != expected:
        print(f"train: ignoring {checkpoint}: it belongs to other params or features")
        return 0
    learn.model.load_state_dict(state["model"])
    learn.create_opt()
    learn.opt.load_state_dict(state["opt"])
    print(f"train: resuming after epoch {state['epoch']} from {checkpoint}")
    return state["epoch"] + 1


def train_model(params: Params, features_dir: Path, model_dir: Path, checkpoint_dir: Path,
                live_dir: Path | None = None, callbacks: Sequence[Callback] = ()) -> Path:
    """Fit the configured network on build/features and save `model_dir/model.pt`.

    `callbacks` are extra fastai callbacks, e.g. the SageMaker container's stop-on-SIGTERM,
    which orders itself after EpochCheckpoint so it stops only once the epoch is saved.
    """
    from dvclive import Live

    torch.use_deterministic_algorithms(True, warn_only=True)
    dls, class_weights = dataloaders(features_dir, params.train.batch_size, params.seed,
                                     params.train.balance)
    set_seed(params.seed)
    learn = Learner(dls, build_net(params.model),
                    loss_func=CrossEntropyLossFlat(weight=class_weights.to(dls.device)),
                    opt_func=Adam, metrics=[RocAucBinary()], wd=params.train.weight_decay)
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_FILE
    fp = fingerprint(params, features_dir)
    start = resume_epoch(learn, checkpoint, fp)
    cbs = [EpochSeed(params.seed), SpecAugmentCallback(params.train.spec_augment),
           EpochCheckpoint(checkpoint, fp, start)]
    live = None
    if live_dir is not None:
        live = Live(str(live_dir), resume=start > 0, dvcyaml=None, save_dvc_exp=False,
                    report=None)
        cbs.append(LiveMetrics(live, start))
    cbs.extend(callbacks)
    if start < params.train.epochs:
        # fastai's per-batch bars garble logs when not on a terminal: print a line per epoch.
        quiet = not sys.stdout.isatty()
        if quiet:
            learn.logger = lambda row: print(epoch_line(learn.recorder.metric_names, row), flush=True)
        with learn.no_bar() if quiet else contextlib.nullcontext():
            learn.fit_one_cycle(params.train.epochs, params.lr, cbs=cbs, start_epoch=start)
    if live is not None:
        live.end()
    return save_model(learn.model, params, Path(model_dir))


def epoch_line(names: Sequence[str], row: Sequence) -> str:
    """`epoch 3  train_loss 0.5123  valid_loss 0.4811  roc_auc_score 0.9102  time 00:01`."""
    cells = [f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
             for name, value in zip(names, row)]
    return "  ".join(cells)


def save_model(net: nn.Module, params: Params, model_dir: Path) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / MODEL_FILE
    with atomic_file(path) as fh:
        torch.save({"state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
                    "model": asdict(params.model), "audio": asdict(params.audio),
                    "labels": list(LABELS)}, fh)
    return path


def load_model(path: Path) -> tuple[nn.Module, AudioConfig]:
    """The trained network (eval mode, CPU) and the audio config it was trained with."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    net = build_net(ModelConfig(**saved["model"]))
    net.load_state_dict(saved["state_dict"])
    return net.eval(), AudioConfig(**saved["audio"])


@torch.inference_mode()
def predict_proba(net: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """P(positive) for log-mel features `[n, 1, mels, frames]`."""
    out = [torch.softmax(net(torch.from_numpy(x[i:i + batch_size].astype(np.float32))), -1)[:, 1]
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)
