"""Score every channel count of one container with lambda/handler.py, in a process of its own.

A decoder that crashes (SIGSEGV) ends only this process: the test that spawned it sees the
signal as a failure naming the container, and goes on. Each recording is posted twice; one
JSON line per recording: {"recording", "status", "body", "same_body"}. MODEL_DIR names the
model; needs no torch or coughlab.

    python tests/handler_child.py webm-opus
"""
from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import sys
from pathlib import Path

from audio_fixtures import CONTAINERS, encode

HANDLER = Path(__file__).resolve().parents[1] / "lambda" / "handler.py"


def load_handler():
    spec = importlib.util.spec_from_file_location("child_handler", HANDLER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("container", choices=sorted(CONTAINERS))
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    handler = load_handler()
    most = CONTAINERS[args.container][2]
    for channels in range(1, most + 1):
        event = {"body": base64.b64encode(encode(args.container, channels, args.seconds)).decode(),
                 "isBase64Encoded": True, "headers": {"content-type": "application/octet-stream"}}
        first, second = handler.handler(event), handler.handler(event)
        print(json.dumps({"recording": f"{args.container}/{channels}ch",
                          "status": first["statusCode"], "body": first["body"],
                          "same_body": first["body"] == second["body"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
