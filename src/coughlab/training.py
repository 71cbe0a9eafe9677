"""fastai training: data loaders, augmentation, per-epoch seeding, checkpoints and curves.

`train_model` is shared by the local backend (stage train) and the SageMaker container, so a
spot job and a laptop run produce the same artifact. Training is deterministic per epoch:
every epoch reseeds from (seed, epoch), so a run resumed from an epoch checkpoint ends with
the same weights, curves and metrics as one that was never interrupted. On the CPU it is
also bit-identical across x86-64 machines (see coughlab.determinism).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

# fastai.layers calls torch.jit.script at import time; torch 2.14 warns about it on every run.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated",
                        category=FutureWarning)
import fastai.callback.data  # noqa: E402,F401  (patches DataBlock.weighted_dataloaders)
import fastai.callback.schedule  # noqa: E402,F401  (patches Learner.fit_one_cycle)
from fastai.callback.core import Callback, CancelFitException  # noqa: E402
from fastai.data.block import CategoryBlock, DataBlock, TransformBlock  # noqa: E402
from fastai.data.transforms import IndexSplitter  # noqa: E402
from fastai.learner import Learner, Recorder  # noqa: E402
from fastai.losses import CrossEntropyLossFlat  # noqa: E402
from fastai.metrics import RocAucBinary  # noqa: E402
from fastai.optimizer import Adam  # noqa: E402
from fastai.torch_core import set_seed  # noqa: E402
from fastcore.foundation import L  # noqa: E402
from torch import nn  # noqa: E402

from coughlab import LABELS  # noqa: E402
from coughlab.checkpoint import (  # noqa: E402
    Checkpoint,
    fingerprint,
    plain,
    read_checkpoint,
    write_checkpoint,
)
from coughlab.config import Params, SpecAugmentConfig  # noqa: E402
from coughlab.determinism import reproducible_cpu_kernels  # noqa: E402
from coughlab.nets import Ensemble, build_net, load_split, save_model  # noqa: E402


class TrainingError(RuntimeError):
    """Training that cannot produce a model worth saving; the stage prints it in one line."""


def cell_weights(cells: list[np.ndarray]) -> np.ndarray:
    """Per-clip weights that give every combination of `cells` values the same total weight."""
    keys = np.array(["|".join(map(str, values)) for values in zip(*cells)])
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return 1.0 / (len(counts) * counts[inverse])


def training_batch_size(batch_size: int, n_train: int) -> int:
    """`batch_size`, or all `n_train` clips in one batch when there are fewer.

    fastai drops a training epoch's last partial batch, so fewer clips than a batch gave no
    batch at all: every epoch logged train_loss nan and the random network was saved. The
    batch adapts rather than failing, because batch_size is a ceiling (memory, gradient noise),
    not a requirement: one full batch per epoch still fits the data, and combine already makes
    sure the train split holds both labels. Data of a batch or more trains exactly as before.
    """
    if n_train >= batch_size:
        return batch_size
    print(f"train: {n_train} training clips, fewer than train.batch_size={batch_size}: "
          f"batches of {n_train} (one per epoch)", flush=True)
    return n_train


def dataloaders(features_dir: Path, batch_size: int, seed: int, balance: str = "label"):
    """fastai DataLoaders over the featurized train and valid splits, and the loss's class weights.

    balance="label" weights the loss by inverse class frequency. balance="channel_label" draws
    training batches evenly from every source x channel x label cell instead: in the data the
    model sees, the recording channel then says nothing about the label, so learning it cannot
    pay. Channels are told apart by source too: two sources' "web" are two ways of recording.
    Training batches hold `training_batch_size` clips; validation batches `batch_size`.
    """
    train, valid = load_split(features_dir, "train"), load_split(features_dir, "valid")
    x = np.concatenate([train["x"], valid["x"]])
    y = np.concatenate([train["y"], valid["y"]])
    n_train = len(train["y"])
    if n_train == 0 or len(valid["y"]) == 0:
        raise TrainingError(f"{features_dir}: train and valid splits must both be non-empty")
    n_windows = x.shape[1]

    def get_x(i: int) -> torch.Tensor:
        # A random window of each training clip (a random crop, reseeded every epoch by
        # EpochSeed); valid clips give their middle window, for the logged curves.
        w = int(torch.randint(n_windows, ())) if i < n_train else n_windows // 2
        return torch.from_numpy(x[i, w].astype(np.float32))

    block = DataBlock(
        blocks=(TransformBlock, CategoryBlock(vocab=list(LABELS))),
        get_x=get_x,
        get_y=lambda i: LABELS[y[i]],
        splitter=IndexSplitter(range(n_train, len(y))),
    )
    set_seed(seed)
    items = list(range(len(y)))
    sizes = {"bs": training_batch_size(batch_size, n_train), "val_bs": batch_size}
    if balance == "label":
        counts = np.bincount(train["y"], minlength=len(LABELS)).astype(np.float32)
        class_weights = counts.sum() / (len(LABELS) * np.maximum(counts, 1))
        dls = block.dataloaders(items, num_workers=0, **sizes)
    elif balance == "channel_label":
        wgts = np.concatenate([cell_weights([train["source"], train["channel"], train["y"]]),
                               np.ones(len(valid["y"]))])
        class_weights = np.ones(len(LABELS), np.float32)
        dls = block.weighted_dataloaders(items, wgts, num_workers=0, **sizes)
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


class ChannelAugment(nn.Module):
    """A random recording channel per training clip: gain and a smooth frequency response.

    A microphone, codec or phone line multiplies the spectrum by a fixed, smooth response;
    in log-mel that is an added curve. Each item gets `gain` * N(0, 1) dB-like level plus a
    curve of the first four cosines over the mel axis with N(0, `tilt`) weights, so the
    network cannot rely on a channel's response or level to tell channels (and labels) apart.
    """

    def __init__(self, gain: float, tilt: float):
        super().__init__()
        self.gain, self.tilt = gain, tilt

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if not self.training or (self.gain == 0 and self.tilt == 0):
            return spec
        batch, _, n_mels, _ = spec.shape
        mel = torch.linspace(0, torch.pi, n_mels, device=spec.device)
        basis = torch.stack([torch.cos(k * mel) for k in range(1, 5)])  # [4, mels]
        weights = torch.randn(batch, 4, device=spec.device) * self.tilt
        level = torch.randn(batch, 1, device=spec.device) * self.gain
        curve = level + weights @ basis  # [batch, mels]
        return spec + curve[:, None, :, None]


class SpecAugment(nn.Module):
    """SpecAugment-style masking (Park et al. 2019) on `[batch, 1, mels, frames]`, train only.

    Each item gets `n_masks` frequency bands and time spans, of random width up to the
    configured maximum, set to that item's mean so the mask does not add a new level.
    """

    def __init__(self, freq_mask: int, time_mask: int, n_masks: int):
        super().__init__()
        self.freq_mask, self.time_mask, self.n_masks = freq_mask, time_mask, n_masks

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if not self.training or self.n_masks == 0:
            return spec
        spec = spec.clone()
        batch, _, n_mels, n_frames = spec.shape
        fill = spec.mean(dim=(1, 2, 3), keepdim=True)
        for _ in range(self.n_masks):
            for axis, max_width, size in ((2, self.freq_mask, n_mels),
                                          (3, self.time_mask, n_frames)):
                if max_width <= 0:
                    continue
                width = torch.randint(0, max_width + 1, (batch, 1, 1, 1), device=spec.device)
                start = (torch.rand(batch, 1, 1, 1, device=spec.device) * (size - width)).long()
                pos = torch.arange(size, device=spec.device).view(
                    (1, 1, -1, 1) if axis == 2 else (1, 1, 1, -1))
                mask = (pos >= start) & (pos < start + width)
                spec = torch.where(mask, fill, spec)
        return spec


class SpecAugmentCallback(Callback):
    """Mask the training batches only; validation and export see clean spectrograms."""

    def __init__(self, cfg: SpecAugmentConfig, channel: ChannelAugment | None = None):
        self.augment = SpecAugment(cfg.freq_mask, cfg.time_mask, cfg.n_masks)
        self.channel = channel

    def before_batch(self):
        if self.training:
            xb = self.xb[0]
            if self.channel is not None:
                xb = self.channel(xb)
            self.learn.xb = (self.augment(xb),)


def epoch_metrics(recorder: Recorder) -> dict[str, float]:
    """The values logged for the epoch just finished: train/valid loss, valid ROC-AUC."""
    names = recorder.metric_names[1:-1]  # drop "epoch" and "time"
    return {name: float(value) for name, value in zip(names, recorder.log[1:])}


def resume(learn: Learner, checkpoint: Checkpoint) -> None:
    """Put a checkpoint's weights and optimizer state into `learn`."""
    learn.model.load_state_dict(checkpoint.tensors["model"])
    learn.create_opt()
    opt = checkpoint.tensors["opt"]
    learn.opt.load_state_dict({"state": opt["state"], "hypers": L(opt["hypers"])})


