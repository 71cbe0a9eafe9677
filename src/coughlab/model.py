"""Networks, fastai training with resumable checkpoints, and the saved-model format.

`train_model` is shared by the local backend (stage train) and the SageMaker container, so a
spot job and a laptop run produce the same artifact. Training is deterministic per epoch:
every epoch reseeds from (seed, epoch), so a run resumed from an epoch checkpoint ends with
the same weights, curves and metrics as one that was never interrupted. On the CPU it is
also bit-identical across x86-64 machines (see coughlab.determinism).

Checkpoints and models may come from S3 or a DVC remote, so nothing here is unpickled:
tensors load with `weights_only=True`, and a checkpoint's fingerprint is read from its JSON
record, and checked, before its tensors are touched.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pickle
import random
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision

# fastai.layers calls torch.jit.script at import time; torch 2.14 warns about it on every run.
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
import fastai
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
from fastcore.foundation import L
from torch import nn

from coughlab import LABELS
from coughlab.atomic import atomic_file, atomic_write_text
from coughlab.audio import SpecAugment
from coughlab.config import AudioConfig, ModelConfig, Params, SpecAugmentConfig
from coughlab.determinism import cpu_kernels_pinned
from coughlab.digest import sha256_file

MODEL_FILE = "model.pt"
# The checkpoint's JSON record (fingerprint, epoch, logged curves, digest of its tensor file);
# the tensors are in checkpoint-<epoch>.pt beside it.
CHECKPOINT_FILE = "checkpoint.json"
CHECKPOINT_TENSORS = re.compile(r"checkpoint-\d{4,}\.pt")
# Set by the SageMaker job to its image URI: checkpoints from another image are not resumed.
TRAINING_IMAGE_ENV = "COUGHLAB_TRAINING_IMAGE"
# The coughlab modules train_model executes: editing any of them invalidates checkpoints.
TRAINING_CODE = ("__init__.py", "atomic.py", "audio.py", "config.py", "determinism.py",
                 "digest.py", "model.py")


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


class Ensemble(nn.Module):
    """K networks as one: log of the mean of the members' softmax probabilities.

    Returned as log-probabilities so that softmax(ensemble(x)) is that mean exactly:
    predict_proba and the exported graph treat one network and an ensemble alike.
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(spec), dim=-1) for m in self.members]).mean(dim=0)
        return torch.log(probs)


def load_split(features_dir: Path, split: str) -> dict[str, np.ndarray]:
    """A featurized split: `x` float32 `[clips, windows, 1, mels, frames]`, `y`, `path`, `channel`.

    Features written before windows existed (`[clips, 1, mels, frames]`) read as one window.
    """
    with np.load(Path(features_dir) / f"{split}.npz") as npz:
        data = {k: npz[k] for k in npz.files}
    if data["x"].ndim == 4:
        data["x"] = data["x"][:, None]
    return data


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


@dataclass
class Checkpoint:
    """A completed epoch: what resuming needs to continue exactly as if never stopped."""
    epoch: int
    history: list[dict[str, float]]  # the logged metrics of every epoch up to `epoch`
    tensors: dict  # "model", "opt" and the Recorder's smoothed loss ("smooth_loss")


def epoch_metrics(recorder: Recorder) -> dict[str, float]:
    """The values logged for the epoch just finished: train/valid loss, valid ROC-AUC."""
    names = recorder.metric_names[1:-1]  # drop "epoch" and "time"
    return {name: float(value) for name, value in zip(names, recorder.log[1:])}


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


def resume(learn: Learner, checkpoint: Checkpoint) -> None:
    """Put a checkpoint's weights and optimizer state into `learn`."""
    learn.model.load_state_dict(checkpoint.tensors["model"])
    learn.create_opt()
    opt = checkpoint.tensors["opt"]
    learn.opt.load_state_dict({"state": opt["state"], "hypers": L(opt["hypers"])})


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


