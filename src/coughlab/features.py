"""The log-mel featurizer in torch, shared by featurize (offline) and the exported graph.

- `LogMel`: frames -> log-mel: Hann window, power spectrum, mel, log. Its DFT is a factored
  (Cooley-Tukey) DFT written as two small matrix products, the fastest of the transforms that
  export to ONNX (docs/benchmarks.md: onnxruntime's STFT and DFT kernels are several times
  slower);
- `WindowedFeaturizer`: `audio.windows` windows of `audio.clip_seconds` evenly spaced over the
  clip's centred `audio.max_seconds`. The clip's frames lie on one grid (frame k centred on
  sample k * hop_length, zeros outside the clip) and every window starts on a frame of it, so
  the frames the windows share are transformed once. Written without data-dependent branches,
  so the very same code exports to ONNX for any clip length.
"""
from __future__ import annotations

import math

import torch
import torchaudio
from torch import nn

from coughlab.config import AudioConfig


def clip_samples(cfg: AudioConfig) -> int:
    return int(round(cfg.clip_seconds * cfg.sample_rate))


def window_frame_count(cfg: AudioConfig) -> int:
    """Frames per window: one every hop_length samples from the window's first sample."""
    return 1 + clip_samples(cfg) // cfg.hop_length


def dft_factors(n: int) -> tuple[int, int]:
    """`n` as n1 * n2 with n2 the largest divisor not above sqrt(n): the cheapest two-step
    split (the matrix products cost about 2 * n * (n1 + n2) per frame)."""
    n2 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return n // n2, n2


def unit_roots(n: int) -> torch.Tensor:
    """exp(-2 pi i m / n) for m = 0..n-1 as `[n, 2]` (real, imaginary), float64.

    From Python's math (scalar libm, angles below 2 pi), so the tables and the graph's bytes do
    not depend on which SIMD path a vectorised library picks on this CPU.
    """
    return torch.tensor([[math.cos(2 * math.pi * m / n), -math.sin(2 * math.pi * m / n)]
                         for m in range(n)], dtype=torch.float64)


