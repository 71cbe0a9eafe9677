"""Far less data than the sample, through combine, featurize and train (issue 24): a trained
model or a clear error, never NaN epochs and a saved random initial network."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fastai.torch_core import set_seed

from coughlab import LABELS, sample
from coughlab.checkpoint import CHECKPOINT_FILE
from coughlab.config import Params
from coughlab.nets import build_net, load_model
from coughlab.stages import combine as combine_stage
from coughlab.stages.combine import combine
from coughlab.stages.featurize import featurize
from coughlab.training import train_model

from helpers import conf, write_params

TINY = ("train.epochs=2", "model.width=8")  # train.batch_size stays the default, 32
RATES = {"phone": 8000, "app": 44100}


def own_recordings(data: Path, clips: list[tuple[str, str]], seed: int = 0) -> Path:
    """data/ as a new user fills it: one subject per (channel, label) clip, a real-shaped
    recording of coughs (coughlab.sample's generator) at the channel's sample rate."""
    rng = np.random.default_rng(seed)
    rows = ["path,label,subject_id,source,channel"]
    for k, (channel, label) in enumerate(clips):
        person = sample.subject(rng, 2 * k + LABELS.index(label))  # odd index: positive
        wave = sample.clip(rng, RATES[channel], person["voice"], person["wheeze"])
        rel = f"clips/{person['id']}.wav"
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(sample.wav_bytes(wave, RATES[channel]))
        rows.append(f"{rel},{label},{person['id']},local,{channel}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    return data


def per_cell(count: int) -> list[tuple[str, str]]:
    return [(channel, label) for channel in RATES for label in LABELS for _ in range(count)]


def combine_featurize_train(root: Path) -> tuple[Params, Path]:
    params = conf(*TINY)
    combine(root / "data", root / "combined", params.audio.sample_rate, params.data.quality,
            params.data.split, params.seed)
    featurize(root / "combined", root / "features", params.audio)
    return params, train_model(params, root / "features", root / "model", root / "ckpt")


def assert_trained(root: Path, params: Params, model_pt: Path) -> None:
    """Every epoch logged finite losses, and the saved weights left fit's starting network."""
    history = json.loads((root / "ckpt" / CHECKPOINT_FILE).read_text())["history"]
    assert len(history) == params.train.epochs
    assert all(math.isfinite(value) for row in history for value in row.values()), history
    set_seed(params.seed)  # as fit() does before it builds the network
    initial = build_net(params.model)
    trained, _ = load_model(model_pt)
    assert any(not torch.equal(start, end)
               for start, end in zip(initial.parameters(), trained.parameters()))


def test_twenty_own_clips_train_a_model(tmp_path):
    """5 clips per channel x label: the train split holds 12 clips, fewer than a batch (32).
    Every epoch used to log train_loss nan, and the random initial network was exported."""
    own_recordings(tmp_path / "data", per_cell(5))
    params, model_pt = combine_featurize_train(tmp_path)
    n_train = len(np.load(tmp_path / "features" / "train.npz")["y"])
    assert n_train == 12 < params.train.batch_size
    assert_trained(tmp_path, params, model_pt)


def test_six_own_clips_train_and_evaluate_says_the_test_split_is_too_small(tmp_path, monkeypatch,
                                                                           capsys):
    """3 subjects per label, one of each in every split: a trained model (it used to be the
    random initial network), and evaluate's verdict carries its too-small-test warning."""
    from coughlab.stages import evaluate as stage

    own_recordings(tmp_path / "data", [("phone", "negative"), ("app", "positive"),
                                       ("app", "negative"), ("phone", "positive"),
                                       ("phone", "negative"), ("app", "positive")])
    params, model_pt = combine_featurize_train(tmp_path)
    assert_trained(tmp_path, params, model_pt)
    # Scored by the trained network; exporting its graph (tested in test_export) takes 45 s.
    monkeypatch.setattr(stage, "check_graph", lambda graph, clips, scored: {"version": None})
    capsys.readouterr()
    report = stage.evaluate(tmp_path / "graph", tmp_path / "model", tmp_path / "features",
                            tmp_path / "combined", tmp_path / "metrics.json",
                            tmp_path / "evaluation.json", tmp_path / "plots")
    size = report["test_size"]
    assert size["subjects"] == {"negative": 1, "positive": 1} and not size["sufficient"]
    assert size["warning"] in capsys.readouterr().out


def test_all_positive_recordings_stop_at_combine_in_one_line(tmp_path, monkeypatch):
    """They used to split, featurize and train 20 NaN epochs before evaluate failed
    ("cannot calibrate the threshold")."""
    own_recordings(tmp_path / "data", [(channel, "positive") for channel in RATES] * 10)
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        combine_stage.main(["--in", "data", "--out", "combined"])
    message = str(stopped.value)
    assert message.startswith("combine: every split in use needs clips of both labels")
    assert message.endswith("train: 0 negative, 12 positive; valid: 0 negative, 4 positive; "
                            "test: 0 negative, 4 positive")  # 2 of each channel's 10 apiece
    assert not (tmp_path / "combined").exists()