def code_digest() -> str:
    """sha256 of the coughlab sources training executes and of the torch and fastai versions."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256(f"torch {torch.__version__} fastai {fastai.__version__}".encode())
    for name in TRAINING_CODE:
        digest.update(name.encode() + bytes.fromhex(sha256_file(package / name)))
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


@contextlib.contextmanager
def reproducible_cpu_kernels():
    """oneDNN off and one intra-op thread while training, restored afterwards.

    oneDNN picks its convolution kernels by CPU; MKL's gemm and ATen's full reductions
    split the work by thread count (measured: 3 threads give other weights than 1 or 2).
    The env half of the pinning (ATen's AVX2 kernels, MKL_CBWR) must precede `import torch`.
    """
    if not cpu_kernels_pinned():
        print("train: torch was imported before coughlab.determinism.pin_cpu_kernels(): the "
              "weights may differ on other CPUs", file=sys.stderr)
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = onednn


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


def fit_and_save(params: Params, features_dir: Path, model_dir: Path, checkpoint_dir: Path,
                 live_dir: Path | None, callbacks: Sequence[Callback]) -> Path:
    """One network, saved, without train_model's kernel pinning (benchmarks compare the two)."""
    net, device = fit(params, features_dir, checkpoint_dir, live_dir, callbacks)
    return save_model(net, params, Path(model_dir), device)


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
    fp = fingerprint(params, features_dir)
    resumed = read_checkpoint(Path(checkpoint_dir), fp, dls.device)
    start = 0
    if resumed is not None:
        resume(learn, resumed)
        start = resumed.epoch + 1
        print(f"train: resuming after epoch {resumed.epoch} from {checkpoint_dir}")
    channel = ChannelAugment(params.train.channel_augment.gain, params.train.channel_augment.tilt)
    cbs = [EpochSeed(params.seed), SpecAugmentCallback(params.train.spec_augment, channel),
           EpochCheckpoint(checkpoint_dir, fp, resumed)]
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
            learn.logger = lambda row: print(epoch_line(learn.recorder.metric_names, row), flush=True)
        with learn.no_bar() if quiet else contextlib.nullcontext():
            learn.fit_one_cycle(params.train.epochs, params.lr, cbs=cbs, start_epoch=start)
    if live is not None:
        live.end()
    return learn.model, device_name(dls.device)


def epoch_line(names: Sequence[str], row: Sequence) -> str:
    """`epoch 3  train_loss 0.5123  valid_loss 0.4811  roc_auc_score 0.9102  time 00:01`."""
    cells = [f"{name} {value:.4f}" if isinstance(value, float) else f"{name} {value}"
             for name, value in zip(names, row)]
    return "  ".join(cells)


def save_model(net: nn.Module, params: Params, model_dir: Path, device: str = "cpu") -> Path:
    """Weights and plain metadata only (loadable with `weights_only=True`); `device` says what
    trained it, since only CPU training is bit-identical across machines."""
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / MODEL_FILE
    with atomic_file(path) as fh:
        torch.save({"state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
                    "members": len(net.members) if isinstance(net, Ensemble) else 1,
                    "model": asdict(params.model), "audio": asdict(params.audio),
                    "labels": list(LABELS), "device": device}, fh)
    return path


def load_model(path: Path) -> tuple[nn.Module, AudioConfig]:
    """The trained network (eval mode, CPU) and the audio config it was trained with.

    model.pt may come from S3 or a DVC remote: it is never unpickled, only read as tensors.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path} holds more than plain tensors, refusing to load it: "
                         f"{exc}") from None
    cfg = ModelConfig(**saved["model"])
    members = int(saved.get("members", 1))
    net = build_net(cfg) if members == 1 else Ensemble([build_net(cfg) for _ in range(members)])
    net.load_state_dict(saved["state_dict"])
    return net.eval(), AudioConfig(**saved["audio"])


def window_proba(net: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """P(positive) per clip `[n]` from log-mel windows `[n, windows, 1, mels, frames]`: the mean
    over the clip's windows. The exported graph computes exactly this (coughlab.export)."""
    n, count = windows.shape[:2]
    logits = net(windows.reshape(n * count, *windows.shape[2:]))
    return torch.softmax(logits, dim=-1)[:, 1].reshape(n, count).mean(dim=1)


@torch.inference_mode()
def predict_proba(net: nn.Module, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """P(positive) per clip for featurize's `x` (`[n, windows, 1, mels, frames]`, or one window
    `[n, 1, mels, frames]`)."""
    if x.ndim == 4:
        x = x[:, None]
    out = [window_proba(net, torch.from_numpy(x[i:i + batch_size].astype(np.float32)))
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)
