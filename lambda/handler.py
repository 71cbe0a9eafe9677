"""AWS Lambda: a cough recording -> P(COVID-19 positive), from the exported ONNX graph.

Needs only onnxruntime, numpy and soundfile (plus boto3, which the Lambda runtime has, for S3
events). Two kinds of event:

- Function URL / API Gateway GET: the recording page (`page.html`, next to this file): record a
  cough in the browser, POST it here, see the answer.
- Function URL / API Gateway POST. Body: the audio file itself (base64, as API Gateway
  delivers binary bodies) or JSON `{"audio": "<base64 of the file>"}`.
  Reply: 200 `{"p_positive": 0.83, "label": "positive", "threshold": 0.5, ...}`; bad input gets
  a 4xx JSON `{"error": code, "message": ...}`, never a stack trace.
- S3 ObjectCreated: each new object is downloaded and scored; one bad clip does not fail the others.

The model is loaded once per container (first call), not per request.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import json
import logging
import math
import os
import re
import urllib.parse
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger()
log.setLevel(logging.INFO)

MODEL_DIR = Path(os.environ.get("MODEL_DIR", Path(__file__).resolve().parent / "model"))
PAGE = Path(__file__).resolve().parent / "page.html"
MAX_AUDIO_BYTES = int(os.environ.get("MAX_AUDIO_BYTES", 10 * 1024 * 1024))
MAX_AUDIO_SECONDS = float(os.environ.get("MAX_AUDIO_SECONDS", 120))


class RequestError(Exception):
    """A client mistake: reported as a 4xx JSON error."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


@functools.cache
def load_model():
    """(onnxruntime session, model.json metadata); cached for the container's lifetime."""
    import onnxruntime as ort

    meta = json.loads((MODEL_DIR / "model.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("ORT_THREADS", 0))
    session = ort.InferenceSession(str(MODEL_DIR / meta["onnx_file"]), options,
                                   providers=["CPUExecutionProvider"])
    return session, meta


def sinc_resample(wave: np.ndarray, orig_sr: int, new_sr: int,
                  zero_crossings: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """numpy port of torchaudio.functional.resample (sinc_interp_hann), which training used.

    Same kernel, same padding and output length, so a clip resampled here matches the
    pipeline's combine stage to float32 rounding.
    """
    if orig_sr == new_sr:
        return wave.astype(np.float32, copy=False)
    gcd = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // gcd, new_sr // gcd
    base = min(orig, new) * rolloff
    width = math.ceil(zero_crossings * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    t = (np.arange(0, -new, -1, dtype=np.float32) / np.float32(new))[:, None].astype(np.float64)
    t = np.clip((t + idx) * base, -zero_crossings, zero_crossings)
    window = np.cos(t * math.pi / zero_crossings / 2) ** 2
    t *= math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        kernel = np.where(t == 0, 1.0, np.sin(t) / t)
    kernel = (kernel * window * (base / orig)).astype(np.float32)  # [new, taps]
    padded = np.pad(wave.astype(np.float32), (width, width + orig))
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1])[::orig]
    out = (frames @ kernel.T).reshape(-1)
    return out[: math.ceil(new * wave.size / orig)]


def decode(audio: bytes) -> tuple[np.ndarray, int]:
    """Bytes of a wav/flac/ogg/mp3 file -> mono float32 and its sample rate."""
    if not audio:
        raise RequestError(400, "empty_audio", "the audio is empty (0 bytes)")
    if len(audio) > MAX_AUDIO_BYTES:
        raise RequestError(413, "audio_too_large",
                           f"{len(audio)} bytes; the limit is {MAX_AUDIO_BYTES} bytes")
    try:
        data, sr = sf.read(io.BytesIO(audio), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise RequestError(415, "unsupported_audio",
                           f"not a readable wav/flac/ogg/mp3 file ({err})") from None
    if data.shape[0] == 0:
        raise RequestError(422, "no_samples", "the file decodes to no audio samples")
    if data.shape[0] / sr > MAX_AUDIO_SECONDS:
        raise RequestError(413, "audio_too_long",
                           f"{data.shape[0] / sr:.1f} s; the limit is {MAX_AUDIO_SECONDS:g} s")
    mono = data.mean(axis=1)
    if not np.isfinite(mono).all():
        raise RequestError(422, "non_finite_audio", "the audio contains NaN or infinite samples")
    return mono, int(sr)


def predict(audio: bytes) -> dict:
    session, meta = load_model()
    wave, sr = decode(audio)
    wave = sinc_resample(wave, sr, meta["sample_rate"])
    p = float(session.run([meta["output"]], {meta["input"]: wave[None, :]})[0][0])
    return {"p_positive": p, "label": "positive" if p >= meta["threshold"] else "negative",
            "threshold": meta["threshold"], "model_version": meta["version"],
            "seconds": round(wave.size / meta["sample_rate"], 3)}


def request_audio(event: dict) -> bytes:
    """The audio bytes of a Function URL / API Gateway request."""
    body = event.get("body")
    if body is None:
        raise RequestError(400, "missing_body", "POST the audio file, or JSON {\"audio\": base64}")
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    is_json = "json" in headers.get("content-type", "") or (
        not event.get("isBase64Encoded") and body.lstrip().startswith("{"))
    if is_json:
        if event.get("isBase64Encoded"):
            body = _b64(body, "body")
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise RequestError(400, "invalid_json", f"body is not valid JSON ({err})") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("audio"), str):
            raise RequestError(400, "missing_audio", "JSON body needs a string field \"audio\" "
                               "holding the base64-encoded file")
        return _b64(payload["audio"], "audio")
    if event.get("isBase64Encoded"):
        return _b64(body, "body")
    raise RequestError(415, "unsupported_body", "send the audio as a binary body (base64 via "
                       "API Gateway) or JSON {\"audio\": base64}")


def _b64(text: str | bytes, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "invalid_base64", f"{what} is not valid base64") from None


def s3_records(records: list[dict]) -> dict:
    import boto3

    s3 = boto3.client("s3")
    results = []
    for record in records:
        bucket = record["s3"]["bucket"]["name"]
        key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])
        item = {"bucket": bucket, "key": key}
        try:
            item.update(predict(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))
        except RequestError as err:
            item.update(error=err.code, message=str(err))
        log.info(json.dumps(item))
        results.append(item)
    return {"results": results}


