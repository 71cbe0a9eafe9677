"""The recording page in a real browser: Chromium's fake microphone plays a cough recording,
the page records it with MediaRecorder and POSTs it to lambda/handler.py behind a local
Function URL (coughlab.serve, what `make serve` runs), and must show the handler's answer for
those bytes.

Needs Debian's chromium at /usr/bin/chromium (`make install` puts it there); outside CI a
machine without it skips these tests, under CI (env CI set) they fail instead.
"""
from __future__ import annotations

import base64
import contextlib
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from coughlab import serve
from coughlab.serve import FunctionUrl

ROOT = Path(__file__).resolve().parents[1]
HANDLER = ROOT / "lambda" / "handler.py"
REALDATA = ROOT.parent / "shared" / "realdata" / "dev"
CHROMIUM = Path("/usr/bin/chromium")
FAKE_MIC_RATE = 48000
QUIET_FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
               "--disable-sync"]
POSTED_BODIES = """
window.postedBodies = [];
const pageFetch = window.fetch;
window.fetch = async (url, init = {}) => {
  if (init.body instanceof Blob) {
    const bytes = new Uint8Array(await init.body.arrayBuffer());
    let text = "";
    for (const byte of bytes) text += String.fromCharCode(byte);
    window.postedBodies.push(btoa(text));
  }
  return pageFetch(url, init);
};
"""
WEBM_MAGIC = b"\x1a\x45\xdf\xa3"  # EBML header: the start of every webm file

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing under CI: `make install` installs Debian's chromium",
                    pytrace=False)
    pytest.skip(f"{CHROMIUM} not installed (`make install` installs it)", allow_module_level=True)

import axe_playwright_python  # noqa: E402 - after the skip
from playwright.sync_api import expect, sync_playwright  # noqa: E402 - after the skip


def load_handler(model_dir: Path, **env: str):
    """lambda/handler.py as its own module, reading MODEL_DIR (and other settings) at import."""
    return serve.load_handler(HANDLER, model_dir, **env)


def make_serve_command() -> list[str]:
    """The command `make serve` runs, as make prints it (`make -n`), minus the python path."""
    dry = subprocess.run(["make", "--no-print-directory", "-n", "serve", "STAMP=/dev/null",
                          "VENV=.venv"], cwd=ROOT, capture_output=True, text=True, check=True)
    *_, last = dry.stdout.strip().splitlines()
    return last.split()[1:]  # drop .venv/bin/python: the tests' interpreter runs it


@contextlib.contextmanager
def make_serve(model_dir: Path):
    """`make serve` as a subprocess on a free port, with the model in `model_dir`; yields
    (url, process); its stdout (one line per request) is read after it stops."""
    command = [sys.executable, *make_serve_command(), "--model-dir", str(model_dir)]
    command[command.index("--port") + 1] = "0"
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        first = process.stdout.readline()
        found = re.search(r"serving (http://127\.0\.0\.1:\d+/)", first)
        assert found, f"make serve printed {first!r}; stderr: {process.stderr.read()}"
        yield found.group(1), process
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def handler(exported_model):
    return load_handler(exported_model["lambda_dir"])


def real_cough() -> np.ndarray | None:
    """The first app-recorded (not phone-line) cough of at least 2 s in the shared dev data."""
    labels = REALDATA / "labels.csv"
    if not labels.is_file():
        return None
    for row in csv.DictReader(labels.open()):
        path = REALDATA / row["path"]
        long_enough = float(row["duration_s"] or 0) >= 2
        if row["channel"] != "call-center" and long_enough and path.is_file():
            wave, sr = sf.read(path, dtype="float32", always_2d=True)
            return soxr.resample(wave.mean(axis=1), sr, FAKE_MIC_RATE)
    return None


