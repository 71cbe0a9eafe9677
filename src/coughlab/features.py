"""The log-mel featurizer in torch, shared by featurize (offline) and the exported graph.

- `LogMel`: the mel config as one module;
- `WindowedFeaturizer`: `audio.windows` windows of `audio.clip_seconds` evenly spaced over
  the clip's centred `audio.max_seconds`, each through the same log-mel. Written without
  data-dependent branches, so the very same code exports to ONNX for any clip length.
"""
from __future__ import annotations

import torch
import torchaudio
from torch import nn

from coughlab.config import AudioConfig


def clip_samples(cfg: AudioConfig) -> int:
    return int(round(cfg.clip_seconds * cfg.sample_rate))


class LogMel(nn.Module):
    """Waveform `[batch, samples]` -> log-mel `[batch, 1, n_mels, frames]`."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            n_mels=cfg.n_mels,
            f_min=cfg.f_min,
            f_max=cfg.f_max,
            power=2.0,
        )
        self.band_mean_norm = cfg.band_mean_norm

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.log(self.mel(wave) + 1e-6)
        if self.band_mean_norm:
            spec = spec - spec.mean(dim=-1, keepdim=True)
        return spec.unsqueeze(1)


def centre_span(wave: torch.Tensor, max_length: int) -> torch.Tensor:
    """The centred `max_length` samples of the last axis, or all of it when shorter (no pad).

    The same centred span lambda/handler.py resamples for a graph whose model.json gives
    `input_seconds`, so a long recording is cut identically offline and in the Lambda.
    """
    n = wave.shape[-1]
    start = torch.sym_max(n - max_length, 0) // 2
    return wave[..., start : start + torch.sym_min(n, max_length)]


def window_starts(n, length: int, count: int) -> list:
    """Where `count` windows of `length` samples start in a clip of `n`, in the clip zero-padded
    with `length` zeros either side.

    Evenly spaced from the clip's first sample to its last, so together they cover the whole
    clip; a clip shorter than a window gets shifted copies (left- to right-aligned), which in
    training is a random shift and at inference a small shift average. One window is the
    centre crop. No branch on `n`, so one exported graph serves every length.
    """
    if count == 1:
        return [length + (n - length) // 2]
    return [length + (n - length) * i // (count - 1) for i in range(count)]


class WindowedFeaturizer(nn.Module):
    """Waveform `[batch, samples]` -> log-mel windows `[batch, windows, 1, n_mels, frames]`.

    The centred `max_seconds` of the clip, `windows` evenly spaced windows of `clip_seconds`
    over it (see window_starts), each through the same log-mel. featurize runs it on clips;
    export puts the same module in front of the network, so the Lambda scores the whole
    recording (up to `max_seconds`) exactly as evaluate does.
    """

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.length = clip_samples(cfg)
        self.max_length = int(round(cfg.max_seconds * cfg.sample_rate))
        self.count = cfg.windows
        self.logmel = LogMel(cfg)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        wave = centre_span(wave, self.max_length)
        padded = nn.functional.pad(wave, (self.length, self.length))
        starts = window_starts(wave.shape[-1], self.length, self.count)
        windows = torch.stack([padded[:, s : s + self.length] for s in starts], dim=1)
        batch = windows.shape[0]
        spec = self.logmel(windows.reshape(batch * self.count, self.length))
        return spec.reshape(batch, self.count, *spec.shape[1:])
