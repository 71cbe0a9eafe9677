import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from coughlab import checkpoint, training
from coughlab.checkpoint import CHECKPOINT_FILE, fingerprint, read_checkpoint, write_checkpoint
from coughlab.config import ModelConfig, load_params
from coughlab.nets import MODEL_FILE, build_net, load_model
from coughlab.training import epoch_line, train_model

from helpers import conf, git_repo, make_features, write_params

TINY = ("train.epochs=6", "train.batch_size=8", "model.width=8")
# Settings that change which kernels torch, MKL and oneDNN pick (on an AVX-512 machine).
OTHER_CPU = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ATEN_CPU_CAPABILITY": "avx2"}


def run_train(workdir: Path, features: Path, tag: str, threads: int = 1,
              env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "coughlab.stages.train", "--features", str(features),
           "--model-dir", f"model-{tag}", "--checkpoint-dir", f"ckpt-{tag}",
           "--live-dir", f"live-{tag}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), **(env or {})}
    # SIGINT as a terminal gives it (Ctrl-C): a shell's background job (`make test &`, nohup)
    # passes SIGINT on ignored, and the interruption test would then interrupt nothing.
    return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]


def outputs(workdir: Path, tag: str) -> dict[str, bytes]:
    """What the stage writes to its DVC outputs (model.pt, metrics.json, curves), by path."""
    dirs = [workdir / f"model-{tag}", workdir / f"live-{tag}"]
    return {f"{d.name.split('-')[0]}/{f.relative_to(d)}": f.read_bytes()
            for d in dirs for f in sorted(d.rglob("*")) if f.is_file()}


def assert_same_weights(a: Path, b: Path) -> None:
    net_a, _ = load_model(a)
    net_b, _ = load_model(b)
    for (name, ta), tb in zip(net_a.state_dict().items(), net_b.state_dict().values()):
        assert torch.equal(ta, tb), f"{name} differs"