def synthetic_cough() -> np.ndarray:
    """Coughs from the embedded sample's generator, for machines without the shared dev data."""
    from coughlab import sample

    rng = np.random.default_rng(0)
    person = sample.subject(rng, 1)
    return np.concatenate([sample.clip(rng, FAKE_MIC_RATE, person["voice"], person["wheeze"])
                           for _ in range(3)])


def fake_mic_file(path: Path, wave: np.ndarray) -> Path:
    """A 48 kHz 16-bit mono wav: what Chromium's --use-file-for-fake-audio-capture plays
    (looped)."""
    sf.write(path, wave.astype(np.float32), FAKE_MIC_RATE, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def cough_wav(tmp_path_factory):
    wave = real_cough()
    wave = synthetic_cough() if wave is None else wave
    return fake_mic_file(tmp_path_factory.mktemp("mic") / "cough.wav", wave)


@pytest.fixture(scope="module")
def playwright():
    with sync_playwright() as p:
        yield p


def open_page(playwright, url: str, mic: Path, grant_microphone: bool = True):
    """A phone-sized page in Chromium whose fake microphone plays `mic` (looped)."""
    args = [*QUIET_FLAGS, "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic}"]
    if grant_microphone:
        args.append("--use-fake-ui-for-media-stream")  # answers the permission prompt with yes
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=args)
    page = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2,
                               is_mobile=True, has_touch=True).new_page()
    page.fetched, page.console_errors = [], []  # from the first request on
    # A fetch() body that is a Blob (the recording) is not in what Chromium reports of a request:
    # keep a base64 copy of each in window.postedBodies (init scripts are not subject to the CSP).
    page.add_init_script(POSTED_BODIES)
    page.on("request", lambda r: page.fetched.append(r.url))
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
    page.goto(url)
    return browser, page


def record(page, seconds: float) -> None:
    page.click("#record")
    expect(page.locator("#status")).to_contain_text("Recording", timeout=15_000)
    page.wait_for_timeout(seconds * 1000)
    page.click("#record")


def replay(handler, post) -> dict:
    """The handler's answer for exactly the bytes and Content-Type the browser posted."""
    event = {"requestContext": {"http": {"method": "POST"}}, "isBase64Encoded": True,
             "headers": {"content-type": post.headers["content-type"]},
             "body": base64.b64encode(post.body).decode()}
    response = handler.handler(event)
    return {"status": response["statusCode"], **json.loads(response["body"])}


def test_make_serve_runs_the_page_and_api_on_loopback_with_the_exported_model():
    """make serve serves serve's default model dir: export-lambda's bundle (params.yaml's
    paths.bundle; tests/test_dag.py ties the two)."""
    assert make_serve_command() == ["-m", "coughlab.serve", "--host", "127.0.0.1", "--port",
                                    "8000"]


def test_page_shows_the_handlers_answer_for_the_recording(playwright, handler, exported_model,
                                                           cough_wav):
    with make_serve(exported_model["lambda_dir"]) as (url, server):
        browser, page = open_page(playwright, url, cough_wav)
        responses = []  # what the browser got, as the browser saw it
        page.on("response", lambda response: responses.append(response))
        record(page, seconds=3)
        expect(page.locator("#result")).to_be_visible(timeout=30_000)
        (post,) = [r for r in responses if r.request.method == "POST"]
        headers, status, served_answer = post.request.all_headers(), post.status, post.json()
        body = base64.b64decode(page.evaluate("window.postedBodies")[0])
        drawn = page.evaluate("""() => { const c = document.getElementById('wave');
            return c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some(v => v); }""")
        shown = {key: page.locator(f"#{key}").inner_text()
                 for key in ("score", "label", "threshold", "model-version", "git-commit")}
        browser.close()
    served = server.stdout.read().splitlines()

    assert served == ["GET / -> 200", "POST / -> 200"]
    # One self-contained page: nothing fetched from anywhere else, and its CSP blocks none of
    # its own inline script and style (a blocked one is a console error).
    assert page.fetched == [url, url]  # GET the page, POST the recording
    assert page.console_errors == []
    assert drawn, "the waveform canvas stayed blank while recording"
    assert status == 200
    # The browser's own format, passed through untouched: webm/opus as Chromium records it.
    assert headers["content-type"] == "audio/webm;codecs=opus"
    assert body.startswith(WEBM_MAGIC)
    answer = replay(handler, serve.Request("POST", "/", headers, body))
    assert answer["status"] == 200, answer
    assert {"status": 200, **served_answer} == answer
    # A score, not a percentage that reads as a probability, and no verdict word.
    assert shown["score"] == f"{answer['p_positive']:.3f}"
    assert shown["label"].startswith("At or above" if answer["label"] == "positive" else "Below")
    assert "not a test result" in shown["label"]
    assert shown["threshold"] == f"{answer['threshold']:.3f}"
    assert shown["model-version"] == answer["model_version"]
    assert answer["git_commit"] is None and shown["git-commit"].startswith("none: a local model")