def respond(status: int, payload: dict) -> dict:
    return {"statusCode": status, "headers": {"Content-Type": "application/json"},
            "body": json.dumps(payload)}


def request_method(event) -> str | None:
    """HTTP method of a Function URL (payload 2.0) or API Gateway (REST) event, else None."""
    if not isinstance(event, dict):
        return None
    http = (event.get("requestContext") or {}).get("http") or {}
    return http.get("method") or event.get("httpMethod")


@functools.cache
def recording_page() -> dict:
    """The recording page, read once per container, with a CSP that runs only its own code.

    The CSP names the sha256 of each inline <script>/<style> block: nothing else can run or
    style the page, and it can only talk to its own origin.
    """
    html = PAGE.read_text(encoding="utf-8")

    def sources(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
        return " ".join("'sha256-%s'" % base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()
                        for b in blocks)

    csp = (f"default-src 'none'; script-src {sources('script')}; style-src {sources('style')}; "
           "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
    return {"statusCode": 200, "body": html, "headers": {
        "Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache"}}


def handler(event, context=None):
    if request_method(event) == "GET":
        return recording_page()
    try:
        if not isinstance(event, dict):
            raise RequestError(400, "invalid_event", "the event must be a JSON object")
        if event.get("Records") and all("s3" in r for r in event["Records"]):
            return s3_records(event["Records"])
        return respond(200, predict(request_audio(event)))
    except RequestError as err:
        return respond(err.status, {"error": err.code, "message": str(err)})
    except Exception:  # noqa: BLE001 - the client gets a clean 500, CloudWatch gets the trace
        log.exception("unhandled error")
        return respond(500, {"error": "internal_error", "message": "the model failed on this input"})