def checkpoint_epoch(checkpoint_dir: Path) -> int | None:
    try:
        return json.loads((checkpoint_dir / CHECKPOINT_FILE).read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A git repo with tiny params and features, and one uninterrupted run ("straight")."""
    root = git_repo(tmp_path_factory.mktemp("train"))
    write_params(root, *TINY)
    features = make_features(root / "features")
    finish(run_train(root, features, "straight"))
    return root, features


def test_training_is_bit_identical_whatever_the_cpu_kernels_and_threads(workspace):
    """Fails without coughlab.determinism on an AVX-512 machine: oneDNN's AVX2 kernels round
    differently. (On an AVX2-only machine the forced settings change nothing.)"""
    root, features = workspace
    finish(run_train(root, features, "other-cpu", threads=2, env=OTHER_CPU))
    finish(run_train(root, features, "three-threads", threads=3))
    for tag in ("other-cpu", "three-threads"):
        assert_same_weights(root / "model-straight" / MODEL_FILE,
                            root / f"model-{tag}" / MODEL_FILE)
        assert outputs(root, tag) == outputs(root, "straight"), tag


@pytest.mark.parametrize("sig, after_epoch", [
    pytest.param(sig, epoch, id=f"{sig.name}-after-epoch-{epoch}")
    for sig, epoch in ((signal.SIGKILL, 0), (signal.SIGINT, 1), (signal.SIGKILL, 3))])
def test_interrupted_training_resumes_invisibly(workspace, sig, after_epoch):
    """Same model.pt, metrics.json and curves as the uninterrupted run, byte for byte."""
    root, features = workspace
    tag = f"{sig.name}-{after_epoch}"
    victim = run_train(root, features, tag)
    deadline = time.monotonic() + 300
    while ((checkpoint_epoch(root / f"ckpt-{tag}") or -1) < after_epoch and victim.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.01)
    victim.send_signal(sig)
    assert victim.wait(timeout=60) != 0, "training finished before it could be stopped"
    stopped_at = checkpoint_epoch(root / f"ckpt-{tag}")
    assert stopped_at is not None and stopped_at < 5
    assert not (root / f"model-{tag}" / MODEL_FILE).exists()

    finish(run_train(root, features, tag))
    assert_same_weights(root / "model-straight" / MODEL_FILE, root / f"model-{tag}" / MODEL_FILE)
    assert outputs(root, tag) == outputs(root, "straight"), f"stopped after epoch {stopped_at}"


def test_checkpoint_from_other_params_is_not_resumed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    git_repo(tmp_path)
    features = make_features(tmp_path / "features")
    write_params(tmp_path, "train.epochs=2", "train.batch_size=8", "model.width=8")
    train_model(load_params(), features, tmp_path / "m1", tmp_path / "ckpt")
    write_params(tmp_path, "train.epochs=2", "train.batch_size=8", "model.width=8", "lr=1e-2")
    train_model(load_params(), features, tmp_path / "m2", tmp_path / "ckpt")
    assert "ignoring" in capsys.readouterr().out
    assert checkpoint_epoch(tmp_path / "ckpt") == 1


def zero_the_checkpoints_weights(checkpoint_dir: Path, fingerprint_hex: str) -> None:
    """Make the finished checkpoint's weights recognisable (as old code's would differ)."""
    stale = read_checkpoint(checkpoint_dir, fingerprint_hex, torch.device("cpu"))
    stale.tensors["model"] = {k: torch.zeros_like(v) for k, v in stale.tensors["model"].items()}
    write_checkpoint(checkpoint_dir, fingerprint_hex, stale)


def test_changed_training_code_retrains_instead_of_returning_the_old_model(tmp_path, monkeypatch,
                                                                             capsys):
    monkeypatch.chdir(tmp_path)
    git_repo(tmp_path)
    features = make_features(tmp_path / "features")
    write_params(tmp_path, "train.epochs=2", "train.batch_size=8", "model.width=8")
    params = load_params()
    monkeypatch.setattr(checkpoint, "code_digest", lambda: "code v1")
    train_model(params, features, tmp_path / "m1", tmp_path / "ckpt")
    zero_the_checkpoints_weights(tmp_path / "ckpt", fingerprint(params, features))

    stale_path = train_model(params, features, tmp_path / "stale", tmp_path / "ckpt")
    assert all(not v.any() for v in load_model(stale_path)[0].state_dict().values()
               if v.is_floating_point()), "same code: the finished checkpoint is reused"

    monkeypatch.setattr(checkpoint, "code_digest", lambda: "code v2")
    capsys.readouterr()
    fresh = train_model(params, features, tmp_path / "m2", tmp_path / "ckpt")
    assert "belongs to other params, features or training code" in capsys.readouterr().out
    assert_same_weights(tmp_path / "m1" / MODEL_FILE, fresh)


def test_fingerprint_covers_the_training_code_and_image(tmp_path, monkeypatch):
    features = make_features(tmp_path / "features")
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    monkeypatch.delenv(checkpoint.TRAINING_IMAGE_ENV, raising=False)
    base = fingerprint(params, features)
    image = "123.dkr.ecr.eu-west-1.amazonaws.com/coughlab-train:abc"
    monkeypatch.setenv(checkpoint.TRAINING_IMAGE_ENV, image)
    with_image = fingerprint(params, features)
    assert fingerprint(params, features, training_image=image) == with_image
    monkeypatch.setattr(checkpoint, "code_digest", lambda: "other code")
    assert len({base, with_image, fingerprint(params, features)}) == 3


class Evil:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_crafted_checkpoint_is_refused_without_running_code(tmp_path):
    """Even with a matching fingerprint and digest (anyone can compute both)."""
    marker = tmp_path / "pwned"
    fp = "f" * 64
    write_checkpoint(tmp_path / "ckpt", fp,
                     checkpoint.Checkpoint(0, [{"train_loss": 0.5}], {"model": Evil(marker)}))
    with pytest.raises(ValueError, match="refusing to load"):
        read_checkpoint(tmp_path / "ckpt", fp, torch.device("cpu"))
    assert not marker.exists()


def tiny_checkpoint(epoch: int = 0) -> checkpoint.Checkpoint:
    return checkpoint.Checkpoint(epoch, [{"train_loss": 0.5}] * (epoch + 1), {"model": {}})


def test_checkpoint_tensors_are_not_read_before_the_fingerprint_matches(tmp_path, monkeypatch,
                                                                         capsys):
    write_checkpoint(tmp_path, "a" * 64, tiny_checkpoint())
    monkeypatch.setattr(checkpoint.torch, "load", lambda *a, **k: pytest.fail("tensors were read"))
    assert read_checkpoint(tmp_path, "b" * 64, torch.device("cpu")) is None
    assert "belongs to other params" in capsys.readouterr().out


def edit_record(checkpoint_dir: Path, **changes) -> None:
    path = checkpoint_dir / CHECKPOINT_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("damage", [
    pytest.param(lambda d: (d / CHECKPOINT_FILE).write_text("{not json"), id="not-json"),
    pytest.param(lambda d: edit_record(d, tensors="../../etc/passwd"), id="path-outside"),
    pytest.param(lambda d: edit_record(d, epoch="0"), id="epoch-not-int"),
    pytest.param(lambda d: edit_record(d, history=[{"train_loss": "x"}]), id="history-not-numbers"),
    pytest.param(lambda d: edit_record(d, history=[]), id="history-short"),
    pytest.param(lambda d: next(d.glob("checkpoint-*.pt")).write_bytes(b"truncated"),
                 id="tensors-truncated"),
    pytest.param(lambda d: next(d.glob("checkpoint-*.pt")).unlink(), id="tensors-missing"),
])
def test_damaged_checkpoint_is_ignored(tmp_path, damage, capsys):
    write_checkpoint(tmp_path, "a" * 64, tiny_checkpoint())
    assert read_checkpoint(tmp_path, "a" * 64, torch.device("cpu")) is not None
    damage(tmp_path)
    assert read_checkpoint(tmp_path, "a" * 64, torch.device("cpu")) is None
    assert "ignoring" in capsys.readouterr().out


def test_crafted_model_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "model": Evil(marker)}, tmp_path / MODEL_FILE)
    with pytest.raises(ValueError, match="refusing to load"):
        load_model(tmp_path / MODEL_FILE)
    assert not marker.exists()


def tensors_in(tree) -> list[torch.Tensor]:
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in tensors_in(v)]
    if isinstance(tree, list):
        return [t for v in tree for t in tensors_in(v)]
    return [tree] if isinstance(tree, torch.Tensor) else []


def test_checkpoint_loads_every_tensor_onto_the_given_device(tmp_path, monkeypatch):
    """Model, optimizer state and smoothed loss all land on the learner's device (here the
    meta device stands in for CUDA); the stage passes the DataLoaders' device."""
    monkeypatch.chdir(tmp_path)
    git_repo(tmp_path)
    features = make_features(tmp_path / "features")
    write_params(tmp_path, "train.epochs=1", "train.batch_size=8", "model.width=8")
    params = load_params()
    train_model(params, features, tmp_path / "m", tmp_path / "ckpt")
    fp = fingerprint(params, features)
    loaded = read_checkpoint(tmp_path / "ckpt", fp, torch.device("meta"))
    tensors = tensors_in(loaded.tensors)
    assert tensors_in(loaded.tensors["opt"]) and len(tensors) > len(loaded.tensors["model"])
    assert {t.device.type for t in tensors} == {"meta"}

    devices = []
    real_read = training.read_checkpoint
    monkeypatch.setattr(training, "read_checkpoint",
                        lambda d, e, device: devices.append(device) or real_read(d, e, device))
    train_model(params, features, tmp_path / "m", tmp_path / "ckpt")
    assert devices == [torch.device("cpu")]  # fastai's default_device() without a GPU


