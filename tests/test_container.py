"""The SageMaker container entrypoint, run on a temp dir laid out like /opt/ml (no Docker)."""
import dataclasses
import errno
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

from coughlab.aws import container
from coughlab.aws.container import (
    EXIT_TERMINATED,
    TRAINING_SECTIONS,
    Layout,
    hyperparameters,
    main,
    params_from_hyperparameters,
    publish_curves,
)
from coughlab.checkpoint import CHECKPOINT_FILE
from coughlab.nets import MODEL_FILE, load_model

from helpers import conf, make_features

EPOCHS = 4
TINY = conf("model.width=8", f"train.epochs={EPOCHS}", "train.batch_size=8", "audio.windows=1",
            "train.balance=label")


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
    cmd = [sys.executable, "-m", "coughlab.aws.container", "train"]
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


def test_sigterm_then_restart_ends_with_the_uninterrupted_weights(tmp_path, one_thread, capsys):
    straight = opt_ml(tmp_path / "straight", hyperparameters(TINY))
    assert main(["train", "--base-dir", str(straight.base)]) == 0  # in-process: no torch import
    assert not straight.failure.exists()
    assert re.search(r"container: torch: \S+, torch CUDA: \S+, CUDA available: False, "
                     r"device: cpu, driver: None, GPUs visible: 0", capsys.readouterr().out)

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
    params = conf("lr=1e-2", "model=resnet18", "model.dropout=0.5", "train=sagemaker",
                  "train.epochs=3", "train.sagemaker.instance_type=ml.m5.xlarge")
    hyper = hyperparameters(params)
    assert all(isinstance(v, str) for v in hyper.values())
    assert hyper["lr"] == "0.01" and hyper["model.arch"] == '"resnet18"'
    # data and paths stay on the launching side; the rest comes back exactly.
    assert not any(key.startswith(("data.", "paths.")) for key in hyper)
    rebuilt = params_from_hyperparameters(hyper)
    training = {k: v for k, v in dataclasses.asdict(params).items() if k in TRAINING_SECTIONS}
    assert dataclasses.asdict(rebuilt) == training


def test_checkpoint_name_matches_the_model_module():
    assert container.CHECKPOINT_FILE == CHECKPOINT_FILE


