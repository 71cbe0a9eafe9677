"""`python -m coughlab.predict FILE...`: local files scored through lambda/handler.py's predict(),
one JSON line each, without a server."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from coughlab import predict, serve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def handler(exported_model):
    return serve.load_handler(ROOT / "lambda" / "handler.py", exported_model["lambda_dir"])


def test_each_file_gets_the_handlers_answer_for_its_bytes(exported_model, handler, capsys):
    files = sorted(exported_model["originals"].values())  # mp3 8 kHz stereo, mp3 48 kHz, wav
    predict.main([*map(str, files), "--model-dir", str(exported_model["lambda_dir"])])
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line) for line in lines] == [
        {"file": str(path), **handler.predict(path.read_bytes())} for path in files]
    assert all("p_positive" in json.loads(line) for line in lines)


def test_a_refused_or_missing_file_is_one_line_and_the_others_are_still_scored(
        exported_model, tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not audio\n")
    good = sorted(exported_model["originals"].values())[0]
    missing = tmp_path / "missing.wav"
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(text), str(missing), str(good),
                      "--model-dir", str(exported_model["lambda_dir"])])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    answers = [json.loads(line) for line in captured.out.splitlines()]
    assert [a["file"] for a in answers] == [str(text), str(missing), str(good)]
    assert answers[0]["error"] == "unsupported_audio" and answers[0]["message"]
    assert answers[1]["error"] == "unreadable_file"
    assert "p_positive" in answers[2]
    assert "Traceback" not in captured.err


def test_without_an_exported_model_it_says_how_to_make_one(tmp_path):
    result = subprocess.run([sys.executable, "-m", "coughlab.predict", "x.wav", "--model-dir",
                             str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("predict: ") and "make repro" in result.stderr