class StopAfterFirstEpoch(Exception):
    pass


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resume_on_cuda(tmp_path, monkeypatch):
    """The spot-restart path on a GPU: Adam must find its state on the GPU, not the CPU."""
    from fastai.callback.core import Callback

    class Stop(Callback):
        order = 100

        def after_epoch(self):
            if self.epoch == 0:
                raise StopAfterFirstEpoch

    monkeypatch.chdir(tmp_path)
    git_repo(tmp_path)
    features = make_features(tmp_path / "features")
    write_params(tmp_path, "train.epochs=3", "train.batch_size=8", "model.width=8")
    params = load_params()
    with pytest.raises(StopAfterFirstEpoch):
        train_model(params, features, tmp_path / "m", tmp_path / "ckpt", callbacks=[Stop()])
    assert checkpoint_epoch(tmp_path / "ckpt") == 0
    path = train_model(params, features, tmp_path / "m", tmp_path / "ckpt")
    assert torch.load(path, weights_only=True)["device"].startswith("cuda")
    assert checkpoint_epoch(tmp_path / "ckpt") == 2


@pytest.mark.parametrize("arch", ["cnn", "resnet18", "resnet34"])
def test_architectures_take_one_channel_log_mels(arch):
    net = build_net(ModelConfig(arch=arch, width=8, dropout=0.2)).eval()
    assert net(torch.zeros(2, 1, 64, 188)).shape == (2, 2)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model.arch 'vgg'"):
        build_net(ModelConfig(arch="vgg", width=8, dropout=0.2))


