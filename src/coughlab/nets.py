"""The networks, the saved-model format, and scoring: all that evaluate and export need.

model.pt may come from S3 or a DVC remote, so it is never unpickled: tensors load with
`weights_only=True`. Training (coughlab.training) and its checkpoints (coughlab.checkpoint)
live apart, so editing how a network is fitted does not re-run evaluate.
"""
from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from coughlab import LABELS
from coughlab.atomic import atomic_file
from coughlab.config import AudioConfig, ModelConfig, Params

MODEL_FILE = "model.pt"


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
    """A featurized split: `x` float32 `[clips, windows, 1, mels, frames]`, `y`, `path`,
    `source`, `channel`."""
    with np.load(Path(features_dir) / f"{split}.npz") as npz:
        return {k: npz[k] for k in npz.files}



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
    """P(positive) per clip for featurize's `x` (`[n, windows, 1, mels, frames]`)."""
    out = [window_proba(net, torch.from_numpy(x[i:i + batch_size].astype(np.float32)))
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)