class FiniteLosses(Callback):
    """Stop the fit at the first epoch whose train or valid loss is not finite.

    Checked before the Recorder computes the epoch's metrics (ROC-AUC raises on NaN scores)
    and before EpochCheckpoint saves it, so a NaN network is neither checkpointed, resumed nor
    exported. `failure` says which epoch and loss; `fit` raises it as a TrainingError.
    """
    order = Recorder.order - 1

    def __init__(self):
        self.failure: str | None = None

    def check(self, name: str, value) -> None:
        value = math.nan if value is None else float(value)
        if not math.isfinite(value):
            self.failure = (
                f"epoch {self.epoch} of {self.n_epoch}: {name} {value}: the loss is not finite "
                "(NaN or inf in the features, or training diverged: try a lower lr); stopped "
                "before this epoch was checkpointed")
            raise CancelFitException

    def after_train(self):
        self.check("train_loss", self.recorder.smooth_loss.value)

    def after_validate(self):
        self.check("valid_loss", self.recorder.loss.value)


def check_weights_moved(net: nn.Module, initial: dict[str, torch.Tensor]) -> None:
    """Refuse a network whose parameters all equal their random initialisation.

    Parameters, not the whole state_dict: BatchNorm's running statistics move with every
    forward pass even when no step is taken (lr=0), so they would hide a network that learnt
    nothing.
    """
    if all(torch.equal(initial[name], value) for name, value in net.named_parameters()):
        raise TrainingError("the trained weights are equal to their random initialisation: "
                            "no optimizer step changed them (is lr 0?); not saving the model")


