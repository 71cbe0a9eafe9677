import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from coughlab.config import ModelConfig, load_params
from coughlab.model import (CHECKPOINT_FILE, MODEL_FILE, build_net, epoch_line, load_model,
                            train_model)

from helpers import git_repo, make_features, write_params

TINY = ("train.epochs=6", "train.batch_size=8", "model.width=8")


def run_train(workdir: Path, features: Path, tag: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "coughlab.stages.train", "--features", str(features),
           "--model-dir", f"model-{tag}", "--checkpoint-dir", f"ckpt-{tag}", "--live-dir", f"live-{tag}"]
    # One thread per run: two torch processes on two cores otherwise fight over OpenMP threads.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_killed_training_resumes_to_the_same_weights(tmp_path):
    git_repo(tmp_path)
    write_params(tmp_path, *TINY)
    features = make_features(tmp_path / "features")

    straight = run_train(tmp_path, features, "straight")
    assert straight.wait(timeout=300) == 0, straight.stderr.read().decode()[-2000:]

    victim = run_train(tmp_path, features, "resumed")
    checkpoint = tmp_path / "ckpt-resumed" / CHECKPOINT_FILE
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    killed_at = torch.load(checkpoint, weights_only=False)["epoch"]
    assert killed_at < 5, "training finished before it could be killed"
    assert not (tmp_path / "model-resumed" / MODEL_FILE).exists()

    resumed = run_train(tmp_path, features, "resumed")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]

    a, _ = load_model(tmp_path / "model-straight" / MODEL_FILE)
    b, _ = load_model(tmp_path / "model-resumed" / MODEL_FILE)
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), f"{name} differs after resume from epoch {killed_at}"


def test_checkpoint_from_other_params_is_not_resumed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    git_repo(tmp_path)
    features = make_features(tmp_path / "features")
    write_params(tmp_path, "train.epochs=2", "train.batch_size=8", "model.width=8")
    train_model(load_params(), features, tmp_path / "m1", tmp_path / "ckpt")
    write_params(tmp_path, "train.epochs=2", "train.batch_size=8", "model.width=8", "lr=1e-2")
    train_model(load_params(), features, tmp_path / "m2", tmp_path / "ckpt")
    assert "ignoring" in capsys.readouterr().out
    saved = torch.load(tmp_path / "ckpt" / CHECKPOINT_FILE, weights_only=False)
    assert saved["epoch"] == 1


@pytest.mark.parametrize("arch", ["cnn", "resnet18", "resnet34"])
def test_architectures_take_one_channel_log_mels(arch):
    net = build_net(ModelConfig(arch=arch, width=8)).eval()
    assert net(torch.zeros(2, 1, 64, 188)).shape == (2, 2)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model.arch 'vgg'"):
        build_net(ModelConfig(arch="vgg"))


def test_epoch_line_names_every_value():
    assert epoch_line(["epoch", "train_loss", "time"], [3, 0.512345, "00:01"]) == \
        "epoch 3  train_loss 0.5123  time 00:01"