def test_epoch_line_names_every_value():
    assert epoch_line(["epoch", "train_loss", "time"], [3, 0.512345, "00:01"]) == \
        "epoch 3  train_loss 0.5123  time 00:01"


def test_cell_weights_give_every_channel_label_cell_the_same_total():
    channel = np.array(["phone"] * 6 + ["app"] * 2)
    label = np.array([1, 1, 1, 1, 1, 0, 1, 0])
    weights = training.cell_weights([channel, label])
    totals = {(c, y): weights[(channel == c) & (label == y)].sum()
              for c, y in {(c, y) for c, y in zip(channel, label)}}
    assert set(np.round(list(totals.values()), 12)) == {0.25}  # 4 cells, equal shares, sum 1


def test_channel_label_balance_draws_batches_evenly_from_each_cell(tmp_path):
    """balance=channel_label: in what the model sees, channel says nothing about the label."""
    features = make_features(tmp_path / "features", n_per_split=(60, 8, 8))
    with np.load(features / "train.npz") as npz:
        channel, y = npz["channel"], npz["y"]
    dls, class_weights = training.dataloaders(features, 8, seed=0, balance="channel_label")
    drawn = np.concatenate([dls.train.get_idxs() for _ in range(200)])
    cells = [f"{c}|{label}" for c, label in zip(channel[drawn], y[drawn])]
    shares = np.unique(cells, return_counts=True)[1] / len(cells)
    assert len(shares) == 4 and np.abs(shares - 0.25).max() < 0.01
    assert torch.equal(class_weights, torch.ones(2))
    plain = np.concatenate([training.dataloaders(features, 8, 0)[0].train.get_idxs()
                            for _ in range(20)])
    plain_cells = [f"{c}|{label}" for c, label in zip(channel[plain], y[plain])]
    plain_shares = np.unique(plain_cells, return_counts=True)[1] / len(plain_cells)
    assert sorted(np.round(plain_shares, 2)) == [0.17, 0.17, 0.33, 0.33]  # as in the data


