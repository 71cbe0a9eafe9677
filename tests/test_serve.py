"""`python -m coughlab.serve` (`make serve`): clear errors before it serves anything, and the
real handler behind it answering what a user's first curl sends, in JSON.

Serving the page and the API to a browser is tests/test_browser.py's job (it runs `make serve`'s
command); these need no browser. Hostile HTTP against the stand-in itself:
tests/test_serve_http.py.
"""
import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from coughlab import serve
from coughlab.serve import FunctionUrl

from audio_fixtures import encode

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


def test_a_host_beyond_loopback_is_refused(exported_model):
    result = run_serve("--model-dir", str(exported_model["lambda_dir"]), "--host", "0.0.0.0",
                       "--port", "0")
    assert result.returncode == 1
    assert result.stderr.startswith("serve: 0.0.0.0 is not a loopback address")


# --- the real handler behind serve: what a user's first curl meets ---------------------------

@pytest.fixture(scope="module")
def served(exported_model):
    handler = serve.load_handler(ROOT / "lambda" / "handler.py", exported_model["lambda_dir"])
    with FunctionUrl(handler.handler) as url:
        yield url


def raw_exchange(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request sent byte for byte; no answer fails the test."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received, "the connection was closed without an answer"
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


def curl_like(url: str, body: bytes, content_type: str, **extra: str) -> bytes:
    """The request `curl --data-binary @file URL` sends (its default type is a form's)."""
    parts = urlsplit(url)
    headers = {"Host": parts.netloc, "User-Agent": "curl/7.88.1", "Accept": "*/*",
               "Content-Length": str(len(body)), "Content-Type": content_type, **extra}
    return ("POST / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + "\r\n").encode() + body


def test_curls_default_form_post_of_an_mp3_gets_a_json_415_naming_the_types(served):
    status, headers, body = raw_exchange(served.url, curl_like(
        served.url, encode("mp3", 1, 1.0), "application/x-www-form-urlencoded"))
    answer = json.loads(body)
    assert (status, headers["content-type"], answer["error"]) == (
        415, "application/json", "unsupported_content_type")
    assert "audio/webm" in answer["message"] and "application/octet-stream" in answer["message"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl on PATH")
def test_curl_itself_gets_the_json_answer(served, tmp_path):
    (tmp_path / "cough.mp3").write_bytes(encode("mp3", 1, 1.0))
    result = subprocess.run(["curl", "-sS", "--data-binary", f"@{tmp_path / 'cough.mp3'}",
                             served.url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["error"] == "unsupported_content_type"


@pytest.mark.parametrize("content_type,body,status,code", [
    ("text/plain", b"\xff\xfe not utf-8", 415, "unsupported_content_type"),
    ("text/plain; charset=utf-8", "h\u00e9llo".encode(), 415, "unsupported_content_type"),
    ("application/json", b"\xff{not utf-8", 400, "invalid_json"),
    ("application/json", b'{"audio": 5}', 400, "missing_audio"),
    ("application/x-www-form-urlencoded", b"audio=%ff\xff", 415, "unsupported_content_type"),
    ("application/octet-stream", b"\xff\xfe not audio", 415, "unsupported_audio"),
])
def test_text_typed_and_other_bodies_get_the_handlers_json(served, content_type, body, status,
                                                            code):
    got, _, raw = raw_exchange(served.url, curl_like(served.url, body, content_type))
    assert (got, json.loads(raw)["error"]) == (status, code)


def test_a_dns_rebinding_page_is_refused_and_the_servers_own_page_is_not(served):
    """A page on rebound.example (resolving to 127.0.0.1) names itself in Host and Origin;
    serve's own origin is the address it listens on."""
    port = urlsplit(served.url).port
    wav = encode("wav", 1, 1.0)
    rebound = f"rebound.example:{port}"
    status, _, raw = raw_exchange(served.url, curl_like(served.url, wav, "audio/wav", Host=rebound,
                                                    Origin=f"http://{rebound}"))
    assert (status, json.loads(raw)["error"]) == (403, "cross_origin")
    status, _, raw = raw_exchange(served.url, curl_like(served.url, wav, "audio/wav",
                                                    Origin=served.url.rstrip("/")))
    assert status == 200 and "p_positive" in json.loads(raw)


@pytest.mark.parametrize("query,content_type", [
    ("?model_card", "text/plain; charset=utf-8"),
    ("?model_card&x=1", "text/html; charset=utf-8"),
    ("?x=1&model_card", "text/html; charset=utf-8"),
])
def test_only_the_exact_model_card_query_gets_the_card(served, query, content_type):
    status, headers, _ = raw_exchange(served.url, f"GET /{query} HTTP/1.1\r\n\r\n".encode())
    assert (status, headers["content-type"]) == (200, content_type)


def test_serves_log_lines_escape_control_characters(exported_model):
    """What a request line carries (an escape sequence that clears the screen or retitles
    the terminal) is printed escaped."""
    process = subprocess.Popen([sys.executable, "-m", "coughlab.serve", "--model-dir",
                                str(exported_model["lambda_dir"]), "--port", "0"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        found = re.search(r"serving (http://\S+/)", process.stdout.readline())
        assert found, process.stderr.read()
        status, _, _ = raw_exchange(found.group(1),
                                    b"GET /\x1b[2J\x1b]0;pwned\x07 HTTP/1.1\r\n\r\n")
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=60)
    assert status == 200
    assert out.splitlines() == ["GET /\\x1b[2J\\x1b]0;pwned\\x07 -> 200"]
