"""coughlab.serve's local Function URL under hostile HTTP: every request gets a JSON answer.

Raw sockets on loopback, so a test can send what no HTTP library would (a Content-Length of
`abc`, headers and no body, a body that never ends, nothing at all) and read exactly what came
back. Each exchange is bounded by a client timeout: a server that hangs fails the test.
"""
from __future__ import annotations

import base64
import json
import select
import socket
import threading
import time
import tracemalloc
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coughlab import serve
from coughlab.serve import FunctionUrl

from audio_fixtures import encode

CLIENT_TIMEOUT = 30  # seconds a test waits for an answer before calling it none
CONCURRENT_CLIENTS = 50


def echo(event: dict, context: object) -> dict:
    """A function that answers with what the Function URL handed it."""
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"},
            "body": json.dumps({key: event.get(key) for key in (
                "body", "isBase64Encoded", "rawQueryString", "queryStringParameters")}
                | {"domainName": event["requestContext"]["domainName"]})}


@pytest.fixture
def url():
    with FunctionUrl(echo, timeout=2) as running:
        yield running


def address(running: FunctionUrl) -> tuple[str, int]:
    parts = urlsplit(running.url)
    return parts.hostname, parts.port


class Answer:
    """An HTTP response read to the end of the connection."""

    def __init__(self, raw: bytes):
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {k.strip().lower(): v.strip()
                        for k, v in (line.split(":", 1) for line in lines)}

    def json(self) -> dict:
        assert self.headers["content-type"] == "application/json", self.headers
        assert int(self.headers["content-length"]) == len(self.body)
        return json.loads(self.body)


def connect(running: FunctionUrl) -> socket.socket:
    sock = socket.create_connection(address(running), timeout=CLIENT_TIMEOUT)
    return sock


def read_answer(sock: socket.socket) -> Answer:
    """Everything until the server closes; a reset or a silence is a failed test."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (ConnectionResetError, TimeoutError) as err:
        raise AssertionError(f"no answer: {type(err).__name__} after {chunks!r:.200}") from None
    assert chunks, "the connection was closed without an answer"
    return Answer(b"".join(chunks))


def exchange(running: FunctionUrl, raw: bytes) -> Answer:
    with connect(running) as sock:
        sock.sendall(raw)
        return read_answer(sock)


def post(content_type: str, body: bytes, path: str = "/", **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# --- Content-Length and the 6 MB limit, before reading --------------------------------------

@pytest.mark.parametrize("length", ["abc", "-1", "1e20", "+5", "5 5", "0x10", "", "5.0",
                                    "\u0663", "5,5"])
def test_a_content_length_that_is_no_number_is_400_json(url, length):
    answer = exchange(url, f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n"
                      .encode())
    assert (answer.status, answer.json()["error"]) == (400, "invalid_content_length")
    assert url.requests == []  # the function never ran


def test_two_content_lengths_that_differ_are_400(url):
    answer = exchange(url, b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
    assert (answer.status, answer.json()["error"]) == (400, "invalid_content_length")


@pytest.mark.parametrize("length", [serve.MAX_REQUEST_BYTES + 1, 200 * 2**20, 4 * 2**30,
                                    10**30, "9" * 5000])
def test_a_body_over_the_function_url_limit_is_413_before_a_byte_of_it_is_read(url, length):
    """Headers only: a server that started reading the body would wait for it, not answer."""
    answer = exchange(url, f"POST / HTTP/1.1\r\nContent-Length: {length}\r\n\r\n".encode())
    assert (answer.status, answer.json()["error"]) == (413, "request_too_large")
    assert "6291456 bytes" in answer.json()["message"]
    assert url.requests == []


def test_a_large_body_sent_anyway_gets_its_413_in_bounded_memory(url):
    """A client that sends 32 MiB without waiting (no Expect: 100-continue) reads a 413, not
    a reset, and the server holds none of it (it used to read and base64 the whole body)."""
    request = post("audio/wav", bytes(32 * 2**20))
    tracemalloc.start()
    try:
        with connect(url) as sock:
            sender = threading.Thread(target=sock.sendall, args=(request,))
            sender.start()
            answer = read_answer(sock)
            sender.join(CLIENT_TIMEOUT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (answer.status, answer.json()["error"]) == (413, "request_too_large")
    assert peak < 2**20, f"{peak / 2**20:.1f} MiB held for a refused body"


def test_an_event_over_6_mb_once_base64_grows_the_body_is_413(url):
    """Lambda's limit is on the event: a 5 MiB body is 6.7 MB once base64-encoded."""
    answer = exchange(url, post("audio/wav", bytes(5 * 2**20)))
    assert (answer.status, answer.json()["error"]) == (413, "request_too_large")
    assert url.requests == []


def test_a_body_that_ends_early_is_400_not_a_wait_forever(url):
    with connect(url) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nContent-Length: 100\r\n\r\nonly this")
        sock.shutdown(socket.SHUT_WR)
        answer = read_answer(sock)
    assert (answer.status, answer.json()["error"]) == (400, "incomplete_body")


