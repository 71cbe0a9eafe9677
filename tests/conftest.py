"""Shared fixtures. AWS is always moto_server on loopback; real AWS is never called."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest_plugins = ["aws_calls"]  # records the AWS calls the code makes, for tests/test_iam.py

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata" / "dev"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_server():
    """A moto_server (S3, SageMaker, Lambda, IAM, ...) on 127.0.0.1; yields its endpoint URL.

    Started as a subprocess and stopped by PID at the end of the session.
    """
    exe = (shutil.which("moto_server", path=str(Path(sys.executable).parent))
           or shutil.which("moto_server"))
    if exe is None:
        pytest.fail("moto_server not installed: `pip install -e '.[dev]'`")
    port = free_port()
    # Lambda refuses reservations that leave under 100 of the account's concurrency unreserved;
    # moto does so only with a quota set (1000: AWS's default for an established account).
    env = os.environ | {"MOTO_LAMBDA_CONCURRENCY_QUOTA": "1000"}
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto_server did not start on {url}")
            time.sleep(0.2)
    # Without Docker, moto's Lambda invoke answers from a queue the test fills
    # (queue_lambda_results) instead of running the function.
    post_json(f"{url}/moto-api/config", {"lambda": {"use_docker": False}})
    yield url
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)


def post_json(url: str, payload: dict) -> None:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture
def deploy_compiles_no_bytecode(monkeypatch):
    """deploy's CLI on fake dependencies (test_deploy.write_deps), with which the real handler
    cannot import: it zips them without bytecode. test_deploy's bytecode tests compile it."""
    from coughlab.aws.deploy import __main__ as cli

    monkeypatch.setattr(cli, "runtime_python", lambda: None)


def queue_lambda_results(moto_server: str, *responses: dict, region: str = "us-east-1") -> None:
    """What moto's next Lambda invocations answer, in order: each a handler's return value."""
    post_json(f"{moto_server}/moto-api/static/lambda-simple/response",
              {"results": [json.dumps(response) for response in responses], "region": region})


@pytest.fixture
def aws_env(moto_server, monkeypatch):
    """Point boto3 (and anything reading AWS_* env) at moto_server with fake credentials."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": moto_server,
        "SAGEMAKER_VALIDATE_ROLE": "false",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(key, raising=False)
    # Each test gets an empty moto backend.
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"))
    return moto_server


# Original recordings as the public sources ship them: (file, rate, channels, seconds).
ORIGINAL_FORMATS = [("call.mp3", 8000, 2, 2.3), ("telegram.mp3", 48000, 1, 4.2),
                    ("app.wav", 44100, 1, 0.7)]


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory):
    """Run combine, featurize and export-lambda on original files with a small untrained CNN.

    The originals are an 8 kHz stereo mp3, a 48 kHz mono mp3 and a 44.1 kHz wav, so the
    export's handler-vs-pipeline parity gate runs on every path a real source takes.
    Returns a dict with `model_pt`, `lambda_dir` (model.onnx + model.json), `combined`,
    `evaluation`, `fetched`, `originals` (manifest path -> original file) and the provenance
    inputs: `data_dir`, `params_file`, `features`, `record`.
    """
    import numpy as np
    import pandas as pd
    import soundfile as sf
    import torch

    from coughlab.nets import build_net, save_model
    from coughlab.stages.combine import process_clip, wav_path
    from coughlab.stages.featurize import featurize

    from helpers import conf, package_lambda, write_params

    root = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    params = conf("model.width=8")
    net = build_net(params.model).eval()
    save_model(net, params, root / "model")
    rng = np.random.default_rng(0)
    rows = []
    (root / "fetched").mkdir()
    for name, rate, channels, seconds in ORIGINAL_FORMATS:
        t = np.arange(int(rate * seconds)) / rate
        burst = np.sin(2 * np.pi * 440 * t) * np.exp(-3 * t) * 0.5
        wave = np.stack([burst + rng.standard_normal(t.size) * 0.02 for _ in range(channels)], 1)
        sf.write(root / "fetched" / name, wave.astype(np.float32), rate)
        clip = wav_path(name)
        stats = process_clip(root / "fetched" / name, root / "combined" / "clips" / clip,
                             params.audio.sample_rate, params.data.quality)
        rows.append({"path": clip, "fetched_path": name, "label": "positive", "subject_id": name,
                     "source": "sample", "split": "test", **stats})
    pd.DataFrame(rows).to_csv(root / "combined" / "manifest.csv", index=False)
    featurize(root / "combined", root / "features", params.audio)
    (root / "data").mkdir()
    (root / "data" / "labels.csv").write_text("path,label,subject_id,source,channel\n")
    inputs = {"data_dir": root / "data", "params_file": write_params(root, "model.width=8"),
              "features": root / "features", "record": root / "reports" / "model.json"}
    package_lambda(root, root / "model", root / "combined", root / "features", root / "fetched",
                   root / "lambda", inputs["data_dir"], inputs["params_file"], inputs["record"])
    return {"model_pt": root / "model" / "model.pt", "lambda_dir": root / "lambda",
            "combined": root / "combined", "evaluation": root / "evaluation.json",
            "graph": root / "graph",
            "fetched": root / "fetched",
            "originals": {r["path"]: root / "fetched" / r["fetched_path"] for r in rows}, **inputs}


def pytest_collection_modifyitems(config, items):
    """`exhaustive` cases run only when asked for by name (-m exhaustive)."""
    if "exhaustive" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="one of a matrix whose representatives ran: -m exhaustive")
    for item in items:
        if "exhaustive" in item.keywords:
            item.add_marker(skip)
