"""Score local recordings with the exported model, without a server: one JSON line per file.

    python -m coughlab.predict cough.mp3 other.webm      # the model in build/lambda

Each file goes through lambda/handler.py's predict(), the code the Lambda runs (decoding,
mixdown, resampling, quality checks, the ONNX graph), so a file scores here exactly as a POST
of its bytes would. A file the handler refuses (too short, silent, not audio) or that cannot
be read gets a line with `error` and `message` instead of a score, and the exit status is 1;
the other files are still scored. The score is the model's, not a calibrated probability.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from coughlab.serve import HANDLER, MODEL_DIR, ServeError, load_handler


def score_file(handler, path: Path) -> dict:
    """The handler's answer for `path`'s bytes, or its refusal, as one JSON-ready dict."""
    try:
        audio = path.read_bytes()
    except OSError as err:
        return {"file": str(path), "error": "unreadable_file", "message": err.strerror or str(err)}
    try:
        return {"file": str(path), **handler.predict(audio)}
    except handler.RequestError as err:
        return {"file": str(path), "error": err.code, "message": str(err)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m coughlab.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE",
                        help="audio files: wav, flac, ogg, mp3, webm, mp4/m4a")
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR,
                        help="exported model: model.onnx + model.json (default %(default)s)")
    parser.add_argument("--handler", type=Path, default=HANDLER,
                        help="the Lambda handler that scores (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        handler = load_handler(args.handler, args.model_dir)
    except ServeError as err:
        sys.exit(f"predict: {err}")
    failed = 0
    for path in args.files:
        answer = score_file(handler, path)
        failed += "error" in answer
        print(json.dumps(answer), flush=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