def test_sigterm_handler_is_installed_before_torch_and_fastai_load(tmp_path):
    """As PID 1 an unhandled SIGTERM is ignored: the handler must be in before the slow imports."""
    probe = f"""
import signal, sys
heavy_at_install = []
real = signal.signal
def spy(signum, handler):
    if signum == signal.SIGTERM and not heavy_at_install:
        heavy_at_install.append(sorted(m for m in ("torch", "fastai") if m in sys.modules))
    return real(signum, handler)
signal.signal = spy
from coughlab.aws.container import main
main(["train", "--base-dir", {str(tmp_path)!r}])  # fails fast: no hyperparameters
print(heavy_at_install)
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[[]]"


def test_sigterm_while_starting_exits_143_without_training(tmp_path, monkeypatch):
    layout = opt_ml(tmp_path, hyperparameters(TINY))
    real = signal.signal

    def sigterm_right_after_install(signum, handler):
        previous = real(signum, handler)
        if signum == signal.SIGTERM and callable(handler):
            handler(signum, None)  # arrives while torch and fastai are still loading
        return previous

    monkeypatch.setattr(container.signal, "signal", sigterm_right_after_install)
    assert main(["train", "--base-dir", str(tmp_path)]) == EXIT_TERMINATED
    assert not (layout.checkpoints / CHECKPOINT_FILE).exists()
    assert not (layout.model / MODEL_FILE).exists()
    assert not layout.failure.exists()


def fake_gpu_host(root: Path, gpus: int) -> Path:
    """/proc/driver/nvidia as the NVIDIA driver lays it out on a host with `gpus` GPUs."""
    (root / "gpus").mkdir(parents=True)
    for i in range(gpus):
        (root / "gpus" / f"0000:00:1{i}.0").mkdir()
    (root / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.256.02  "
                                  "Thu May  2 14:37:44 UTC 2024\nGCC version:  gcc 10.5.0\n")
    return root


@pytest.mark.parametrize("instance, gpus", [("ml.g4dn.xlarge", 0), ("ml.p3.2xlarge", 0),
                                            ("ml.m5.xlarge", 1), (None, 4)])
def test_gpu_host_without_cuda_fails_instead_of_training_on_the_cpu(tmp_path, monkeypatch,
                                                                     instance, gpus):
    layout = opt_ml(tmp_path / "opt_ml", hyperparameters(TINY))
    if instance:
        layout.resource_config.write_text(json.dumps({
            "current_host": "algo-1", "current_instance_type": instance, "hosts": ["algo-1"]}))
    monkeypatch.setattr(container, "NVIDIA_PROC", fake_gpu_host(tmp_path / "nvidia", gpus))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # e.g. driver too old
    assert main(["train", "--base-dir", str(layout.base)]) == 1
    reason = layout.failure.read_text()
    assert re.search(r"cannot use CUDA with NVIDIA driver 470\.256\.02; refusing to train on "
                     r"the CPU of a GPU instance", reason), reason
    assert (instance or "this host") in reason
    assert not (layout.checkpoints / CHECKPOINT_FILE).exists()


def test_cpu_instance_type_is_not_a_gpu_instance(tmp_path):
    layout = Layout(tmp_path)
    for itype, gpu in [("ml.g4dn.xlarge", True), ("ml.g5.2xlarge", True), ("ml.gr6.4xlarge", True),
                       ("ml.p4d.24xlarge", True), ("ml.m5.xlarge", False), ("ml.c7g.xlarge", False),
                       ("ml.trn1.2xlarge", False)]:
        layout.resource_config.parent.mkdir(parents=True, exist_ok=True)
        layout.resource_config.write_text(json.dumps({"current_instance_type": itype}))
        assert bool(container.GPU_INSTANCE.match(container.instance_type(layout))) == gpu, itype


def test_curves_are_copied_into_output_data_without_renaming_it(tmp_path, monkeypatch):
    """SageMaker local mode mounts output/data: renaming a mount point fails with EBUSY."""
    layout = Layout(tmp_path)
    (layout.live / "plots" / "metrics").mkdir(parents=True)
    (layout.live / "metrics.json").write_text('{"step": 3}')
    (layout.live / "plots" / "metrics" / "train_loss.tsv").write_text("step\ttrain_loss\n")
    layout.output_data.mkdir(parents=True)  # SageMaker creates it before starting the container
    mount = layout.output_data.resolve()

    def guard(real):
        def rename(src, dst, *args, **kwargs):
            if Path(src).resolve() == mount:
                raise OSError(errno.EBUSY, "Device or resource busy", str(src))
            return real(src, dst, *args, **kwargs)
        return rename

    monkeypatch.setattr(os, "rename", guard(os.rename))
    monkeypatch.setattr(os, "replace", guard(os.replace))
    publish_curves(layout)
    assert (layout.output_data / "metrics.json").read_text() == '{"step": 3}'
    assert (layout.output_data / "plots" / "metrics" / "train_loss.tsv").is_file()


TORCH_FAMILY = ("torch", "torchvision", "torchaudio")


def dockerfile_commands(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined and ARG defaults substituted."""
    args: dict[str, str] = {}
    commands = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), line)
        if arg := re.fullmatch(r"ARG (\w+)=(\S+)", line):
            args[arg.group(1)] = arg.group(2)
        commands.append(line)
    return commands


def torch_family_installs(text: str) -> list[dict]:
    """Each `pip install` naming a torch-family package: {"index": url, name: version...}."""
    installs = []
    for command in dockerfile_commands(text):
        for step in command.removeprefix("RUN ").split("&&"):
            words = step.replace('"', "").split()
            if words[:2] != ["pip", "install"]:
                continue
            pins = dict(re.fullmatch(r"([\w-]+)==(\S+)", w).groups() for w in words
                        if re.fullmatch(r"(torch|torchvision|torchaudio)==\S+", w))
            if pins:
                index = words[words.index("--index-url") + 1] if "--index-url" in words else None
                installs.append({"index": index, **pins})
    return installs


