"""Recordings in every container the handler reads, with any channel count from 1 to 8,
encoded on the spot by PyAV (FFmpeg) and libsndfile: no binary fixtures.

Imported both by pytest and by child processes that load lambda/handler.py without torch or
coughlab, so it needs only numpy, soundfile and PyAV.
"""
from __future__ import annotations

import io

import numpy as np

# FFmpeg's default layout for each channel count (what a 7.1 browser or phone file carries).
LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
# No random stream serials (Ogg) or UIDs (Matroska): the same file on every run.
BITEXACT = {"fflags": "+bitexact"}
# name -> (FFmpeg muxer, encoder, most channels the encoder takes); None: written by libsndfile
CONTAINERS = {
    "wav": ("wav", "pcm_s16le", 8),
    "flac": ("flac", "flac", 8),
    "ogg-vorbis": (None, "OGG", 8),  # FFmpeg's own vorbis encoder is stereo only
    "ogg-opus": ("ogg", "libopus", 8),
    "mp3": ("mp3", "libmp3lame", 2),
    "webm-opus": ("webm", "libopus", 8),
    "mp4-aac": ("mp4", "aac", 8),
    "mkv-pcm": ("matroska", "pcm_s16le", 8),
}


def cough(seconds: float, sr: int, channels: int, seed: int = 0) -> np.ndarray:
    """`[channels, n]` float32: a decaying tone plus noise, a different mix on every channel."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    rows = [np.sin(2 * np.pi * (300 + 70 * c) * t) * np.exp(-2 * t) * 0.4
            + rng.standard_normal(t.size) * 0.02 for c in range(channels)]
    return np.asarray(rows, dtype=np.float32)


def encode(container: str, channels: int, seconds: float = 1.0, sr: int = 48000) -> bytes:
    """The bytes of a `container` file holding `channels` channels of `cough`."""
    muxer, codec, most = CONTAINERS[container]
    if channels > most:
        raise ValueError(f"{codec} takes at most {most} channels")
    wave = cough(seconds, sr, channels)
    if muxer is None:
        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, wave.T, sr, format=codec)
        return remux_ogg(buf.getvalue())
    return encode_pyav(muxer, codec, wave, sr, LAYOUTS[channels])


def remux_ogg(data: bytes) -> bytes:
    """libsndfile's Ogg with FFmpeg's fixed stream serial instead of its time-seeded one: the
    same bytes on every run, so a derandomized fuzz run is the same run everywhere."""
    import av

    out_buf = io.BytesIO()
    with av.open(io.BytesIO(data)) as source, \
            av.open(out_buf, mode="w", format="ogg", options=BITEXACT) as out:
        stream = out.add_stream_from_template(source.streams.audio[0])
        for packet in source.demux(source.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return out_buf.getvalue()


def encode_pyav(muxer: str, codec: str, wave: np.ndarray, sr: int, layout: str) -> bytes:
    """Frames built packed (`flt`, one plane): PyAV 18.1 mishandles 8 planar planes."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=muxer, options=BITEXACT) as out:
        stream = out.add_stream(codec, rate=sr, layout=layout)
        frame_size = stream.codec_context.frame_size or 1024
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout=layout,
                                      rate=sr)
        for start in range(0, wave.shape[1], frame_size):
            packed = np.ascontiguousarray(wave[:, start:start + frame_size].T).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(packed, format="flt", layout=layout)
            frame.sample_rate = sr
            for converted in resampler.resample(frame):
                out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return buf.getvalue()


def every_recording(seconds: float = 1.0) -> dict[str, bytes]:
    """{"webm-opus/8ch": bytes, ...}: each container with each channel count it takes."""
    return {f"{name}/{channels}ch": encode(name, channels, seconds)
            for name, (_, _, most) in CONTAINERS.items() for channels in range(1, most + 1)}
