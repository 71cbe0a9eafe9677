"""The event a Lambda Function URL hands its function (payload format 2.0), built in one place.

`make serve` (coughlab.serve) builds one for every local request and the deploy's smoke test
(coughlab.aws.deploy.release) one for each request it sends a new version, so both talk to the
handler as a Function URL does. No boto3 here: serve imports this module.
"""
from __future__ import annotations

import base64
import time
import uuid
from urllib.parse import parse_qsl, urlsplit

# Content types a Function URL passes to the function as plain text (everything else: base64).
TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/xml",
              "application/x-www-form-urlencoded", "application/yaml")


def function_url_event(method: str, target: str = "/", headers: dict[str, str] | None = None,
                       body: bytes = b"", host: str = "localhost", source_ip: str = "127.0.0.1",
                       *, request_id: str | None = None, now: float | None = None) -> dict:
    """The event a Function URL hands to the function for this request (payload format 2.0).

    `headers` are lower-cased, as the Function URL passes them. `request_id` and `now` default
    to a fresh UUID and the current time; pass both to get the same event every time.
    """
    headers = headers or {}
    url = urlsplit(target)
    now = time.time() if now is None else now
    event = {
        "version": "2.0", "routeKey": "$default", "rawPath": url.path or "/",
        "rawQueryString": url.query, "headers": headers,
        "requestContext": {
            "accountId": "anonymous", "apiId": "local", "domainName": host,
            "domainPrefix": host.split(".")[0], "requestId": request_id or str(uuid.uuid4()),
            "routeKey": "$default", "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
            "http": {"method": method, "path": url.path or "/", "protocol": "HTTP/1.1",
                     "sourceIp": source_ip, "userAgent": headers.get("user-agent", "")}},
        "isBase64Encoded": False,
    }
    if url.query:
        event["queryStringParameters"] = query_parameters(url.query)
    if body:
        text = utf8_text(body) if headers.get("content-type", "").startswith(TEXT_TYPES) else None
        event["body"] = text if text is not None else base64.b64encode(body).decode()
        event["isBase64Encoded"] = text is None
    return event


def query_parameters(query: str) -> dict[str, str]:
    """A Function URL's queryStringParameters: blank values kept, repeated names comma-joined."""
    parameters: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        parameters[name] = f"{parameters[name]},{value}" if name in parameters else value
    return parameters


def utf8_text(body: bytes) -> str | None:
    """The body as text, or None where it is not UTF-8 (then it travels base64, like any)."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None