class LogMel(nn.Module):
    """Frames `[rows, n_fft]` -> log-mel `[rows, n_mels]`.

    With sample m = n2 * a + b (a < n1, b < n2) and bin k = c + n1 * d, the DFT is
    X[k] = sum_b w^(b k) sum_a x[n2 a + b] w^(n2 a c), w = exp(-2 pi i / n_fft): the inner sums
    are one matrix product over a, the outer (twiddles folded in) one batched product over b
    per c. The frames are real, so the inner sum at n1 - c is the conjugate of that at c: only
    c <= n1 / 2 are computed, each giving the outer sums of c and n1 - c. Only the bins the mel
    filters weigh are computed (d < n2 or fewer), and the mel matrix, in this layout, also adds
    the squares of the real and imaginary parts.
    """

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        n = cfg.n_fft
        n1, n2 = dft_factors(n)
        fb = torchaudio.functional.melscale_fbanks(
            n // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate, norm=None,
            mel_scale="htk")
        weighed = int(torch.nonzero(fb.abs().sum(dim=1)).max()) + 1 if fb.any() else 1
        d = torch.arange(min(n2, -(-weighed // n1)))
        b = torch.arange(n2)
        roots = unit_roots(n)

        def outer_block(c: int, sign: float) -> torch.Tensor:
            """[(part, b), (part', d)]: re + i sign im of the inner sums -> bins c + n1 d."""
            twiddle = roots[(b[:, None] * (c + n1 * d[None, :])) % n]
            re, im = twiddle[..., 0], twiddle[..., 1]
            return torch.cat([torch.cat([re, im], dim=1),
                              torch.cat([-sign * im, sign * re], dim=1)])

        def mel_block(c: int) -> torch.Tensor:
            """[(part', d), mel]: the filter weights of bins c + n1 d, once per part."""
            bins = c + n1 * d
            weights = torch.where((bins <= n // 2)[:, None], fb[bins.clamp(max=n // 2)], 0.0)
            return torch.cat([weights, weights])

        sources = range(n1 // 2 + 1)
        outer, mel = [], []
        for c in sources:
            mirrored = 0 < c < n1 - c  # c = 0 and c = n1 / 2 are their own mirror
            outer.append(torch.cat([outer_block(c, 1.0), outer_block(n1 - c, -1.0) if mirrored
                                    else torch.zeros(2 * n2, 2 * len(d))], dim=1))
            mel += [mel_block(c), mel_block(n1 - c) if mirrored
                    else torch.zeros(2 * len(d), cfg.n_mels)]
        a = torch.arange(n1)
        inner = roots[(torch.tensor(sources)[:, None] * a[None, :] * n2) % n]  # [c, a, part]
        self.register_buffer("inner", inner.permute(2, 0, 1).reshape(-1, n1).float(),
                             persistent=False)
        self.register_buffer("outer", torch.stack(outer).float(), persistent=False)
        self.register_buffer("mel", torch.cat(mel).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(n).reshape(n1, n2), persistent=False)
        self.n1, self.n2, self.sources = n1, n2, len(sources)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        rows = frames.shape[0]
        x = frames.reshape(rows, self.n1, self.n2) * self.window
        inner = self.inner @ x  # [rows, (part, c), b]
        inner = inner.reshape(rows, 2, self.sources, self.n2).permute(2, 0, 1, 3)
        spectrum = inner.reshape(self.sources, rows, 2 * self.n2) @ self.outer
        power = (spectrum * spectrum).transpose(0, 1).reshape(rows, self.mel.shape[0])
        return torch.log(power @ self.mel + 1e-6)


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
    centre crop. No branch on `n`, so one exported graph serves every length; every division
    is of a non-negative number, for the exported graph divides integers by truncation.
    """
    if count == 1:
        return [(n + length) // 2]  # length + floor((n - length) / 2)
    return [(length * (count - 1 - i) + n * i) // (count - 1) for i in range(count)]


def window_frames(n, length: int, count: int, hop: int) -> list:
    """The clip frame each window starts on: its window_starts sample, rounded down to the
    frame grid (frame k is centred on clip sample k * hop; negative before the clip)."""
    ahead = -(-length // hop)  # frames that lift every start - length above zero
    return [(start - length + ahead * hop) // hop - ahead
            for start in window_starts(n, length, count)]


class WindowedFeaturizer(nn.Module):
    """Waveform `[batch, samples]` -> log-mel windows `[batch, windows, 1, n_mels, frames]`.

    The centred `max_seconds` of the clip, `windows` evenly spaced windows of `clip_seconds`
    over it (see window_frames), all taken from one log-mel of the frames from the first
    window's first to the last window's last. featurize runs it on clips; export puts the same
    module in front of the network, so the Lambda scores the whole recording (up to
    `max_seconds`) exactly as evaluate does.
    """

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        if cfg.n_fft % cfg.hop_length:
            raise ValueError(f"audio.n_fft ({cfg.n_fft}) must be a multiple of "
                             f"audio.hop_length ({cfg.hop_length})")
        self.length = clip_samples(cfg)
        self.max_length = int(round(cfg.max_seconds * cfg.sample_rate))
        self.count = cfg.windows
        self.hop = cfg.hop_length
        self.n_fft = cfg.n_fft
        self.frames = window_frame_count(cfg)
        self.band_mean_norm = cfg.band_mean_norm
        self.logmel = LogMel(cfg)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        wave = centre_span(wave, self.max_length)
        batch = wave.shape[0]
        firsts = window_frames(wave.shape[-1], self.length, self.count, self.hop)
        # the windows move one way along the clip: the outer two bound them all
        first, last = torch.sym_min(firsts[0], firsts[-1]), torch.sym_max(firsts[0], firsts[-1])
        n_frames = last - first + self.frames
        # The clip padded to whole blocks of hop_length samples with frame k starting on block
        # k + self.frames (zeros reach past every window's frames either side), and each frame
        # gathered as n_fft // hop_length consecutive blocks.
        blocks_per_frame = self.n_fft // self.hop
        left = self.frames * self.hop + self.n_fft // 2
        n_blocks = (wave.shape[-1] + left + self.hop - 1) // self.hop + self.frames + \
            blocks_per_frame
        padded = nn.functional.pad(wave, (left, n_blocks * self.hop - wave.shape[-1] - left))
        starts = torch.arange(first + self.frames, last + 2 * self.frames)
        blocks = (starts[:, None] + torch.arange(blocks_per_frame)).reshape(-1)
        frames = padded.reshape(batch, n_blocks, self.hop).index_select(1, blocks)
        logmel = self.logmel(frames.reshape(batch * n_frames, self.n_fft))
        # One gather of whole frames, not a slice per window (symbolic slice bounds are slow
        # to export), then each window as [mels, frames].
        offsets = torch.stack([torch.scalar_tensor(f - first, dtype=torch.long) for f in firsts])
        rows = (offsets[:, None] + torch.arange(self.frames)).reshape(-1)
        windows = logmel.reshape(batch, n_frames, -1).index_select(1, rows)
        windows = windows.reshape(batch, self.count, self.frames, -1).transpose(2, 3)
        if self.band_mean_norm:
            windows = windows - windows.mean(dim=-1, keepdim=True)
        return windows.unsqueeze(2)
