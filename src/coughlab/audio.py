"""Our small audio layer on torchaudio (fastaudio's good ideas, without its pins).

- decoding: soundfile for wav/flac/ogg/mp3, PyAV for webm/opus/m4a;
- one sample rate for every source (`resample`), mono mixdown;
- `fit_length`: fastaudio's "signal resize" as a deterministic centre crop/pad, written
  without data-dependent branches so the very same code exports to ONNX;
- `LogMel`: the mel config as one module, shared by featurize (offline) and export (in-graph);
- `SpecAugment`: frequency and time masking for training batches;
- `quality_problem`: why a clip should be quarantined, or None.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
import torchaudio
from torch import nn

from coughlab.config import AudioConfig, QualityConfig

PYAV_SUFFIXES = {".webm", ".opus", ".m4a", ".mp4", ".aac", ".weba"}


class AudioDecodeError(ValueError):
    """A file that is not decodable audio (corrupt, truncated, zero bytes, unknown format)."""


def load_audio(path: Path | str) -> tuple[np.ndarray, int]:
    """Decode `path` to float32 `[channels, samples]` and its sample rate."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path.name}: zero-byte file")
    if path.suffix.lower() in PYAV_SUFFIXES:
        return _load_with_pyav(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioDecodeError(f"{path.name}: {err}") from err
    return np.ascontiguousarray(data.T), int(sr)


def _load_with_pyav(path: Path) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            sr = stream.codec_context.sample_rate
            # Packed ("flt": one plane), never planar: PyAV 18.1's to_ndarray() finds the planes
            # of a planar frame by walking to a NULL pointer, and with 8 channels (7.1 opus/aac)
            # there is none, so it reads past them and the process dies (SIGSEGV).
            resampler = av.AudioResampler(format="flt", layout=stream.layout.name, rate=sr)
            chunks = [
                out.to_ndarray().reshape(-1, out.layout.nb_channels).T
                for frame in container.decode(stream)
                for out in resampler.resample(frame)
            ]
    except (av.error.FFmpegError, IndexError, ValueError) as err:
        raise AudioDecodeError(f"{path.name}: {err}") from err
    if not chunks:
        return np.zeros((1, 0), dtype=np.float32), int(sr or 0)
    return np.concatenate(chunks, axis=1).astype(np.float32), int(sr)


# libsndfile's sndfile.h command, not exported by soundfile: without it every float WAV gets a
# PEAK chunk stamped with the time of writing, so the same clip would never hash the same.
SFC_SET_ADD_PEAK_CHUNK = 0x1050


def write_float_wav(path: Path | str, wave: np.ndarray, sample_rate: int) -> None:
    """Mono 32-bit float WAV whose bytes depend only on the samples and the rate."""
    with sf.SoundFile(str(path), "w", sample_rate, 1, subtype="FLOAT", format="WAV") as f:
        sf._snd.sf_command(f._file, SFC_SET_ADD_PEAK_CHUNK, sf._ffi.NULL, 0)
        f.write(np.asarray(wave, dtype=np.float32))


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Average channels: `[channels, n]` -> `[n]`."""
    return wave.mean(axis=0, dtype=np.float32) if wave.ndim == 2 else wave.astype(np.float32)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling of a mono float32 signal with soxr (HQ).

    lambda/handler.py makes the very same call, so the Lambda feeds the graph the samples
    training saw; soxr's memory and time stay bounded for any rate ratio.
    """
    if orig_sr == target_sr:
        return wave.astype(np.float32, copy=False)
    return soxr.resample(np.ascontiguousarray(wave, dtype=np.float32), orig_sr, target_sr,
                         quality="HQ")


def quality_problem(wave: np.ndarray, sr: int, quality: QualityConfig) -> str | None:
    """Return why a mono clip is unusable (`empty`, `non_finite`, `too_short`, `silent`), or None."""
    if wave.size == 0:
        return "empty"
    if not np.isfinite(wave).all():
        return "non_finite"
    if wave.size / sr < quality.min_seconds:
        return "too_short"
    peak = float(np.abs(wave).max())
    if peak == 0.0 or 20 * np.log10(peak) < quality.silence_dbfs:
        return "silent"
    return None


def clip_samples(cfg: AudioConfig) -> int:
    return int(round(cfg.clip_seconds * cfg.sample_rate))


def fit_length(wave: torch.Tensor, length: int) -> torch.Tensor:
    """Centre-crop or zero-pad the last axis to `length` samples.

    Pads `length` zeros on both sides, then takes the window centred on the original signal.
    There is no `if` on the input length, so torch.export traces one graph for every length.
    """
    n = wave.shape[-1]
    padded = nn.functional.pad(wave, (length, length))
    start = length + (n - length) // 2
    return padded[..., start : start + length]


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


class Featurizer(nn.Module):
    """The whole offline featurization as one module: centre crop/pad, then log-mel.

    featurize runs it on clips; export puts the same module in front of the network.
    """

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        self.length = clip_samples(cfg)
        self.logmel = LogMel(cfg)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.logmel(fit_length(wave, self.length))


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
            for axis, max_width, size in ((2, self.freq_mask, n_mels), (3, self.time_mask, n_frames)):
                if max_width <= 0:
                    continue
                width = torch.randint(0, max_width + 1, (batch, 1, 1, 1), device=spec.device)
                start = (torch.rand(batch, 1, 1, 1, device=spec.device) * (size - width)).long()
                pos = torch.arange(size, device=spec.device).view(
                    (1, 1, -1, 1) if axis == 2 else (1, 1, 1, -1))
                mask = (pos >= start) & (pos < start + width)
                spec = torch.where(mask, fill, spec)
        return spec


def centre_span(wave: torch.Tensor, max_length: int) -> torch.Tensor:
    """The centred `max_length` samples of the last axis, or all of it when shorter (no pad).

    The same centred span lambda/handler.py resamples for a graph whose model.json gives
    `input_seconds`, so a long recording is cut identically offline and in the Lambda.
    """
    n = wave.shape[-1]
    start = torch.sym_max(n - max_length, 0) // 2
    return wave[..., start : start + torch.sym_min(n, max_length)]


def window_starts(n, length: int, count: int) -> list:
    """Where `count` windows of `length` samples start in a clip of `n`, in the zero-padded
    clip of `fit_length` (`length` zeros either side).

    Evenly spaced from the clip's first sample to its last, so together they cover the whole
    clip; a clip shorter than a window gets shifted copies (left- to right-aligned), which in
    training is a random shift and at inference a small shift average. One window is
    fit_length's centre crop. No branch on `n`, so one exported graph serves every length.
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
