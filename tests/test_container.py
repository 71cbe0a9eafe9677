"""The SageMaker container entrypoint, run on a temp dir laid out like /opt/ml (no Docker)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from coughlab.config import ModelConfig, Params, SageMakerConfig, TrainConfig
from coughlab.container import (EXIT_TERMINATED, Layout, hyperparameters, main,
                                params_from_hyperparameters)
from coughlab.model import CHECKPOINT_FILE, MODEL_FILE, load_model

from helpers import make_features

EPOCHS = 4
TINY = Params(model=ModelConfig(width=8), train=TrainConfig(epochs=EPOCHS, batch_size=8))


def opt_ml(base: Path, hyper: dict[str, str], features: bool = True) -> Layout:
    """What SageMaker puts in /opt/ml before starting the container."""
    layout = Layout(base)
    layout.hyperparameters.parent.mkdir(parents=True)
    layout.hyperparameters.write_text(json.dumps(hyper))
    if features:
        make_features(layout.features)
    return layout


def start_container(layout: Layout, via_env: bool = False) -> subprocess.Popen:
    """`docker run <image> train`, minus Docker; the base dir by flag or by $SM_BASE_DIR."""
    cmd = [sys.executable, "-m", "coughlab.container", "train"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if via_env:
        env["SM_BASE_DIR"] = str(layout.base)
    else:
        cmd += ["--base-dir", str(layout.base)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture
def one_thread():
    """One torch thread here and in the subprocesses: same arithmetic, and no thread
    oversubscription on a busy CI machine (which makes it several times slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def last_step(layout: Layout) -> int:
    return json.loads((layout.output_data / "metrics.json").read_text())["step"]


def test_sigterm_then_restart_ends_with_the_uninterrupted_weights(tmp_path, one_thread):
    straight = opt_ml(tmp_path / "straight", hyperparameters(TINY))
    assert main(["train", "--base-dir", str(straight.base)]) == 0  # in-process: no torch import
    assert not straight.failure.exists()

    spot = opt_ml(tmp_path / "spot", hyperparameters(TINY))
    victim = start_container(spot, via_env=True)
    checkpoint = spot.checkpoints / CHECKPOINT_FILE
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim.send_signal(signal.SIGTERM)  # what a spot interruption delivers
    _, err = victim.communicate(timeout=120)
    assert victim.returncode == EXIT_TERMINATED, err[-2000:]
    assert "SIGTERM: stopped after saving" in err
    stopped_at = json.loads(checkpoint.read_text())["epoch"]
    assert stopped_at < EPOCHS - 1, "training finished before SIGTERM arrived"
    assert not (spot.model / MODEL_FILE).exists()
    assert not spot.failure.exists()

    restarted = start_container(spot, via_env=True)  # SageMaker restores checkpoints/ and reruns
    out, err = restarted.communicate(timeout=300)
    assert restarted.returncode == 0, err[-2000:]
    assert f"resuming after epoch {stopped_at}" in out

    a, _ = load_model(straight.model / MODEL_FILE)
    b, _ = load_model(spot.model / MODEL_FILE)
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), f"{name} differs after resuming from epoch {stopped_at}"
    assert last_step(straight) == last_step(spot) == EPOCHS - 1
    assert curves(spot) == curves(straight)


def curves(layout: Layout) -> dict[str, bytes]:
    """The job's output/data: metrics.json and the per-epoch curves, by relative path."""
    return {str(f.relative_to(layout.output_data)): f.read_bytes()
            for f in sorted(layout.output_data.rglob("*")) if f.is_file()}


def write_features(layout: Layout) -> None:
    make_features(layout.features)


def write_bad_features(layout: Layout) -> None:
    make_features(layout.features)
    (layout.features / "train.npz").write_bytes(b"not an npz")


@pytest.mark.parametrize("hyper, prepare, reason", [
    (hyperparameters(TINY), lambda layout: None,
     "FileNotFoundError: input channel 'features' (.*) lacks train.npz, valid.npz"),
    (hyperparameters(TINY), write_bad_features,
     "ValueError: .*train.npz is not a features file from the featurize stage"),
    ({**hyperparameters(TINY), "train.epochs": "many"}, write_features,
     "hyperparameter 'train.epochs' = 'many' is not JSON text"),
    ({**hyperparameters(TINY), "train.epocs": "3"}, write_features,
     "hyperparameters do not fit coughlab's params: .*epocs"),
])
def test_bad_input_writes_the_failure_reason_and_exits_nonzero(tmp_path, hyper, prepare, reason):
    layout = opt_ml(tmp_path, hyper, features=False)
    prepare(layout)
    assert main(["train", "--base-dir", str(tmp_path)]) == 1
    assert re.search(reason, layout.failure.read_text())
    assert not (layout.model / MODEL_FILE).exists()


def test_missing_hyperparameters_file_is_a_failure(tmp_path):
    assert main(["train", "--base-dir", str(tmp_path)]) == 1
    assert "hyperparameters.json is missing" in Layout(tmp_path).failure.read_text()


def test_hyperparameters_are_strings_that_rebuild_the_training_params():
    params = Params(lr=1e-2, model=ModelConfig(arch="resnet18", dropout=0.5),
                    train=TrainConfig(backend="sagemaker", epochs=3,
                                      sagemaker=SageMakerConfig(instance_type="ml.m5.xlarge")))
    hyper = hyperparameters(params)
    assert all(isinstance(v, str) for v in hyper.values())
    assert hyper["lr"] == "0.01" and hyper["model.arch"] == '"resnet18"'
    assert not any(key.startswith("train.sagemaker") for key in hyper)
    rebuilt = params_from_hyperparameters(hyper)
    assert rebuilt.train.sagemaker == SageMakerConfig()  # job settings stay on the launching side
    rebuilt.train.sagemaker = params.train.sagemaker
    assert rebuilt == params