@settings(max_examples=80, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=st.text(alphabet=st.sampled_from(list("0123456789+-.eE xX,abc\u0663")),
                      max_size=25))
def test_any_content_length_gets_a_json_answer(url, length):
    """Three bytes of body follow, then the client stops sending: whatever the header says,
    the answer is JSON, and only a length the body matches reaches the function."""
    with connect(url) as sock:
        sock.sendall(f"POST / HTTP/1.1\r\nContent-Length: {length}\r\n\r\nabc".encode())
        sock.shutdown(socket.SHUT_WR)
        answer = read_answer(sock)
    expected = {"invalid_content_length", "incomplete_body", "request_too_large"}
    if answer.status == 200:
        assert int(length.strip()) <= 3, length
    else:
        assert answer.json()["error"] in expected, (length, answer.json())


# --- chunked bodies ----------------------------------------------------------------------

def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos = b"", 0
    for size in sizes:
        piece = body[pos:pos + size]
        out += f"{len(piece):x};ext=1\r\n".encode() + piece + b"\r\n"
        pos += size
    return out + b"0\r\nX-Trailer: yes\r\n\r\n"


def test_a_chunked_body_reaches_the_function_whole(url):
    body = bytes(range(256)) * 400
    raw = (b"POST / HTTP/1.1\r\nContent-Type: audio/wav\r\nTransfer-Encoding: chunked\r\n\r\n"
           + chunked(body, [1, 4095, 30000, 70000, len(body)]))
    event = exchange(url, raw).json()
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == body


@pytest.mark.parametrize("chunks,status,code", [
    (b"FFFFFFFF\r\n", 413, "request_too_large"),  # refused from the size line
    (b"600000\r\n" + bytes(0x600000) + b"\r\n1\r\nx\r\n0\r\n\r\n", 413, "request_too_large"),
    (b"zz\r\nab\r\n0\r\n\r\n", 400, "invalid_chunked_body"),
    (b"2\r\nabc\r\n0\r\n\r\n", 400, "invalid_chunked_body"),  # no CRLF after the chunk
    (b"-1\r\n", 400, "invalid_chunked_body"),
    (b"5\r\nab", 400, "invalid_chunked_body"),  # ends inside a chunk
])
def test_a_bad_chunked_body_is_refused_in_json(url, chunks, status, code):
    with connect(url) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
        sock.shutdown(socket.SHUT_WR)
        answer = read_answer(sock)
    assert (answer.status, answer.json()["error"]) == (status, code)
    assert url.requests == []


@pytest.mark.parametrize("headers,status,code", [
    ("Transfer-Encoding: chunked\r\nContent-Length: 5", 400, "invalid_request"),
    ("Transfer-Encoding: gzip, chunked", 501, "unsupported_transfer_encoding"),
    ("Transfer-Encoding: identity", 501, "unsupported_transfer_encoding"),
])
def test_ambiguous_or_unknown_transfer_encodings_are_refused(url, headers, status, code):
    answer = exchange(url, f"POST / HTTP/1.1\r\n{headers}\r\n\r\n0\r\n\r\n".encode())
    assert (answer.status, answer.json()["error"]) == (status, code)


# --- slow clients, malformed requests, many at once -------------------------------------

