"""The featurizer: one log-mel of the clip's frames, cut into windows, identical in torch and in
the exported graph."""
import numpy as np
import pytest
import torch
import torchaudio

from coughlab.features import (
    WindowedFeaturizer,
    clip_samples,
    window_frame_count,
    window_frames,
    window_starts,
)

from helpers import conf

LENGTHS = [1, 255, 800, 47999, 48000, 48001, 5 * 16000 + 77, 160000, 12 * 16000 + 513]


def noise(batch: int, samples: int) -> torch.Tensor:
    rng = np.random.default_rng(samples)
    return torch.from_numpy((rng.standard_normal((batch, samples)) * 0.1).astype(np.float32))


def own_spectrograms(wave: torch.Tensor, cfg) -> torch.Tensor:
    """Each window computed on its own, as torchaudio does it: the window's frames from its
    own samples and n_fft // 2 either side of them (zeros outside the clip)."""
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        n_mels=cfg.n_mels, f_min=cfg.f_min, f_max=cfg.f_max, power=2.0, center=False)
    max_length = int(round(cfg.max_seconds * cfg.sample_rate))
    n = min(wave.shape[-1], max_length)
    start = max(wave.shape[-1] - max_length, 0) // 2
    margin = 2 * clip_samples(cfg) + cfg.n_fft
    padded = torch.nn.functional.pad(wave[:, start : start + n], (margin, margin))
    span = (window_frame_count(cfg) - 1) * cfg.hop_length + cfg.n_fft
    windows = []
    for frame in window_frames(n, clip_samples(cfg), cfg.windows, cfg.hop_length):
        first = margin + frame * cfg.hop_length - cfg.n_fft // 2
        windows.append(torch.log(mel(padded[:, first : first + span]) + 1e-6))
    return torch.stack(windows, dim=1).unsqueeze(2)


@pytest.mark.parametrize("windows", [1, 2, 5])
@pytest.mark.parametrize("samples", LENGTHS)
def test_every_window_equals_its_own_spectrogram(samples, windows):
    """The windows come out of one transform of the clip's frames, yet each is what computing
    that window alone gives, to float32 rounding."""
    cfg = conf(f"audio.windows={windows}", "audio.max_seconds=10.0").audio
    wave = noise(2, samples)
    with torch.inference_mode():
        got = WindowedFeaturizer(cfg)(wave)
    assert got.shape == (2, windows, 1, cfg.n_mels, window_frame_count(cfg))
    assert (got - own_spectrograms(wave, cfg)).abs().max() <= 1e-4


def test_overlapping_windows_share_their_frames_bit_for_bit():
    """Where two windows hold the same clip frame, it is the same transformed frame."""
    cfg = conf("audio.windows=5").audio
    n = 4 * 16000 + 123
    with torch.inference_mode():
        x = WindowedFeaturizer(cfg)(noise(1, n))[0, :, 0]  # [windows, mels, frames]
    firsts = window_frames(n, clip_samples(cfg), cfg.windows, cfg.hop_length)
    shift = firsts[1] - firsts[0]
    assert 0 < shift < x.shape[-1]
    assert torch.equal(x[0, :, shift:], x[1, :, : x.shape[-1] - shift])


@pytest.mark.parametrize("count", [1, 2, 5])
def test_windows_start_on_the_frame_below_their_evenly_spaced_start(count):
    """Whole-number arithmetic a graph can do (no division of negatives), same as the floors."""
    length, hop = 48000, 256
    for n in [1, 2, 255, 47999, 48000, 48001, 48257, 160000, 480000]:
        starts = window_starts(n, length, count)
        expected = ([length + (n - length) // 2] if count == 1 else
                    [length + (n - length) * i // (count - 1) for i in range(count)])
        assert starts == expected
        assert window_frames(n, length, count, hop) == [(s - length) // hop for s in starts]


def test_exported_featurizer_gives_torch_features_at_every_length(tmp_path):
    """Short clips included: there the windows start before the clip, and a graph that divided
    negative sample counts by truncation would shift them."""
    import onnxruntime as ort

    cfg = conf("audio.windows=5", "audio.max_seconds=10.0").audio
    featurizer = WindowedFeaturizer(cfg).eval()
    samples = torch.export.Dim("samples", min=1, max=cfg.sample_rate * 600)
    program = torch.onnx.export(featurizer, (noise(2, 50000),), dynamo=True, opset_version=18,
                                dynamic_shapes={"wave": {0: torch.export.Dim("batch"),
                                                         1: samples}}, verbose=False)
    program.save(tmp_path / "featurizer.onnx")
    session = ort.InferenceSession(tmp_path / "featurizer.onnx",
                                   providers=["CPUExecutionProvider"])
    for n in LENGTHS:
        wave = noise(2, n)
        with torch.inference_mode():
            expected = featurizer(wave).numpy()
        got = session.run(None, {session.get_inputs()[0].name: wave.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4, n


def test_n_fft_must_be_a_multiple_of_the_hop():
    with pytest.raises(ValueError, match="multiple of audio.hop_length"):
        WindowedFeaturizer(conf("audio.hop_length=300").audio)
