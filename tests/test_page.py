"""What the handler serves a person, without a browser: the model card as safe HTML, the page's
sentence on the training data, and a scored recording that leaves nothing behind."""
import base64
import html.parser
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from coughlab import serve

ROOT = Path(__file__).resolve().parents[1]
HANDLER = ROOT / "lambda" / "handler.py"
BROWSER = {"accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
HOSTILE_CARD = "\n".join([
    "---", "license: mit", "---", "", "# Model card: `abc` <script>alert(1)</script>", "",
    "> **WARNING: <img src=x onerror=alert(1)>**", "",
    "Trained on [a link](javascript:alert(1)) and <iframe src=//evil>.", "",
    "| Source | What |", "|---|---|", "| `a\\|b` | <b>bold</b> **really** |", "",
    "- item with `<code>` and \\*not bold\\*", "", "```json", '{"x": "</pre><script>"}', "```",
])


class Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, name, value) for name, value in attrs]


def handler_with(tmp_path, card: str | None = None, trained_on: str | None = None):
    model = tmp_path / "model"
    model.mkdir(parents=True)
    (model / "model.json").write_text(json.dumps({"version": "0123456789ab",
                                                  **({"trained_on": trained_on} if trained_on
                                                     else {})}))
    if card is not None:
        (model / "model_card.md").write_text(card)
    return serve.load_handler(HANDLER, model)


def get(module, query: str = "", headers: dict | None = None) -> dict:
    return module.handler({"requestContext": {"http": {"method": "GET"}}, "rawPath": "/",
                           "rawQueryString": query, "headers": headers or {}})


def test_a_browser_gets_the_card_as_html_with_only_safe_markup(tmp_path):
    module = handler_with(tmp_path, HOSTILE_CARD)
    response = get(module, "model_card", BROWSER)
    assert response["headers"]["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in response["headers"]["Content-Security-Policy"]  # none may run
    parsed = Tags()
    parsed.feed(response["body"])
    assert set(parsed.tags) <= {"html", "head", "meta", "title", "style", "body", "main", "p",
                                "a", "h1", "blockquote", "strong", "code", "table", "thead",
                                "tbody", "tr", "th", "td", "ul", "li", "pre", "details",
                                "summary"}, parsed.tags
    assert [a for a in parsed.attrs if a[0] not in ("html", "meta")] == [("a", "href", "?")]
    body = response["body"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "&lt;iframe" in body
    assert "<td><code>a|b</code></td>" in body  # an escaped pipe stays in its cell
    assert "<strong>really</strong>" in body and "*not bold*" in body
    assert "<h1>Model card: <code>abc</code>" in body
    assert "<summary>Metadata (for model hubs)</summary><pre>license: mit</pre>" in body


def test_code_and_tools_still_get_the_markdown(tmp_path):
    module = handler_with(tmp_path, HOSTILE_CARD)
    for headers in ({}, {"accept": "*/*"}, {"accept": "text/markdown"}):
        response = get(module, "model_card", headers)
        assert response["headers"]["Content-Type"] == "text/plain; charset=utf-8"
        assert response["body"] == HOSTILE_CARD


def test_the_page_states_what_the_model_was_trained_on_escaped(tmp_path):
    module = handler_with(tmp_path, trained_on="Trained on <b>synthetic</b> & fake audio.")
    body = get(module, headers=BROWSER)["body"]
    assert ('<span id="trained-on">Trained on &lt;b&gt;synthetic&lt;/b&gt; &amp; fake audio.'
            '</span>') in body
    older = handler_with(tmp_path / "older")  # a model exported before model.json said so
    assert "is not recorded with it: read the model card" in get(older)["body"]


AUDIT = """
import base64, json, os, sys
writes = []
def hook(event, args):
    if event == "open" and isinstance(args[1], str) and set(args[1]) & set("wax+"):
        writes.append(("open", str(args[0]), args[1]))
    elif event == "open" and isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR):
        writes.append(("open", str(args[0]), args[2]))
    elif event in ("os.rename", "os.remove", "os.mkdir", "shutil.copyfile", "socket.connect",
                   "os.truncate", "os.link", "os.symlink"):
        writes.append((event, repr(args)[:200]))
sys.path.insert(0, sys.argv[1])
from coughlab import serve
handler = serve.load_handler(serve.Path(sys.argv[2]), serve.Path(sys.argv[3]))
# The model loads once per container, as on the first request; importing onnxruntime leaves
# its own session marker (.ses) in the temp folder then, before any recording arrives.
handler.load_model()
before = sorted(os.listdir(os.environ["TMPDIR"]))
sys.addaudithook(hook)
audio = sys.stdin.buffer.read()
response = handler.handler({"requestContext": {"http": {"method": "POST"}},
                            "headers": {"content-type": "audio/wav"}, "isBase64Encoded": True,
                            "body": base64.b64encode(audio).decode()})
print(json.dumps({"status": response["statusCode"], "writes": writes,
                  "new_temp_files": sorted(set(os.listdir(os.environ["TMPDIR"])) - set(before))}))
"""


def test_scoring_a_recording_stores_nothing(exported_model, tmp_path):
    """No file is opened for writing, nothing renamed, removed or created, no connection made
    while the handler scores a POST (Python's audit hooks see every such call from Python), no
    file appears in the temp or working folder, and the log holds no audio."""
    wave = np.sin(np.arange(32000) / 16000 * 2 * np.pi * 300).astype(np.float32) * 0.5
    audio = io.BytesIO()
    sf.write(audio, wave, 16000, format="WAV")
    workdir, scratch = tmp_path / "cwd", tmp_path / "tmp"
    workdir.mkdir()
    scratch.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", AUDIT, str(ROOT / "src"), str(HANDLER),
         str(exported_model["lambda_dir"])], input=audio.getvalue(), capture_output=True,
        cwd=workdir, env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    report = json.loads(result.stdout.decode().splitlines()[-1])
    assert report == {"status": 200, "writes": [], "new_temp_files": []}
    assert list(workdir.iterdir()) == []
    assert base64.b64encode(audio.getvalue()[:64]).decode() not in result.stderr.decode()
