import av
import numpy as np
import pytest
import soundfile as sf
import torch

from coughlab.audio import AudioDecodeError, load_audio, quality_problem, resample, to_mono
from coughlab.config import QualityConfig
from coughlab.features import WindowedFeaturizer
from coughlab.training import SpecAugment

from helpers import conf


def tone(sr=16000, seconds=1.0, freq=440.0):
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("fmt,subtype", [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS"),
                                         ("mp3", "MPEG_LAYER_III")])
def test_soundfile_formats_decode(tmp_path, fmt, subtype):
    path = tmp_path / f"clip.{fmt}"
    sf.write(path, np.stack([tone(), tone()], axis=1), 16000, format=fmt.upper(), subtype=subtype)
    wave, sr = load_audio(path)
    assert sr == 16000 and wave.shape[0] == 2
    assert abs(wave.shape[1] - 16000) < 2000  # codecs pad a little


def write_webm_opus(path, wave, sr=48000):
    with av.open(str(path), "w", format="webm") as out:
        stream = out.add_stream("libopus", rate=sr)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(wave[None, :], format="flt", layout="mono")
        frame.sample_rate = sr
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_webm_opus_decodes_with_pyav(tmp_path):
    path = tmp_path / "clip.webm"
    write_webm_opus(path, tone(48000, 1.0))
    wave, sr = load_audio(path)
    assert sr == 48000 and wave.shape[0] == 1
    assert 0.9 < wave.shape[1] / 48000 < 1.2
    assert np.abs(wave).max() > 0.3


@pytest.mark.parametrize("payload,suffix", [(b"", ".wav"), (b"RIFF\x00\x01garbage", ".wav"),
                                            (b"not a webm", ".webm")])
def test_undecodable_files_raise_decode_error(tmp_path, payload, suffix):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(payload)
    with pytest.raises(AudioDecodeError, match="bad"):
        load_audio(path)


def test_mono_and_resample_to_one_rate():
    stereo = np.stack([tone(8000), np.zeros(8000, np.float32)])
    mono = to_mono(stereo)
    assert mono.shape == (8000,) and np.allclose(mono, stereo[0] / 2)
    up = resample(mono, 8000, 16000)
    assert up.shape == (16000,)
    # the 440 Hz tone survives resampling at the same frequency
    spectrum = np.abs(np.fft.rfft(up))
    assert abs(np.argmax(spectrum) * 16000 / up.size - 440) < 2


QUALITY = QualityConfig(min_seconds=0.3, silence_dbfs=-60.0, max_quarantine_fraction=0.2)


@pytest.mark.parametrize("wave,reason", [
    (np.zeros(0, np.float32), "empty"),
    (np.array([0.1, np.nan] * 8000, np.float32), "non_finite"),
    (np.array([0.1, np.inf] * 8000, np.float32), "non_finite"),
    (np.array([-np.inf, 0.1] * 8000, np.float32), "non_finite"),
    (-np.abs(tone()), None),  # the peak of a clip below zero throughout is its lowest sample
    (tone(16000, 0.1), "too_short"),
    (np.zeros(16000, np.float32), "silent"),
    (tone() * 1e-4, "silent"),
    (tone(), None),
])
def test_quality_problem(wave, reason):
    assert quality_problem(wave, 16000, QUALITY) == reason


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "AIFF", "W64"])
def test_16_bit_pcm_decodes_to_libsndfiles_own_floats(tmp_path, fmt):
    """The integer read of 16-bit PCM, scaled, is bit for bit what libsndfile's float read
    gives, over the whole int16 range, in every container soundfile writes it in."""
    every_value = np.arange(-32768, 32768, dtype=np.int16)
    stereo = np.stack([every_value, np.random.default_rng(0).permutation(every_value)], axis=1)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, stereo, 16000, format=fmt, subtype="PCM_16")
    wave, sr = load_audio(path)
    floats, _ = sf.read(path, dtype="float32", always_2d=True)
    assert sr == 16000 and wave.dtype == np.float32
    assert np.array_equal(wave, floats.T) and not np.shares_memory(wave, floats)


def test_featurizer_shape():
    cfg = conf("audio.windows=1").audio
    spec = WindowedFeaturizer(cfg)(torch.zeros(3, 12345))
    assert spec.shape == (3, 1, 1, cfg.n_mels, 188)


def test_spec_augment_masks_in_training_only():
    spec = torch.randn(4, 1, 64, 100)
    augment = SpecAugment(freq_mask=8, time_mask=16, n_masks=2)
    torch.manual_seed(0)
    masked = augment.train()(spec)
    assert masked.shape == spec.shape and not torch.equal(masked, spec)
    changed = (masked != spec).float().mean().item()
    assert 0 < changed < 0.6
    assert torch.equal(augment.eval()(spec), spec)


CHILD_LOAD = """
import sys
from pathlib import Path
from coughlab.audio import load_audio
for name in sys.argv[1:]:
    wave, sr = load_audio(Path(name))
    print(Path(name).name, wave.shape[0], wave.shape[1], sr, flush=True)
"""


@pytest.mark.parametrize("container, suffix", [("webm-opus", ".webm"), ("mp4-aac", ".mp4")])
def test_pyav_decodes_every_channel_count_without_crashing(tmp_path, container, suffix):
    """Combine reads webm/mp4 as the handler does: 8 planar channels must not kill the process."""
    import subprocess
    import sys

    from audio_fixtures import encode

    files = []
    for channels in range(1, 9):
        path = tmp_path / f"{channels}ch{suffix}"
        path.write_bytes(encode(container, channels, seconds=0.5))
        files.append(str(path))
    # A child process: a decoder that segfaults is then a failure, not a dead test runner.
    done = subprocess.run([sys.executable, "-c", CHILD_LOAD, *files], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    shapes = [line.split() for line in done.stdout.splitlines()]
    assert [int(channels) for _, channels, _, _ in shapes] == list(range(1, 9))
    assert all(int(n) >= 0.45 * 48000 and sr == "48000" for _, _, n, sr in shapes), shapes


def test_pyav_channels_stay_apart():
    """The packed read keeps each channel's samples in its own row (no interleaving mix-up)."""
    import tempfile

    from audio_fixtures import cough, encode

    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(encode("mp4-aac", 2, seconds=0.5))
        f.flush()
        wave, sr = load_audio(f.name)
    expected = cough(0.5, 48000, 2)
    n = min(wave.shape[1], expected.shape[1]) - 4096
    # aac has an encoder delay: align on the best lag of channel 0, then compare each channel.
    lag = int(np.argmax(np.correlate(wave[0, :8192], expected[0, :4096], "valid")))
    got = wave[:, lag:lag + n]
    for c in range(2):
        corr = [np.corrcoef(got[c], expected[k, :n])[0, 1] for k in range(2)]
        assert corr[c] > 0.9 and corr[c] > corr[1 - c], corr
