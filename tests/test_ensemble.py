"""A seed ensemble scored over windows of the whole clip: training, the saved model, the ONNX
graph and the Lambda all compute the same mean P(positive)."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from coughlab.export import ServingModel, onnx_predict, onnx_session
from coughlab.nets import Ensemble, build_net, load_model, predict_proba, save_model
from coughlab.stages.featurize import featurize_waves
from coughlab.training import ChannelAugment, dataloaders, train_model

from helpers import conf, make_features, package_lambda, write_params

ROOT = Path(__file__).resolve().parents[1]
WINDOWS = conf("audio.windows=5", "audio.max_seconds=30.0").audio


def members(n: int) -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [build_net(conf("model.width=8").model).eval() for _ in range(n)]


def test_ensemble_scores_the_mean_of_its_members_over_the_windows():
    nets = members(3)
    waves = [np.random.default_rng(n).standard_normal(n).astype(np.float32) * 0.1
             for n in (8000, 48000, 160000)]
    x = featurize_waves(waves, WINDOWS)
    assert x.shape[:2] == (3, 5)
    expected = np.mean([[predict_proba(net, x[:, [w]]) for w in range(5)] for net in nets],
                       axis=(0, 1))
    assert np.allclose(predict_proba(Ensemble(nets), x), expected, atol=1e-6)


def test_each_member_scores_every_window_of_every_clip_in_one_pass():
    """One forward of the ensemble over all windows: a network pass per member, whose batch
    holds every window of every clip (the graph's convolutions are the same passes)."""
    nets = members(3)
    batches = []
    for net in nets:
        first_conv = net[1][0][0]
        first_conv.register_forward_hook(lambda module, args, out: batches.append(len(args[0])))
    with torch.inference_mode():
        ServingModel(Ensemble(nets), WINDOWS)(torch.zeros(2, 16000 * 7))
    assert batches == [2 * WINDOWS.windows] * 3


def test_an_ensemble_saves_and_loads_as_one_model(tmp_path):
    nets = members(2)
    params = conf("model.width=8", "audio.windows=5", "audio.max_seconds=30.0")
    net, audio = load_model(save_model(Ensemble(nets), params, tmp_path))
    assert isinstance(net, Ensemble) and len(net.members) == 2 and audio == WINDOWS
    for loaded, saved in zip(net.members, nets):
        for a, b in zip(loaded.state_dict().values(), saved.state_dict().values()):
            assert torch.equal(a, b)


def test_members_are_the_single_models_of_consecutive_seeds(tmp_path):
    features = make_features(tmp_path / "features", n_per_split=(24, 8, 8), frames=16)
    tiny = ("model.width=8", "train.epochs=2", "train.batch_size=8", "train.balance=label")
    params = conf("seed=7", "train.members=2", *tiny)
    net, _ = load_model(train_model(params, features, tmp_path / "ens", tmp_path / "ckpt"))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["member-0", "member-1"]
    for k, seed in enumerate((7, 8)):
        one = conf(f"seed={seed}", *tiny)
        single, _ = load_model(train_model(one, features, tmp_path / f"m{k}", tmp_path / f"c{k}"))
        for a, b in zip(net.members[k].state_dict().values(), single.state_dict().values()):
            assert torch.equal(a, b)


def test_training_takes_a_random_window_of_each_clip_and_validation_the_middle(tmp_path):
    """Window w of every clip holds the value w: the batches show which windows were drawn."""
    n_windows = 5
    for split, n in (("train", 40), ("valid", 8)):
        x = np.broadcast_to(np.arange(n_windows, dtype=np.float32)[None, :, None, None, None],
                            (n, n_windows, 1, 4, 4)).copy()
        np.savez(tmp_path / f"{split}.npz", x=x, y=(np.arange(n) % 2).astype(np.int8),
                 path=np.array([f"{split}{i}" for i in range(n)]), channel=np.array(["c"] * n))
    dls, _ = dataloaders(tmp_path, batch_size=8, seed=1)
    drawn = torch.cat([xb[:, 0, 0, 0] for xb, _ in dls.train]).unique().tolist()
    assert drawn == list(range(n_windows))
    assert torch.cat([xb[:, 0, 0, 0] for xb, _ in dls.valid]).unique().tolist() == [2]


def test_channel_augment_adds_one_curve_per_clip_and_band_in_training_only():
    spec = torch.randn(6, 1, 64, 20)
    augment = ChannelAugment(gain=1.0, tilt=0.5).train()
    torch.manual_seed(0)
    delta = augment(spec) - spec
    assert delta.abs().max() > 0.1
    assert torch.allclose(delta, delta[..., :1].expand_as(delta), atol=1e-5)  # constant in time
    assert not torch.allclose(delta[0], delta[1])  # every clip its own channel
    assert torch.equal(augment.eval()(spec), spec)


@pytest.fixture(scope="module")
def ensemble_export(tmp_path_factory):
    """An untrained 3-member ensemble with 5 windows, exported by export-lambda from original
    files (8 kHz stereo mp3, a 48 kHz mp3 longer than max_seconds, a short wav)."""
    from coughlab.stages.combine import process_clip, wav_path
    from coughlab.stages.featurize import featurize

    root = tmp_path_factory.mktemp("ensemble")
    params = conf("model.width=8", "audio.windows=5", "audio.max_seconds=12.0")
    audio = params.audio
    save_model(Ensemble(members(3)), params, root / "model")
    rng = np.random.default_rng(0)
    rows = []
    (root / "fetched").mkdir()
    for name, rate, channels, seconds in [("call.mp3", 8000, 2, 7.5), ("long.mp3", 48000, 1, 20.0),
                                          ("app.wav", 44100, 1, 0.7)]:
        t = np.arange(int(rate * seconds)) / rate
        coughs = np.sin(2 * np.pi * 300 * t * (1 + t / seconds)) * (np.sin(1.3 * t) ** 2) * 0.5
        wave = np.stack([coughs + rng.standard_normal(t.size) * 0.02 for _ in range(channels)], 1)
        sf.write(root / "fetched" / name, wave.astype(np.float32), rate)
        clip = wav_path(name)
        stats = process_clip(root / "fetched" / name, root / "combined" / "clips" / clip,
                             audio.sample_rate, params.data.quality)
        rows.append({"path": clip, "fetched_path": name, "label": "positive", "subject_id": name,
                     "source": "sample", "split": "test", **stats})
    pd.DataFrame(rows).to_csv(root / "combined" / "manifest.csv", index=False)
    featurize(root / "combined", root / "features", audio)
    (root / "data").mkdir()
    (root / "data" / "labels.csv").write_text("path,label,subject_id,source,channel\n")
    meta = package_lambda(root, root / "model", root / "combined", root / "features",
                          root / "fetched", root / "lambda", root / "data",
                          write_params(root, "model.width=8"), root / "reports" / "model.json")
    return {"root": root, "meta": meta, "audio": audio}


def test_the_lambda_scores_the_whole_recording_as_the_pipeline_does(ensemble_export):
    """export-lambda's gate passed: the handler on the original bytes (up to max_seconds of
    them) matched evaluate's windows-and-members mean within 1e-4 on every test clip."""
    meta = ensemble_export["meta"]
    assert meta["input_seconds"] == 12.0
    assert meta["parity"] == {"passed": True, "clips": 3, "tolerance": 1e-4,
                              "compared": "original files: lambda/handler.py vs the pipeline"}


@pytest.mark.parametrize("samples", [1, 800, 48000, 48001, 16000 * 12, 16000 * 15 + 7])
def test_the_onnx_graph_holds_the_ensemble_and_the_windows(ensemble_export, samples):
    import onnx

    onnx_file = ensemble_export["root"] / "lambda" / "model.onnx"
    proto = onnx.load(onnx_file)
    convs = sum(n.op_type == "Conv" for n in [*proto.graph.node,
                                              *(n for f in proto.functions for n in f.node)])
    assert convs == 3 * 4  # every member's four conv blocks
    net, audio = load_model(ensemble_export["root"] / "model" / "model.pt")
    wave = (np.random.default_rng(samples).standard_normal((2, samples)) * 0.1).astype(np.float32)
    with torch.inference_mode():
        expected = ServingModel(net, audio)(torch.from_numpy(wave)).numpy()
    offline = predict_proba(net, featurize_waves(list(wave), audio))
    got = onnx_predict(onnx_session(onnx_file), wave)
    assert np.abs(got - expected).max() <= 1e-4 and np.abs(got - offline).max() <= 1e-4
