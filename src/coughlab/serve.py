"""`make serve`: the recording page and the API on this machine, before any deploy.

`python -m coughlab.serve` loads lambda/handler.py with the model in build/lambda and serves it
on 127.0.0.1 behind a local stand-in for an AWS Lambda Function URL: HTTP in,
payload-format-2.0 event, handler out. The browser tests use the same stand-in, so what
`make serve` shows is what the tests check.

The stand-in does what the Function URL front end does with a request: the body read whole
(Content-Length or chunked) and refused, before a byte of it is read, when the event would
pass Lambda's 6 MB limit; lower-cased headers; the body base64-encoded with isBase64Encoded
true unless its Content-Type is text and it is UTF-8; query parameters as the URL gives them
(blank ones kept, repeated ones comma-joined); the URL's own domain (here the address it
listens on, never the Host header a DNS-rebinding page controls) in requestContext; the
handler's {statusCode, headers, body, isBase64Encoded} turned back into an HTTP response.
Whatever goes wrong (a Content-Length that is no number, a stalled client, a malformed
request, a handler that raises) is answered in JSON, `{"error": code, "message": ...}`, never
with a dropped connection. It listens on loopback only: a browser records from a
microphone only on a secure origin or on this machine's own. Requests are recorded (method,
headers, raw body bytes, status) when asked, so a test can replay exactly what a browser sent.
"""
from __future__ import annotations

import argparse
import base64
import importlib.util
import ipaddress
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Callable

from coughlab.escape import printable
from coughlab.function_url import function_url_event

MODEL_DIR = Path("build/lambda")
HANDLER = Path("lambda/handler.py")
HOST = "127.0.0.1"
PORT = 8000

# Lambda's synchronous invocation payload: the whole event, the base64 body inside it.
MAX_REQUEST_BYTES = 6 * 2**20
# A client silent this long (mid-request line, headers or body) gets a 408 and its thread back.
SOCKET_TIMEOUT_SECONDS = 20.0
# After refusing a body unread, what the client still sends is read and dropped for up to this
# long, so it reads the refusal instead of a reset; nothing of it is kept.
DRAIN_SECONDS = 10.0
DRAIN_BLOCK_BYTES = 65536
LISTEN_BACKLOG = 128  # socketserver's default, 5, dropped some of a burst of 50
MAX_LINE_BYTES = 65536  # a request line or chunk-size line, as http.server's own limit
MAX_TRAILER_LINES = 100
METHOD = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110 5.6.2)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None


class HttpRefusal(Exception):
    """What the Function URL front end refuses before the function runs: a JSON 4xx/5xx."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def too_large(what: str) -> HttpRefusal:
    return HttpRefusal(413, "request_too_large", f"{what}; a Function URL invokes the function "
                       f"with at most {MAX_REQUEST_BYTES} bytes of event, the body base64-"
                       "encoded (a third larger)")


def http_response(result) -> tuple[int, dict[str, str], bytes]:
    """The HTTP response a Function URL makes of the handler's return value; a value it cannot
    make one of is the function's error (502), as a Function URL reports it."""
    if not (isinstance(result, dict) and "statusCode" in result):  # a bare value: JSON 200
        return 200, {"Content-Type": "application/json"}, json.dumps(result).encode()
    status, headers, body = result["statusCode"], result.get("headers") or {}, result.get("body")
    if not (isinstance(status, int) and 100 <= status <= 599 and isinstance(headers, dict)
            and all(isinstance(part, str) and not re.search(r"[\r\n]", part)
                    for header in headers.items() for part in header)
            and isinstance(body, (str, type(None)))):
        raise HttpRefusal(502, "function_error", "the function's answer is not "
                          "{statusCode, headers, body} as a Function URL needs it")
    raw = base64.b64decode(body or "") if result.get("isBase64Encoded") else (body or "").encode()
    return status, dict(headers), raw


def content_length(values: list[str]) -> int:
    """The one Content-Length a request states, checked before any of its body is read."""
    if len(set(values)) != 1 or not re.fullmatch(r"[0-9]+", values[0].strip(), re.ASCII):
        raise HttpRefusal(400, "invalid_content_length", "Content-Length must be one whole "
                          "number of bytes")
    digits = values[0].strip().lstrip("0") or "0"
    if len(digits) > len(str(MAX_REQUEST_BYTES)) or int(digits) > MAX_REQUEST_BYTES:
        shown = digits if len(digits) <= 20 else f"a {len(digits)}-digit number of"
        raise too_large(f"a body of {shown} bytes")
    return int(digits)


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoopbackServer(ThreadingHTTPServer):
    """A thread per connection; a burst of connections waits in the backlog, not refused."""
    request_queue_size = LISTEN_BACKLOG


