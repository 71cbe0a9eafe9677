"""`python -m coughlab.serve` (`make serve`): clear errors before it serves anything.

Serving the page and the API to a browser is tests/test_browser.py's job (it runs `make serve`'s
command); these need no browser.
"""
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coughlab.serve", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_help_says_what_it_serves():
    result = run_serve("--help")
    assert result.returncode == 0
    assert "make serve" in result.stdout and "build/lambda" in result.stdout


def test_missing_model_says_what_to_run(tmp_path):
    result = run_serve("--model-dir", str(tmp_path), "--port", "0")
    assert result.returncode == 1
    assert result.stderr.strip() == (f"serve: {tmp_path}/model.json not found: export a model "
                                     "first (`make repro`, or `dvc repro export-lambda`)")


def test_a_busy_port_names_another(exported_model):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_serve("--model-dir", str(exported_model["lambda_dir"]), "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert f"make serve PORT={port + 1}" in result.stderr