@pytest.mark.parametrize("sent", [b"", b"POST / HT", b"POST / HTTP/1.1\r\nHost: x",
                                  b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"])
def test_a_client_that_stalls_gets_a_408_and_its_thread_back(url, sent):
    with connect(url) as sock:
        sock.sendall(sent)
        answer = read_answer(sock)  # the server's 2 s timeout ends it, not the test's
    assert (answer.status, answer.json()["error"]) == (408, "request_timeout")


@pytest.mark.parametrize("raw,status", [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/9.9\r\n\r\n", 505),
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 200 + b"\r\n", 431),
])
def test_what_http_server_refuses_itself_is_json_too(url, raw, status):
    answer = exchange(url, raw)
    assert answer.status == status and answer.json()["error"]


def test_a_function_that_raises_or_answers_nonsense_is_a_502_in_json():
    def broken(event, context):
        raise RuntimeError("boom")

    for function in (broken, lambda event, context: {"statusCode": "abc"},
                     lambda event, context: {"statusCode": 200, "body": 5},
                     lambda event, context: {"statusCode": 200, "headers": "x"},
                     lambda event, context: {"statusCode": 200,
                                             "headers": {"X": "a\r\nSet-Cookie: s=1"}}):
        with FunctionUrl(function) as running:
            answer = exchange(running, b"GET / HTTP/1.1\r\n\r\n")
        assert (answer.status, answer.json()["error"]) == (502, "function_error")


def test_a_burst_of_connections_waits_in_the_listen_backlog(monkeypatch):
    """While the server accepts nothing (busy: the real handler holds the GIL for inference),
    50 connections must still complete their handshake and wait their turn: the kernel drops
    the SYNs past the listen backlog (5 by default, 128 here), and clients saw resets."""
    with FunctionUrl(echo) as running:
        accepting = threading.Event()
        accept = running.server.get_request

        def paused_accept():
            accepting.wait(CLIENT_TIMEOUT)
            return accept()

        monkeypatch.setattr(running.server, "get_request", paused_accept)
        clients = [socket.socket() for _ in range(CONCURRENT_CLIENTS)]
        try:
            for sock in clients:
                sock.setblocking(False)
                sock.connect_ex(address(running))
            pending, deadline = set(clients), time.monotonic() + CLIENT_TIMEOUT / 3
            while pending and time.monotonic() < deadline:  # bounds the failing case only
                _, connected, _ = select.select([], list(pending), [], 1.0)
                pending -= set(connected)
            accepting.set()
            answers = []
            for k, sock in enumerate(clients):
                sock.setblocking(True)
                sock.settimeout(CLIENT_TIMEOUT)
                sock.sendall(post("audio/wav", f"client {k}".encode()))
                answers.append(base64.b64decode(read_answer(sock).json()["body"]).decode())
        finally:
            accepting.set()
            for sock in clients:
                sock.close()
    assert len(pending) == 0, f"{len(pending)} of {CONCURRENT_CLIENTS} handshakes were dropped"
    assert answers == [f"client {k}" for k in range(CONCURRENT_CLIENTS)]


def test_fifty_concurrent_requests_are_all_answered():
    """Loopback only, a bounded count: all connect at once (past a backlog of 5, some used to
    be reset), each gets its own answer."""
    answers: dict[int, object] = {}
    with FunctionUrl(echo) as running:
        barrier = threading.Barrier(CONCURRENT_CLIENTS)

        def client(k: int) -> None:
            barrier.wait(CLIENT_TIMEOUT)
            try:
                answer = exchange(running, post("audio/wav", f"client {k}".encode()))
                answers[k] = base64.b64decode(answer.json()["body"]).decode()
            except (AssertionError, OSError) as err:
                answers[k] = err

        clients = [threading.Thread(target=client, args=(k,)) for k in range(CONCURRENT_CLIENTS)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(CLIENT_TIMEOUT)
    assert answers == {k: f"client {k}" for k in range(CONCURRENT_CLIENTS)}


# --- bodies as a Function URL hands them on ---------------------------------------------

@pytest.mark.parametrize("content_type", ["text/plain", "application/json",
                                          "application/x-www-form-urlencoded",
                                          "text/plain; charset=latin-1"])
@pytest.mark.parametrize("body", [b"\xff\xfe not utf-8", encode("mp3", 1, 0.2)[:3000]])
def test_a_text_typed_body_that_is_not_utf8_arrives_base64(url, content_type, body):
    event = exchange(url, post(content_type, body)).json()
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == body


def test_a_text_typed_utf8_body_arrives_as_text(url):
    event = exchange(url, post("application/json", '{"a": "é"}'.encode())).json()
    assert (event["isBase64Encoded"], event["body"]) == (False, '{"a": "é"}')


@settings(max_examples=60, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content_type=st.sampled_from(["text/plain", "application/json", "text/csv",
                                     "application/x-www-form-urlencoded", "audio/wav", ""]),
       body=st.binary(max_size=300))
def test_any_body_of_any_type_reaches_the_function_byte_for_byte(url, content_type, body):
    event = exchange(url, post(content_type, body)).json()
    arrived = (base64.b64decode(event["body"]) if event["isBase64Encoded"]
               else (event["body"] or "").encode())
    assert arrived == body


# --- the URL's own origin and query --------------------------------------------------------

def test_the_own_origin_is_the_bind_address_not_the_host_header(url):
    """A DNS-rebinding page names its own host in Host; the URL is still 127.0.0.1:port."""
    host, port = address(url)
    event = exchange(url, post("audio/wav", b"x", Host=f"evil.example:{port}")).json()
    assert event["domainName"] == f"{host}:{port}"


@pytest.mark.parametrize("query,parameters", [
    ("model_card", {"model_card": ""}),
    ("model_card&x=1", {"model_card": "", "x": "1"}),
    ("a=1&a=2&b=", {"a": "1,2", "b": ""}),
])
def test_query_parameters_are_as_a_function_url_gives_them(url, query, parameters):
    event = exchange(url, f"GET /?{query} HTTP/1.1\r\n\r\n".encode()).json()
    assert (event["rawQueryString"], event["queryStringParameters"]) == (query, parameters)


# --- serve listens on loopback only, and logs what it got, escaped -------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.com"])
def test_serve_refuses_to_listen_beyond_loopback(host):
    with pytest.raises(serve.ServeError, match="loopback"):
        FunctionUrl(echo, host=host).start()


def test_log_lines_show_control_characters_escaped():
    lines = []
    with FunctionUrl(echo, log=lines.append) as running:
        exchange(running, b"GET /\x1b[2J\x1b]0;pwned\x07?\x7f HTTP/1.1\r\n\r\n")
        exchange(running, b"P\x1bST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert lines == ["GET /\\x1b[2J\\x1b]0;pwned\\x07?\\x7f -> 200", "P\\x1bST / -> 400"]