def test_channel_label_balance_counts_one_channel_name_of_two_sources_as_two_cells(tmp_path):
    """Coswara's and another source's "web" are two recording channels: pooled as one, the
    small source's clips were drawn 4 times less often than the large one's."""
    features = make_features(tmp_path / "features", n_per_split=(100, 8, 8))
    with np.load(features / "train.npz") as npz:
        arrays = dict(npz)
    arrays["channel"] = np.full(100, "web")
    arrays["source"] = np.where(np.arange(100) < 80, "coswara", "mine")
    np.savez_compressed(features / "train.npz", **arrays)
    dls, _ = training.dataloaders(features, 8, seed=0, balance="channel_label")
    drawn = np.concatenate([dls.train.get_idxs() for _ in range(200)])
    cells = [f"{s}|{label}" for s, label in zip(arrays["source"][drawn], arrays["y"][drawn])]
    shares = np.unique(cells, return_counts=True)[1] / len(cells)
    assert len(shares) == 4 and np.abs(shares - 0.25).max() < 0.01, shares


def test_unknown_balance_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="train.balance='source'.*label or channel_label"):
        training.dataloaders(make_features(tmp_path / "f", n_per_split=(4, 2, 2)), 2, 0, "source")


def epoch_history(checkpoint_dir: Path) -> list[dict[str, float]]:
    return json.loads((checkpoint_dir / CHECKPOINT_FILE).read_text())["history"]


@pytest.mark.parametrize("balance", ["label", "channel_label"])
def test_fewer_training_clips_than_a_batch_still_train(tmp_path, balance, capsys):
    """12 training clips, batch_size 32: fastai dropped the only (partial) batch, so every
    epoch logged train_loss nan, the run exited 0 and saved the random initial network."""
    features = make_features(tmp_path / "features", n_per_split=(12, 4, 4))
    params = conf("train.epochs=2", "train.batch_size=32", "model.width=8",
                  f"train.balance={balance}")
    train_model(params, features, tmp_path / "model", tmp_path / "ckpt")
    history = epoch_history(tmp_path / "ckpt")
    assert len(history) == 2
    assert all(np.isfinite(value) for row in history for value in row.values()), history
    assert "fewer than train.batch_size=32: batches of 12" in capsys.readouterr().out


def poison(npz: Path) -> None:
    """One clip's log-mels NaN, as a corrupt feature file or a diverging loss would give."""
    with np.load(npz) as data:
        arrays = dict(data)
    arrays["x"][0] = np.nan
    np.savez_compressed(npz, **arrays)


@pytest.mark.parametrize("split, loss", [("train", "train_loss"), ("valid", "valid_loss")])
def test_a_non_finite_loss_stops_training_naming_the_epoch(tmp_path, split, loss):
    """It used to log nan for every epoch, exit 0 and save the NaN network."""
    features = make_features(tmp_path / "features", n_per_split=(16, 8, 8))
    poison(features / f"{split}.npz")
    params = conf("train.epochs=3", "train.batch_size=8", "model.width=8", "train.balance=label")
    with pytest.raises(training.TrainingError, match=rf"epoch 0 of 3: {loss} nan"):
        train_model(params, features, tmp_path / "model", tmp_path / "ckpt")
    assert checkpoint_epoch(tmp_path / "ckpt") is None, "the NaN epoch was checkpointed"
    assert not (tmp_path / "model" / MODEL_FILE).exists()


def test_weights_equal_to_their_initialisation_are_refused(tmp_path):
    """lr=0: finite losses every epoch, and a model.pt that is the random initial network."""
    features = make_features(tmp_path / "features", n_per_split=(16, 8, 8))
    params = conf("train.epochs=2", "train.batch_size=8", "model.width=8", "lr=0.0")
    with pytest.raises(training.TrainingError, match="equal to their random initialisation"):
        train_model(params, features, tmp_path / "model", tmp_path / "ckpt")
    assert not (tmp_path / "model" / MODEL_FILE).exists()


def test_the_stage_reports_a_training_failure_in_one_line(tmp_path):
    root = git_repo(tmp_path)
    write_params(root, "train.epochs=2", "train.batch_size=8", "model.width=8", "lr=0.0")
    features = make_features(root / "features", n_per_split=(16, 8, 8))
    proc = run_train(root, features, "lr0")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "Traceback" not in err.decode()
    last = err.decode().strip().splitlines()[-1]
    assert last.startswith("train: ") and "initialisation" in last
