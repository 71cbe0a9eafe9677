"""A local stand-in for an AWS Lambda Function URL: HTTP in, payload-format-2.0 event, handler out.

It does what the Function URL front end does with a request: lower-cased headers, the body
base64-encoded with isBase64Encoded true unless its Content-Type is text, the handler's
{statusCode, headers, body, isBase64Encoded} turned back into an HTTP response. Every
request is recorded (method, headers, raw body bytes, status) so a test can replay exactly
what a browser sent.
"""
from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qsl, urlsplit

# Content types a Function URL passes to the function as plain text (everything else: base64).
TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/xml",
              "application/x-www-form-urlencoded", "application/yaml")


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None


def function_url_event(method: str, target: str, headers: dict[str, str], body: bytes,
                       host: str, source_ip: str) -> dict:
    """The event a Function URL hands to the function for this request (payload format 2.0)."""
    url = urlsplit(target)
    now = time.time()
    event = {
        "version": "2.0", "routeKey": "$default", "rawPath": url.path or "/",
        "rawQueryString": url.query, "headers": headers,
        "requestContext": {
            "accountId": "anonymous", "apiId": "local", "domainName": host,
            "domainPrefix": host.split(".")[0], "requestId": str(uuid.uuid4()),
            "routeKey": "$default", "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
            "http": {"method": method, "path": url.path or "/", "protocol": "HTTP/1.1",
                     "sourceIp": source_ip, "userAgent": headers.get("user-agent", "")}},
        "isBase64Encoded": False,
    }
    if url.query:
        event["queryStringParameters"] = dict(parse_qsl(url.query))
    if body:
        is_text = headers.get("content-type", "").startswith(TEXT_TYPES)
        event["body"] = body.decode() if is_text else base64.b64encode(body).decode()
        event["isBase64Encoded"] = not is_text
    return event


def http_response(result) -> tuple[int, dict[str, str], bytes]:
    """The HTTP response a Function URL makes of the handler's return value."""
    if not (isinstance(result, dict) and "statusCode" in result):  # a bare value: JSON 200
        return 200, {"Content-Type": "application/json"}, json.dumps(result).encode()
    body = result.get("body") or ""
    raw = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
    return int(result["statusCode"]), dict(result.get("headers") or {}), raw


@dataclass
class FunctionUrl:
    """A running local Function URL; `url` to browse, `requests` to inspect."""
    handler: Callable[[dict, object], object]
    requests: list[Request] = field(default_factory=list)

    def __enter__(self) -> FunctionUrl:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._request_class())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

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

            def log_message(self, *args) -> None:  # keep pytest's output clean
                pass

        return Handler