class LoopbackServer6(LoopbackServer):
    address_family = socket.AF_INET6


class ServeError(Exception):
    """Nothing can be served; the message says why and what to run."""


@dataclass
class FunctionUrl:
    """A running local Function URL; `url` to browse, `requests` to inspect (when `record`).
    Port 0: any free one. `log` gets one line per request, control characters escaped."""
    handler: Callable[[dict, object], object]
    host: str = HOST
    port: int = 0
    record: bool = True
    timeout: float = SOCKET_TIMEOUT_SECONDS
    log: Callable[[str], None] | None = None
    requests: list[Request] = field(default_factory=list)

    def start(self) -> FunctionUrl:
        if not is_loopback(self.host):
            raise ServeError(f"{self.host} is not a loopback address: serve listens on this "
                             "machine only (127.0.0.1, ::1); deploy to reach the model from "
                             "elsewhere (`make deploy-lambda`)")
        ipv6 = ":" in self.host
        server_class = LoopbackServer6 if ipv6 else LoopbackServer
        self.server = server_class((self.host, self.port), self._request_class())
        port = self.server.server_address[1]
        self.authority = f"[{self.host}]:{port}" if ipv6 else f"{self.host}:{port}"
        self.url = f"http://{self.authority}/"
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
            timeout = outer.timeout
            default_request_version = "HTTP/1.0"  # every answer has a status line and headers

            def handle_one_request(self) -> None:
                """One request (HTTP/1.0: one a connection), every failure of which is answered
                in JSON: http.server's own drops a connection that times out, without a word."""
                self.command, self.path, self.requestline, body_unread = None, "", "", False
                self.request_version = self.default_request_version
                try:
                    self.raw_requestline = self.rfile.readline(MAX_LINE_BYTES + 1)
                    if not self.raw_requestline:
                        self.close_connection = True
                        return
                    if len(self.raw_requestline) > MAX_LINE_BYTES:
                        raise HttpRefusal(414, "uri_too_long", "the request line is longer "
                                          f"than {MAX_LINE_BYTES} bytes")
                    if not self.parse_request():  # it has answered, by send_error
                        return
                    if not METHOD.fullmatch(self.command):
                        raise HttpRefusal(400, "invalid_request", "the method is not an HTTP "
                                          "token")
                    body_unread = True
                    body = self.read_body()
                    body_unread = False
                    self.invoke(body)
                except TimeoutError:
                    self.refuse(HttpRefusal(408, "request_timeout", "the request stalled: "
                                            f"nothing came for {outer.timeout:g} s"))
                except HttpRefusal as refusal:
                    self.refuse(refusal)
                    if body_unread:
                        self.drain()
                except OSError:  # the client reset the connection: no one is left to answer
                    self.close_connection = True

            def read_body(self) -> bytes:
                """The request body, refused before a byte of it is read when it cannot fit."""
                lengths = self.headers.get_all("Content-Length") or []
                codings = self.headers.get_all("Transfer-Encoding") or []
                if codings and lengths:
                    raise HttpRefusal(400, "invalid_request", "a request states either "
                                      "Content-Length or Transfer-Encoding, not both")
                if codings:
                    if [c.strip().lower() for c in ",".join(codings).split(",")] != ["chunked"]:
                        raise HttpRefusal(501, "unsupported_transfer_encoding",
                                          "the only Transfer-Encoding taken is chunked")
                    return self.read_chunked()
                length = content_length(lengths) if lengths else 0
                body = self.rfile.read(length)
                if len(body) < length:
                    raise HttpRefusal(400, "incomplete_body", f"the body ended after "
                                      f"{len(body)} of its {length} bytes")
                return body

            def read_chunked(self) -> bytes:
                """A chunked body, each chunk's size checked against the limit before it is read."""
                body = bytearray()
                while True:
                    line = self.rfile.readline(MAX_LINE_BYTES + 1)
                    size = line.split(b";", 1)[0].strip()
                    if not line.endswith(b"\n") or not re.fullmatch(rb"[0-9A-Fa-f]{1,16}", size):
                        raise bad_chunk("a chunk size line is not a hexadecimal number")
                    size = int(size, 16)
                    if len(body) + size > MAX_REQUEST_BYTES:
                        raise too_large(f"a chunked body of more than {len(body) + size} bytes")
                    if size == 0:
                        break
                    chunk = self.rfile.read(size)
                    if len(chunk) < size or self.rfile.read(2) != b"\r\n":
                        raise bad_chunk(f"a chunk holds other than the {size} bytes it states")
                    body += chunk
                for _ in range(MAX_TRAILER_LINES):
                    trailer = self.rfile.readline(MAX_LINE_BYTES + 1)
                    if not trailer.endswith(b"\n"):
                        raise bad_chunk("the body ends before its last chunk's blank line")
                    if trailer.strip() == b"":
                        return bytes(body)
                raise bad_chunk(f"more than {MAX_TRAILER_LINES} trailer lines")

            def invoke(self, body: bytes) -> None:
                headers = {}
                for key, value in self.headers.items():  # repeated headers: comma-joined
                    key = key.lower()
                    headers[key] = f"{headers[key]},{value}" if key in headers else value
                event = function_url_event(self.command, self.path, headers, body,
                                           outer.authority, self.client_address[0])
                if len(json.dumps(event)) > MAX_REQUEST_BYTES:
                    raise too_large(f"an event of more than {MAX_REQUEST_BYTES} bytes")
                request = Request(self.command, self.path, headers, body)
                if outer.record:
                    outer.requests.append(request)
                try:
                    status, out_headers, raw = http_response(outer.handler(event, None))
                except HttpRefusal:
                    raise
                except Exception as err:  # noqa: BLE001 - the function's failure, told in JSON
                    raise HttpRefusal(502, "function_error", "the function failed "
                                      f"({type(err).__name__})") from None
                request.status = status
                self.answer(status, out_headers, raw)

            def answer(self, status: int, headers: dict[str, str], raw: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(raw)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(raw)
                self.wfile.flush()
                if outer.log is not None:
                    outer.log(printable(f"{self.command or '-'} {self.path or '-'} -> {status}"))

            def refuse(self, refusal: HttpRefusal) -> None:
                self.close_connection = True
                payload = {"error": refusal.code, "message": str(refusal)}
                try:
                    self.answer(refusal.status, {"Content-Type": "application/json"},
                                json.dumps(payload).encode())
                except OSError:  # the client is gone: there is no one to tell
                    pass

            def send_error(self, code: int, message: str | None = None,
                           explain: str | None = None) -> None:
                """http.server's own refusals (a malformed request line, headers too large, an
                HTTP version it does not speak), in JSON like every other."""
                phrase = HTTPStatus(code).phrase
                name = re.sub(r"[^a-z]+", "_", phrase.lower()).strip("_")
                self.refuse(HttpRefusal(code, name, message or phrase))

            def drain(self) -> None:
                """Read and drop what the client still sends of a refused body, for a while: a
                socket closed on unread data resets, and the client would lose the answer."""
                deadline = time.monotonic() + DRAIN_SECONDS
                try:
                    self.connection.shutdown(socket.SHUT_WR)
                    while time.monotonic() < deadline and self.rfile.read1(DRAIN_BLOCK_BYTES):
                        pass
                except OSError:
                    pass

            def log_message(self, *args) -> None:  # `log` gets one line per request instead
                pass

        return Handler


def bad_chunk(why: str) -> HttpRefusal:
    return HttpRefusal(400, "invalid_chunked_body", f"the chunked body is malformed: {why}")


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
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        url = FunctionUrl(module.handler, host=host, port=port, record=False,
                          log=lambda line: print(line, flush=True)).start()
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
                        help="loopback address to listen on (default %(default)s; ::1 too)")
    parser.add_argument("--port", type=int, default=PORT,
                        help="port (default %(default)s; 0 picks a free one)")
    args = parser.parse_args(argv)
    try:
        serve(args.handler, args.model_dir, args.host, args.port)
    except ServeError as err:
        sys.exit(f"serve: {err}")


if __name__ == "__main__":
    main()
