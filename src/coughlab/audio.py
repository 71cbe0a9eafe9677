"""Decoding, mixdown, resampling and the quality rules: numpy only, no torch.

- decoding: soundfile for wav/flac/ogg/mp3, PyAV for webm/opus/m4a;
- one sample rate for every source (`resample`, soxr), mono mixdown;
- `quality_problem`: why a clip should be quarantined, or None.

combine depends on this module alone, so changing the featurizer or the training
augmentation never re-decodes a clip. lambda/handler.py repeats `resample` and
`quality_problem` (it ships without coughlab); export-lambda's parity gate checks the twins agree.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from coughlab.config import QualityConfig

PYAV_SUFFIXES = {".webm", ".opus", ".m4a", ".mp4", ".aac", ".weba"}
# libsndfile turns a 16-bit sample s into the float32 s / 32768, a power of two, so exactly;
# reading the integers and scaling them gives the same floats at a tenth of libsndfile's cost.
PCM16_SCALE = np.float32(1 / 32768)


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
        return read_soundfile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioDecodeError(f"{path.name}: {err}") from err


def read_soundfile(source: str | io.BytesIO) -> tuple[np.ndarray, int]:
    """libsndfile's float32 `[channels, samples]` and rate (16-bit PCM read as integers and
    scaled, to the same floats)."""
    with sf.SoundFile(source) as f:
        if f.subtype == "PCM_16":
            data = f.read(dtype="int16", always_2d=True) * PCM16_SCALE
        else:
            data = f.read(dtype="float32", always_2d=True)
        return np.ascontiguousarray(data.T), int(f.samplerate)


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
    """Return why a mono clip is unusable (`empty`, `non_finite`, `too_short`, `silent`),
    or None."""
    if wave.size == 0:
        return "empty"
    high, low = float(wave.max()), float(wave.min())  # a NaN or infinity reaches one of them
    if not (np.isfinite(high) and np.isfinite(low)):
        return "non_finite"
    if wave.size / sr < quality.min_seconds:
        return "too_short"
    peak = max(high, -low)
    if peak == 0.0 or 20 * np.log10(peak) < quality.silence_dbfs:
        return "silent"
    return None
