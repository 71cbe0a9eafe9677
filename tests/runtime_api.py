"""The Lambda Runtime API on 127.0.0.1, as a function's runtime sees it.

Paths, headers and status codes as the AWS Lambda developer guide documents them ("Using the
Lambda runtime API for custom runtimes"): the runtime GETs /2018-06-01/runtime/invocation/next
for the next event and POSTs its result to .../invocation/{id}/response or .../{id}/error, or
to /2018-06-01/runtime/init/error when it cannot start. `RuntimeLambda` puts a Lambda client's
`invoke` in front of it, so code that invokes a function (deploy's smoke test) can drive it.
"""
from __future__ import annotations

import io
import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PREFIX = "/2018-06-01/runtime"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:{name}"


class RuntimeGone(Exception):
    """The runtime reported an init error, or stopped answering."""


@dataclass
class Invocation:
    request_id: str
    event: bytes
    done: threading.Event = field(default_factory=threading.Event)
    body: bytes = b""
    error_type: str | None = None


class RuntimeApi(ThreadingHTTPServer):
    """One function's Runtime API: invocations are queued, answered one at a time."""

    daemon_threads = True

    def __init__(self, function_name: str, timeout_s: int):
        super().__init__(("127.0.0.1", 0), RuntimeApiHandler)
        self.function_name, self.timeout_s = function_name, timeout_s
        self.pending: queue.Queue[Invocation | None] = queue.Queue()
        self.invocations: dict[str, Invocation] = {}
        self.init_error: bytes | None = None
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        """host:port, the value of AWS_LAMBDA_RUNTIME_API."""
        return "%s:%d" % self.server_address

    def invoke(self, event: bytes, wait_s: float, alive) -> Invocation:
        """Queue one event and wait for the runtime's answer (alive(): the runtime still runs)."""
        invocation = Invocation(str(uuid.uuid4()), event)
        self.invocations[invocation.request_id] = invocation
        self.pending.put(invocation)
        deadline = time.monotonic() + wait_s
        while not invocation.done.wait(0.2):
            if self.init_error is not None:
                raise RuntimeGone(f"init error: {self.init_error.decode(errors='replace')}")
            if not alive() or time.monotonic() > deadline:
                raise RuntimeGone("the runtime stopped before it answered")
        return invocation

    def close(self) -> None:
        self.pending.put(None)  # releases a GET /next still waiting
        self.shutdown()
        self.server_close()


class RuntimeApiHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the runtime client keeps its connection open
    server: RuntimeApi

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        pass

    def reply(self, status: int, body: bytes = b"{}", headers: dict[str, str] | None = None):
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def request_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path != f"{PREFIX}/invocation/next":
            return self.reply(404, b'{"errorType": "NotFound"}')
        invocation = self.server.pending.get()
        if invocation is None:
            return self.reply(500, b'{"errorType": "ShuttingDown"}')
        deadline_ms = int(time.time() * 1000) + self.server.timeout_s * 1000
        self.reply(200, invocation.event, {
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn":
                FUNCTION_ARN.format(name=self.server.function_name),
            "Lambda-Runtime-Trace-Id": f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]}"})

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.request_body()
        if self.path == f"{PREFIX}/init/error":
            self.server.init_error = body
            return self.reply(202, b'{"status": "OK"}')
        parts = self.path.removeprefix(f"{PREFIX}/invocation/").split("/")
        invocation = self.server.invocations.get(parts[0]) if len(parts) == 2 else None
        if invocation is None or parts[1] not in ("response", "error"):
            return self.reply(404, b'{"errorType": "InvalidRequestID"}')
        invocation.body = body
        if parts[1] == "error":
            invocation.error_type = self.headers.get("Lambda-Runtime-Function-Error-Type",
                                                     "Unhandled")
        self.reply(202, b'{"status": "OK"}')
        invocation.done.set()


class RuntimeLambda:
    """A Lambda client whose `invoke` runs the event through the Runtime API, as Lambda does:
    a response becomes the Payload, an error the Payload with FunctionError set."""

    def __init__(self, api: RuntimeApi, alive, wait_s: float):
        self.api, self.alive, self.wait_s = api, alive, wait_s

    def invoke(self, FunctionName, Qualifier, Payload):  # noqa: N803 - boto3's names
        invocation = self.api.invoke(Payload, self.wait_s, self.alive)
        answer = {"StatusCode": 200, "ExecutedVersion": Qualifier,
                  "Payload": io.BytesIO(invocation.body)}
        if invocation.error_type is not None:
            answer["FunctionError"] = "Unhandled"
        return answer

    def answer(self, event: dict) -> dict:
        """The handler's return value for `event` (a function error fails the caller)."""
        result = self.invoke("coughlab", "$LATEST", json.dumps(event).encode())
        body = result["Payload"].read()
        if "FunctionError" in result:
            raise RuntimeGone(f"function error: {body.decode(errors='replace')}")
        return json.loads(body)
