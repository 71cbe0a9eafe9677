"""`make serve`: the recording page and the API on this machine, before any deploy.

`python -m coughlab.serve` loads lambda/handler.py with the model in build/lambda and serves it
on 127.0.0.1 behind a local stand-in for an AWS Lambda Function URL: HTTP in,
payload-format-2.0 event, handler out. The browser tests use the same stand-in, so what
`make serve` shows is what the tests check.

The stand-in does what the Function URL front end does with a request: lower-cased headers, the body
base64-encoded with isBase64Encoded true unless its Content-Type is text, the handler's
{statusCode, headers, body, isBase64Encoded} turned back into an HTTP response. Every
request is recorded (method, headers, raw body bytes, status) so a test can replay exactly
what a browser sent.
"""
from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Callable

from coughlab.function_url import function_url_event

MODEL_DIR = Path("build/lambda")
HANDLER = Path("lambda/handler.py")
HOST = "127.0.0.1"
PORT = 8000


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None


def http_response(result) -> tuple[int, dict[str, str], bytes]:
    """The HTTP response a Function URL makes of the handler's return value."""
    if not (isinstance(result, dict) and "statusCode" in result):  # a bare value: JSON 200
        return 200, {"Content-Type": "application/json"}, json.dumps(result).encode()
    body = result.get("body") or ""
    raw = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
    return int(result["statusCode"]), dict(result.get("headers") or {}), raw


@dataclass
class FunctionUrl:
    """A running local Function URL; `url` to browse, `requests` to inspect. Port 0: any free one."""
    handler: Callable[[dict, object], object]
    host: str = HOST
    port: int = 0
    requests: list[Request] = field(default_factory=list)

    def start(self) -> FunctionUrl:
        self.server = ThreadingHTTPServer((self.host, self.port), self._request_class())
        self.url = f"http://{self.host}:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> FunctionUrl:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def posts(self) -> list[Request]:
        return [r for r in self.requests if r.method == "POST"]

    def _request_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _invoke(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {}
                for key, value in self.headers.items():  # repeated headers: comma-joined
                    key = key.lower()
                    headers[key] = f"{headers[key]},{value}" if key in headers else value
                request = Request(self.command, self.path, headers, body)
                outer.requests.append(request)
                event = function_url_event(self.command, self.path, headers, body,
                                           headers.get("host", "127.0.0.1"), self.client_address[0])
                request.status, out_headers, raw = http_response(outer.handler(event, None))
                self.send_response(request.status)
                for key, value in out_headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _invoke

            def log_message(self, *args) -> None:  # one line per request is printed by main
                pass

        return Handler


class ServeError(Exception):
    """Nothing can be served; the message says why and what to run."""


def load_handler(handler_path: Path, model_dir: Path, **env: str) -> ModuleType:
    """lambda/handler.py as its own module, reading MODEL_DIR (and other settings) at import,
    exactly as the Lambda runtime imports it; the environment is restored afterwards."""
    if not (model_dir / "model.json").is_file():
        raise ServeError(f"{model_dir / 'model.json'} not found: export a model first "
                         "(`make repro`, or `dvc repro export-lambda`)")
    if not handler_path.is_file():
        raise ServeError(f"{handler_path} not found: run from the repository root")
    settings = {"MODEL_DIR": str(model_dir), **env}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        spec = importlib.util.spec_from_file_location(
            "coughlab_served_handler_" + "_".join(sorted(settings)), handler_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return module


def serve(handler_path: Path, model_dir: Path, host: str, port: int) -> None:
    """Serve until Ctrl-C or SIGTERM, printing the URL first and then one line per request."""
    module = load_handler(handler_path, model_dir)
    version = json.loads((model_dir / "model.json").read_text()).get("version", "?")

    def logged(event: dict, context: object):
        result = module.handler(event, context)
        status = result.get("statusCode", 200) if isinstance(result, dict) else 200
        http = event["requestContext"]["http"]
        print(f"{http['method']} {http['path']} -> {status}", flush=True)
        return result

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        url = FunctionUrl(logged, host=host, port=port).start()
    except OSError as err:
        raise ServeError(f"cannot listen on {host}:{port} ({err.strerror}); pick another port: "
                         f"`make serve PORT={port + 1}`") from err
    print(f"serving {url.url} (the recording page; POST audio to the same URL), "
          f"model {version} from {model_dir}; Ctrl-C stops", flush=True)
    try:
        url.thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        url.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m coughlab.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR,
                        help="exported model: model.onnx + model.json (default %(default)s)")
    parser.add_argument("--handler", type=Path, default=HANDLER,
                        help="the Lambda handler to serve (default %(default)s)")
    parser.add_argument("--host", default=HOST,
                        help="address to listen on (default %(default)s: this machine only)")
    parser.add_argument("--port", type=int, default=PORT,
                        help="port (default %(default)s; 0 picks a free one)")
    args = parser.parse_args(argv)
    try:
        serve(args.handler, args.model_dir, args.host, args.port)
    except ServeError as err:
        sys.exit(f"serve: {err}")


if __name__ == "__main__":
    main()