class EpochCheckpoint(Callback):
    """After each epoch, save weights, optimizer, smoothed loss and the logged curves.

    On resume it puts back the Recorder's smoothed training loss (which fastai resets at the
    start of every fit), so the train_loss logged after a resume equals the uninterrupted one.
    """
    order = Recorder.order + 1

    def __init__(self, checkpoint_dir: Path, fingerprint_hex: str, resumed: Checkpoint | None):
        self.checkpoint_dir, self.fingerprint_hex = Path(checkpoint_dir), fingerprint_hex
        self.resumed = resumed
        self.start_epoch = resumed.epoch + 1 if resumed else 0
        self.history = list(resumed.history) if resumed else []

    def before_fit(self):
        if self.resumed is not None:
            smooth = self.resumed.tensors["smooth_loss"]
            self.recorder.smooth_loss.count = smooth["count"]
            self.recorder.smooth_loss.val = smooth["val"]

    def after_epoch(self):
        if self.epoch < self.start_epoch:  # fastai calls after_epoch for skipped epochs too
            return
        self.history.append(epoch_metrics(self.recorder))
        smooth = self.recorder.smooth_loss
        tensors = plain({"model": self.learn.model.state_dict(), "opt": self.learn.opt.state_dict(),
                         "smooth_loss": {"count": smooth.count, "val": smooth.val}})
        write_checkpoint(self.checkpoint_dir, self.fingerprint_hex,
                         Checkpoint(self.epoch, self.history, tensors))


def log_epoch(live, epoch: int, metrics: dict[str, float]) -> None:
    live.step = epoch
    for name, value in metrics.items():
        live.log_metric(name, value)
    live.next_step()


class LiveMetrics(Callback):
    """Log train/valid loss and valid ROC-AUC per epoch to dvclive (training curves)."""
    order = EpochCheckpoint.order + 1

    def __init__(self, live, start_epoch: int):
        self.live, self.start_epoch = live, start_epoch

    def after_epoch(self):
        if self.epoch >= self.start_epoch:
            log_epoch(self.live, self.epoch, epoch_metrics(self.recorder))


