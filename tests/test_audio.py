import av
import numpy as np
import pytest
import soundfile as sf
import torch

from coughlab.audio import (AudioDecodeError, Featurizer, SpecAugment, fit_length, load_audio,
                            quality_problem, resample, to_mono)
from coughlab.config import AudioConfig, QualityConfig


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


QUALITY = QualityConfig(min_seconds=0.3, silence_dbfs=-60.0)


@pytest.mark.parametrize("wave,reason", [
    (np.zeros(0, np.float32), "empty"),
    (np.array([0.1, np.nan] * 8000, np.float32), "non_finite"),
    (tone(16000, 0.1), "too_short"),
    (np.zeros(16000, np.float32), "silent"),
    (tone() * 1e-4, "silent"),
    (tone(), None),
])
def test_quality_problem(wave, reason):
    assert quality_problem(wave, 16000, QUALITY) == reason


@pytest.mark.parametrize("n", [1, 99, 100, 101, 250])
def test_fit_length_centres_crop_and_pad(n):
    wave = torch.arange(1, n + 1, dtype=torch.float32)
    out = fit_length(wave, 100)
    assert out.shape == (100,)
    kept = out[out != 0]
    assert torch.equal(kept, torch.arange(1, n + 1, dtype=torch.float32)[(n - kept.numel()) // 2:][:kept.numel()])
    first, last = torch.nonzero(out)[[0, -1]].flatten().tolist()
    assert abs((first + last) / 2 - 49.5) <= 1  # the signal sits in the middle


def test_featurizer_shape():
    cfg = AudioConfig()
    spec = Featurizer(cfg)(torch.zeros(3, 12345))
    assert spec.shape == (3, 1, cfg.n_mels, 188)


def test_spec_augment_masks_in_training_only():
    spec = torch.randn(4, 1, 64, 100)
    augment = SpecAugment(freq_mask=8, time_mask=16, n_masks=2)
    torch.manual_seed(0)
    masked = augment.train()(spec)
    assert masked.shape == spec.shape and not torch.equal(masked, spec)
    changed = (masked != spec).float().mean().item()
    assert 0 < changed < 0.6
    assert torch.equal(augment.eval()(spec), spec)