def test_get_serves_the_page_with_a_strict_csp(handler):
    response = handler.handler({"requestContext": {"http": {"method": "GET"}}, "rawPath": "/"})
    api_gateway = handler.handler({"httpMethod": "GET", "path": "/"})
    assert response == api_gateway
    assert response["statusCode"] == 200
    assert response["headers"]["Content-Type"] == "text/html; charset=utf-8"
    csp = dict(part.strip().split(" ", 1) for part in
               response["headers"]["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    assert "unsafe-inline" not in csp["script-src"] and csp["script-src"].startswith("'sha256-")
    assert 'src="http' not in response["body"] and "<script src" not in response["body"]


def test_page_links_to_the_model_card_rendered_as_html(playwright, handler, cough_wav,
                                                       exported_model):
    """The link opens the card export-lambda wrote beside model.json as a page, not raw
    Markdown: its title a heading, its tables tables, and nothing of its markup left."""
    with FunctionUrl(handler.handler) as url:
        browser, page = open_page(playwright, url.url, cough_wav)
        page.click("#model-card")
        page.wait_for_url("**?model_card")
        title = page.locator("h1").inner_text()
        tables = page.locator("table").count()
        shown = page.locator("main").inner_text()
        browser.close()
    card = (exported_model["lambda_dir"] / "model_card.md").read_text()
    version = json.loads((exported_model["lambda_dir"] / "model.json").read_text())["version"]
    assert title == f"Model card: cough classifier {version}"
    assert tables == sum(1 for block in card.split("\n\n") if block.startswith("|"))
    assert "|---" not in shown and "**" not in shown and "## " not in shown
    assert "Out of scope" in shown and "Known limits" in shown
    assert page.console_errors == []  # its CSP blocks none of its own style


def test_denied_microphone_is_explained(playwright, handler, cough_wav):
    with FunctionUrl(handler.handler) as url:  # a microphone exists, but its prompt gets "no"
        browser, page = open_page(playwright, url.url, cough_wav, grant_microphone=False)
        page.click("#record")
        error = page.locator("#error")
        expect(error).to_be_visible(timeout=15_000)
        expect(error).to_contain_text("Microphone permission was denied")
        browser.close()
    assert url.posts() == []


def test_silent_recording_gets_the_handlers_refusal_in_words(playwright, handler, tmp_path):
    silent = fake_mic_file(tmp_path / "silent.wav", np.zeros(FAKE_MIC_RATE * 3))
    with FunctionUrl(handler.handler) as url:
        browser, page = open_page(playwright, url.url, silent)
        record(page, seconds=2)
        error = page.locator("#error")
        expect(error).to_be_visible(timeout=30_000)
        shown = error.inner_text()
        browser.close()
    (post,) = url.posts()
    answer = replay(handler, post)
    assert (answer["status"], answer["error"]) == (422, "silent")
    assert "silent" in shown and "microphone" in shown


def test_too_large_recording_is_refused_in_words(playwright, exported_model, cough_wav):
    small_limit = load_handler(exported_model["lambda_dir"], MAX_AUDIO_BYTES="2000")
    with FunctionUrl(small_limit.handler) as url:
        browser, page = open_page(playwright, url.url, cough_wav)
        record(page, seconds=2)
        error = page.locator("#error")
        expect(error).to_be_visible(timeout=30_000)
        expect(error).to_contain_text("too large to send")
        expect(error).to_contain_text("the limit is 0.002 MB")
        browser.close()
    assert url.posts() == []  # refused by the page, before posting


def test_page_says_what_the_model_was_trained_on_and_that_recordings_are_not_kept(
        playwright, handler, cough_wav, exported_model):
    meta = json.loads((exported_model["lambda_dir"] / "model.json").read_text())
    with FunctionUrl(handler.handler) as url:
        browser, page = open_page(playwright, url.url, cough_wav)
        trained_on = page.locator("#trained-on").inner_text()
        privacy = page.locator("#privacy").inner_text()
        browser.close()
    assert trained_on == meta["trained_on"]
    assert "not stored" in privacy


def test_keyboard_alone_starts_and_stops_a_recording(playwright, handler, cough_wav):
    """After Start the button was disabled while the microphone opened, so the focus fell to
    the page and Enter did nothing until the 10 s auto-stop."""
    with FunctionUrl(handler.handler) as url:
        browser, page = open_page(playwright, url.url, cough_wav)
        page.keyboard.press("Tab")
        while page.evaluate("document.activeElement.id") != "record":
            page.keyboard.press("Tab")  # from the top, as a keyboard user gets there
        page.keyboard.press("Enter")
        expect(page.locator("#status")).to_contain_text("Recording", timeout=15_000)
        focused = page.evaluate("document.activeElement.id")
        page.wait_for_timeout(2000)
        page.keyboard.press("Enter")
        expect(page.locator("#result")).to_be_visible(timeout=5000)
        seconds = float(page.locator("#seconds").inner_text().split()[0])
        refocused = page.evaluate("document.activeElement.id")
        browser.close()
    assert focused == "record" and refocused == "record"
    assert seconds < 8  # stopped by Enter, not by the 10 s auto-stop
    assert len(url.posts()) == 1


def test_a_chosen_file_is_scored(playwright, handler, cough_wav):
    with FunctionUrl(handler.handler) as url:
        browser, page = open_page(playwright, url.url, cough_wav)
        page.set_input_files("#upload", str(cough_wav))
        expect(page.locator("#result")).to_be_visible(timeout=30_000)
        shown = page.locator("#score").inner_text()
        browser.close()
    (post,) = url.posts()
    assert post.headers["content-type"] == "audio/wav"
    assert post.body == cough_wav.read_bytes()
    assert shown == f"{replay(handler, post)['p_positive']:.3f}"


AXE_JS = Path(axe_playwright_python.__file__).parent / "axe.min.js"
RESULT = {"p_positive": 0.1234, "label": "negative", "threshold": 0.4268, "seconds": 3.1,
          "model_version": "0123456789ab", "git_commit": None}


@pytest.mark.parametrize("state", ["start", "result", "error"])
def test_axe_core_finds_no_violations(playwright, handler, cough_wav, state):
    """axe-core (pinned: the axe-playwright-python package ships it) on the page at rest, with
    a result (the dt labels' contrast was 4.24:1) and with an error shown."""
    with FunctionUrl(handler.handler) as url:
        browser, page = open_page(playwright, url.url, cough_wav)
        if state == "result":
            page.evaluate(f"showResult({json.dumps(RESULT)})")
        elif state == "error":
            page.evaluate("showError(SERVER_ERRORS.silent)")
        page.evaluate(AXE_JS.read_text())  # evaluated by the test, so the page's CSP allows it
        found = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
        browser.close()
    assert found["testEngine"]["version"].startswith("4.")
    assert [(v["id"], [n["target"] for n in v["nodes"]]) for v in found["violations"]] == []