def torch_family_problems(dockerfile: str, pyproject: str) -> list[str]:
    """Why the image's torch, torchvision and torchaudio are not one CUDA variant of the pins."""
    import tomllib

    pins = dict(dep.split("==") for dep in tomllib.loads(pyproject)["project"]["dependencies"]
                if dep.split("==")[0] in TORCH_FAMILY)
    installs = torch_family_installs(dockerfile)
    if len(installs) != 1:
        return [f"{len(installs)} pip installs name the torch family; want one, naming all three"]
    install = installs[0]
    problems = [f"{name} is not installed with the others (pip install . would take PyPI's "
                "build)" for name in TORCH_FAMILY if name not in install]
    variants = {install[name].partition("+")[2] for name in TORCH_FAMILY if name in install}
    if len(variants) != 1 or "" in variants:
        problems.append(f"variants differ or are missing: {sorted(variants)}")
    for name in TORCH_FAMILY:
        if name in install and install[name].partition("+")[0] != pins[name]:
            problems.append(f"{name}=={install[name]} is not pyproject.toml's {pins[name]}")
    if not (install["index"] or "").rstrip("/").endswith(tuple(f"/{v}" for v in variants if v)):
        problems.append(f"index {install['index']} is not the {sorted(variants)} index")
    return problems


def test_training_image_installs_the_torch_family_from_one_cuda_variant_of_the_pins():
    """torch, torchvision and torchaudio from one index and one +cuNNN (issue 18, point 1)."""
    root = Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    dockerfile = (root / "docker" / "train.Dockerfile").read_text()
    assert torch_family_problems(dockerfile, pyproject) == []
    assert torch_family_installs(dockerfile)[0]["torchaudio"] == "2.11.0+cu126"


def test_the_torch_family_check_catches_a_torchaudio_left_to_pypi():
    """Today's image before the fix: torchaudio came from PyPI via `pip install .`."""
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    before = ('ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126\n'
              'RUN pip install --index-url "${TORCH_INDEX}" torch==2.14.1+cu126 '
              'torchvision==0.29.1+cu126\nRUN pip install .\n')
    assert torch_family_problems(before, pyproject) == [
        "torchaudio is not installed with the others (pip install . would take PyPI's build)"]
    mixed = before.replace("torchvision==0.29.1+cu126", "torchvision==0.29.1+cu130 "
                           "torchaudio==2.11.0+cu126")
    assert torch_family_problems(mixed, pyproject) == ["variants differ or are missing: "
                                                       "['cu126', 'cu130']"]
    stale = before.replace("torchvision==0.29.1+cu126", "torchvision==0.28.0+cu126 "
                           "torchaudio==2.11.0+cu126").replace("/cu126", "/cu130")
    assert torch_family_problems(stale, pyproject) == [
        "torchvision==0.28.0+cu126 is not pyproject.toml's 0.29.1",
        "index https://download.pytorch.org/whl/cu130 is not the ['cu126'] index"]


def test_image_build_runs_the_selfcheck_on_the_installed_code():
    """Not only `--help`: the build trains one epoch, so a broken import fails the build."""
    commands = dockerfile_commands((Path(__file__).resolve().parents[1] / "docker"
                                    / "train.Dockerfile").read_text())
    copy_src = commands.index("COPY src ./src")
    assert any("python -m coughlab.aws.container selfcheck" in c for c in commands[copy_src:-1])


def test_selfcheck_trains_one_epoch_outside_the_repository(tmp_path):
    """As the image build runs it: a subprocess in a directory that is not a git checkout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "coughlab.aws.container", "selfcheck"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"container: selfcheck: torch built for .*; its extensions link ",
                     result.stdout)
    assert "container: selfcheck passed" in result.stdout
    assert list(tmp_path.iterdir()) == []  # its job lived in a temporary directory


@pytest.mark.skipif(torch.version.cuda is None, reason="a CPU torch links no CUDA runtime")
def test_selfcheck_fails_when_torch_is_another_cuda_than_its_extensions(monkeypatch, capsys):
    """What the cu126 torch beside PyPI's torchaudio looks like from the installed files."""
    other = "12.6" if not torch.version.cuda.startswith("12.") else "13.0"
    monkeypatch.setattr(torch.version, "cuda", other)
    assert main(["selfcheck"]) == 1
    assert "mixes CUDA builds" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["train.Dockerfile", "lambda.Dockerfile"])
def test_image_build_lines_make_a_single_platform_amd64_image(name):
    """Lambda rejects the OCI index (with attestations) that BuildKit pushes by default."""
    text = (Path(__file__).resolve().parents[1] / "docker" / name).read_text()
    builds = re.findall(r"docker buildx build [^\n]*", text)
    assert builds and all("--platform linux/amd64 --provenance=false" in b for b in builds)
    assert "docker build " not in text