def device_name(device: torch.device) -> str:
    """"cpu" (bit-identical on every x86-64 machine), or the GPU (repeatable on that model)."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def member_seeds(params: Params) -> list[int]:
    """The seed of each ensemble member: seed, seed + 1, ..."""
    return [params.seed + k for k in range(params.train.members)]


def train_model(params: Params, features_dir: Path, model_dir: Path, checkpoint_dir: Path,
                live_dir: Path | None = None, callbacks: Sequence[Callback] = ()) -> Path:
    """Fit the configured network (or train.members of them, one per seed, as one Ensemble)
    on build/features and save `model_dir/model.pt`.

    One seed's network is a noisy product (dev CV: see docs/quality.md); the members differ
    only in their seed. Member k checkpoints in `checkpoint_dir/member-k` (one member: in
    `checkpoint_dir` itself), so a killed run resumes inside the member it was training; the
    curves in `live_dir` are the first member's. `callbacks` are extra fastai callbacks, e.g.
    the SageMaker container's stop-on-SIGTERM, which orders itself after EpochCheckpoint so
    it stops only once the epoch is saved.
    """
    seeds = member_seeds(params)
    nets, device = [], "cpu"
    with reproducible_cpu_kernels():
        for k, seed in enumerate(seeds):
            member = dataclasses.replace(params, seed=seed)
            member_dir = Path(checkpoint_dir) / f"member-{k}" if len(seeds) > 1 else checkpoint_dir
            if len(seeds) > 1:
                print(f"train: member {k + 1}/{len(seeds)} (seed {seed})", flush=True)
            net, device = fit(member, features_dir, member_dir, live_dir if k == 0 else None,
                              callbacks)
            nets.append(net)
    return save_model(nets[0] if len(nets) == 1 else Ensemble(nets), params, Path(model_dir),
                      device)


def fit(params: Params, features_dir: Path, checkpoint_dir: Path, live_dir: Path | None,
        callbacks: Sequence[Callback]) -> tuple[nn.Module, str]:
    """One network fitted with `params.seed`, resumed from `checkpoint_dir` if it matches."""
    from dvclive import Live

    torch.use_deterministic_algorithms(True, warn_only=True)
    dls, class_weights = dataloaders(features_dir, params.train.batch_size, params.seed,
                                     params.train.balance)
    set_seed(params.seed)
    learn = Learner(dls, build_net(params.model),
                    loss_func=CrossEntropyLossFlat(weight=class_weights.to(dls.device)),
                    opt_func=Adam, metrics=[RocAucBinary()], wd=params.train.weight_decay)
    initial = {name: value.detach().clone() for name, value in learn.model.named_parameters()}
    fp = fingerprint(params, features_dir)
    resumed = read_checkpoint(Path(checkpoint_dir), fp, dls.device)
    start = 0
    if resumed is not None:
        resume(learn, resumed)
        start = resumed.epoch + 1
        print(f"train: resuming after epoch {resumed.epoch} from {checkpoint_dir}")
    channel = ChannelAugment(params.train.channel_augment.gain, params.train.channel_augment.tilt)
    finite = FiniteLosses()
    cbs = [EpochSeed(params.seed), SpecAugmentCallback(params.train.spec_augment, channel),
           finite, EpochCheckpoint(checkpoint_dir, fp, resumed)]
    live = None
    if live_dir is not None:
        # Rewritten from the checkpoint's history: the curves on disk may be an epoch behind.
        live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None)
        for epoch, metrics in enumerate(resumed.history if resumed else []):
            log_epoch(live, epoch, metrics)
        cbs.append(LiveMetrics(live, start))
    cbs.extend(callbacks)
    if start < params.train.epochs:
        # fastai's per-batch bars garble logs when not on a terminal: print a line per epoch.
        quiet = not sys.stdout.isatty()
        if quiet:
            learn.logger = lambda row: print(epoch_line(learn.recorder.metric_names, row,
                                                        params.train.epochs), flush=True)
        with learn.no_bar() if quiet else contextlib.nullcontext(), one_class_valid(features_dir):
            learn.fit_one_cycle(params.train.epochs, params.lr, cbs=cbs, start_epoch=start)
    if finite.failure is not None:
        raise TrainingError(finite.failure)
    check_weights_moved(learn.model, initial)
    if live is not None:
        live.end()
    return learn.model, device_name(dls.device)


def epoch_line(names: Sequence[str], row: Sequence, epochs: int | None = None) -> str:
    """`epoch 4/20  train_loss 0.5123  valid_loss 0.4811  roc_auc_score 0.9102  time 00:01`
    (fastai's 0-based epoch as k/N of `epochs`; without it, fastai's number as it is)."""
    cells = [f"{name} {value + 1}/{epochs}" if name == "epoch" and epochs else
             f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
             for name, value in zip(names, row)]
    return "  ".join(cells)


@contextlib.contextmanager
def one_class_valid(features_dir: Path):
    """Say once, not twice an epoch through scikit-learn, that a valid split of one label has
    no ROC-AUC (small data: every valid subject of one label)."""
    labels = np.unique(np.load(Path(features_dir) / "valid.npz")["y"])
    if len(labels) != 1:
        yield
        return
    print(f"train: every valid clip is {LABELS[int(labels[0])]}: the valid ROC-AUC is undefined "
          "(nan) every epoch; more subjects, or a larger data.split.valid, give it both labels",
          flush=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Only one class is present in y_true")
        yield
