"""AWS Lambda: a cough recording -> P(COVID-19 positive), from the exported ONNX graph.

Needs onnxruntime, numpy, soundfile, soxr and PyAV (plus boto3, which the Lambda runtime has,
for S3 events); never torch or coughlab. Two kinds of event:

- Function URL / API Gateway GET: the recording page (`page.html`, next to this file): record a
  cough in the browser, POST it here, see the answer. GET `?model_card`: the model card
  export-lambda wrote beside model.json: as HTML for a browser (Accept: text/html; every
  character of the card escaped), else the Markdown as plain text.
- Function URL / API Gateway POST. Body: the audio file itself (base64, as API Gateway
  delivers binary bodies) with an audio Content-Type (`audio/webm`, `audio/wav`,
  `application/octet-stream`, ...), or JSON `{"audio": "<base64 of the file>"}` as
  `application/json`. Formats: what browsers
  and phones record (webm/opus, ogg/opus, mp4/m4a aac) and wav, flac, ogg/vorbis, mp3.
  Reply: 200 `{"p_positive": 0.83, "label": "positive", "threshold": 0.5, ...}`; bad input gets
  a 4xx JSON `{"error": code, "message": ...}`, never a stack trace.
- S3 ObjectCreated: each record's object is size-checked, downloaded and scored on its own;
  one bad record or clip does not fail the others.

Only what a browser cannot send from another site without a CORS preflight is scored: the
Content-Type must be an audio one (or application/json), and an Origin header, where there is
one, must be the URL's own. Answers are strict JSON (no NaN/Infinity).

Limits, checked before the work they bound: MAX_AUDIO_BYTES of file (by default what still
fits a Function URL's 6 MB request once base64 has grown it by 4/3), MAX_AUDIO_SECONDS and
MAX_AUDIO_CHANNELS from the file header (and again while decoding, for formats whose header
has no length), sample rates within 4-192 kHz. Only decoded samples are scored, and the
seconds reported are the decoded ones; an Ogg file with a damaged page is refused (422), for
what decodes past it depends on the decoder's read size. A clip that training would have
quarantined (empty, non-finite, too short, silent: model.json's `quality`) gets 422 with that
reason.

The model is loaded once per container (first call), not per request.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import html
import io
import json
import logging
import math
import os
import re
import urllib.parse
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

log = logging.getLogger()
log.setLevel(logging.INFO)

MODEL_DIR = Path(os.environ.get("MODEL_DIR", Path(__file__).resolve().parent / "model"))
PAGE = Path(__file__).resolve().parent / "page.html"
MODEL_CARD = "model_card.md"  # export-lambda writes it beside model.json
# A Function URL refuses a request over Lambda's 6 MB synchronous payload before the handler
# runs (the caller gets Lambda's own error, not this JSON). The body travels base64-encoded,
# 4/3 of the file, inside an event that also carries headers and requestContext.
FUNCTION_URL_PAYLOAD_BYTES = 6 * 2**20
EVENT_ALLOWANCE_BYTES = 256 * 2**10
MAX_AUDIO_BYTES = int(os.environ.get(
    "MAX_AUDIO_BYTES", (FUNCTION_URL_PAYLOAD_BYTES - EVENT_ALLOWANCE_BYTES) * 3 // 4))
MAX_AUDIO_SECONDS = float(os.environ.get("MAX_AUDIO_SECONDS", 120))
MAX_AUDIO_CHANNELS = int(os.environ.get("MAX_AUDIO_CHANNELS", 8))
# Origins allowed besides the URL's own, e.g. a CloudFront domain in front of it (comma-separated).
ALLOWED_ORIGINS = {o.strip().lower() for o in os.environ.get("ALLOWED_ORIGINS", "").split(",")
                   if o.strip()}
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4000, 192000
# soxr HQ's filter reaches ~0.025 s either side at the lowest accepted rate: the span cut
# before resampling keeps this much more on each side, so its edges do not reach the output.
RESAMPLER_MARGIN_SECONDS = 0.05
DECODE_BLOCK_FRAMES = 65536
# libsndfile's float of a 16-bit sample s is s / 32768, exactly (a power of two): the same
# floats from the integers, at a tenth of libsndfile's conversion time.
PCM16_SCALE = np.float32(1 / 32768)
FORMATS = "wav, flac, ogg (vorbis/opus), mp3, webm (opus), mp4/m4a (aac)"
# Media types a page on another site cannot POST without a CORS preflight (text/plain,
# application/x-www-form-urlencoded and multipart/form-data it can), plus the containers
# browsers label as video.
AUDIO_CONTENT_TYPES = ("audio/", "video/webm", "video/mp4", "video/ogg", "application/ogg",
                       "application/octet-stream")
JSON_CONTENT_TYPE = "application/json"
QUALITY_MESSAGES = {
    "empty": "the file decodes to no audio samples",
    "non_finite": "the audio contains NaN or infinite samples",
    "too_short": "the recording is shorter than {min_seconds:g} s; record the whole cough",
    "silent": "the recording is silent (peak below {silence_dbfs:g} dBFS); check the microphone",
}


class RequestError(Exception):
    """A client mistake: reported as a 4xx JSON error."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


@functools.cache
def load_model():
    """(onnxruntime session, model.json metadata); cached for the container's lifetime.

    One session, sequential, one intra-op thread unless ORT_THREADS says otherwise: a Lambda
    up to 1769 MB has one vCPU, and on the 3 s the graph reads a second thread measured
    slower (13 -> 25 ms per call on a 2-core host), its hand-offs costing more than they save.
    """
    import onnxruntime as ort

    meta = json.loads((MODEL_DIR / "model.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("ORT_THREADS", 1))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(MODEL_DIR / meta["onnx_file"]), options,
                                   providers=["CPUExecutionProvider"])
    return session, meta


@functools.cache
def s3_client():
    import boto3

    return boto3.client("s3")


def check_header(sample_rate: int, channels: int, frames: int | None) -> None:
    """Refuse, before decoding, what the header says is out of bounds."""
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise RequestError(415, "unsupported_sample_rate",
                           f"sample rate {sample_rate} Hz; accepted: {MIN_SAMPLE_RATE}-"
                           f"{MAX_SAMPLE_RATE} Hz")
    if not 1 <= channels <= MAX_AUDIO_CHANNELS:
        raise RequestError(415, "unsupported_channels",
                           f"{channels} channels; accepted: 1-{MAX_AUDIO_CHANNELS}")
    if frames is not None and frames > max_frames(sample_rate):
        raise RequestError(413, "audio_too_long", f"{frames / sample_rate:.1f} s; the limit "
                           f"is {MAX_AUDIO_SECONDS:g} s")


def max_frames(sample_rate: int) -> int:
    return int(MAX_AUDIO_SECONDS * sample_rate)


def too_long() -> RequestError:
    return RequestError(413, "audio_too_long", f"longer than the limit of {MAX_AUDIO_SECONDS:g} s")


def too_large(size: str) -> RequestError:
    return RequestError(413, "audio_too_large", f"{size}; the limit is {MAX_AUDIO_BYTES} bytes "
                        f"({MAX_AUDIO_BYTES / 1e6:.1f} MB: a Function URL takes 6 MB per "
                        "request, and base64 makes a file a third larger)")


def mono_blocks(blocks, sample_rate: int) -> np.ndarray:
    """Concatenate `[channels, n]` float32 blocks mixed to mono, stopping once past the limit.

    A block may be a view of a buffer its decoder reuses, so each part is a new array.
    """
    limit, total, parts = max_frames(sample_rate), 0, []
    for block in blocks:
        parts.append(block[0].copy() if len(block) == 1 else block.mean(axis=0, dtype=np.float32))
        total += parts[-1].size
        if total > limit:
            raise too_long()
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def decoded_blocks(f: sf.SoundFile):
    """`[channels, n]` float32 blocks holding exactly the frames libsndfile decoded.

    Not SoundFile.blocks(): without a fill_value it yields its whole buffer when the file ends
    before its header says (a truncated mp3), the unfilled rest being whatever memory held.
    read(out=...) returns only the frames read.
    """
    pcm16 = f.subtype == "PCM_16"  # read as integers, scaled: coughlab.audio.read_soundfile
    buffer = np.empty((DECODE_BLOCK_FRAMES, f.channels), np.int16 if pcm16 else np.float32)
    while True:
        frames = f.read(out=buffer)
        if not len(frames):
            return
        yield frames.T * PCM16_SCALE if pcm16 else frames.T


def decode_soundfile(audio: bytes) -> tuple[np.ndarray, int] | None:
    """wav/flac/ogg/mp3/... via libsndfile; None when libsndfile cannot read the file."""
    try:
        with sf.SoundFile(io.BytesIO(audio)) as f:
            check_header(f.samplerate, f.channels, f.frames)
            return mono_blocks(decoded_blocks(f), f.samplerate), f.samplerate
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        log.info("soundfile cannot read the audio: %s", type(err).__name__)
        return None


def pyav_format(head: bytes) -> str | None:
    """The FFmpeg demuxer for a container recognised by its magic bytes, else None.

    Forcing the demuxer keeps FFmpeg's probing (and demuxers that open other URLs, such as
    HLS playlists) away from request bytes.
    """
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # also webm
    if head[4:8] == b"ftyp":
        return "mp4"  # also m4a/mov/3gp
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"ID3"):
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "aac" if head[1] & 0x06 == 0 else "mp3"  # ADTS has layer bits 00
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    return None


def header_frames(container, stream, sample_rate: int) -> int | None:
    """Length in samples as the container header states it; None when it states none."""
    if stream.duration is not None and stream.time_base is not None:
        return int(stream.duration * stream.time_base * sample_rate)
    if container.duration is not None:
        return int(container.duration * sample_rate / 1_000_000)
    return None


def packed_blocks(frames, resampler):
    """`[channels, n]` float32 blocks of decoded frames, read as one packed (interleaved) plane.

    Never to_ndarray() on a planar frame: PyAV 18.1 counts planes by walking
    AVFrame.extended_data to a NULL, and with 8 planar channels (7.1 opus/aac, 8-channel PCM)
    there is none inside the 8 data pointers, so it reads past them and dies (SIGSEGV). A packed
    frame has one plane whatever its channel count; the resampler makes every frame packed.
    """
    for frame in frames:
        for out in resampler.resample(frame):
            channels = out.layout.nb_channels
            yield np.ascontiguousarray(out.to_ndarray().reshape(-1, channels).T)


def decode_pyav(audio: bytes, demuxer: str) -> tuple[np.ndarray, int]:
    """webm/ogg opus, mp4/m4a aac and the rest FFmpeg knows, decoded as coughlab.audio does."""
    import av

    try:
        with av.open(io.BytesIO(audio), format=demuxer) as container:
            if not container.streams.audio:
                raise RequestError(415, "unsupported_audio", "the file has no audio stream")
            stream = container.streams.audio[0]
            if stream.codec_context is None:  # demuxed, but no decoder knows its codec
                raise RequestError(415, "unsupported_audio", "the audio codec is not one this "
                                   f"service decodes; accepted formats: {FORMATS}")
            sample_rate = stream.codec_context.sample_rate or 0
            check_header(sample_rate, stream.codec_context.channels,
                         header_frames(container, stream, sample_rate))
            resampler = av.AudioResampler(format="flt", layout=stream.layout.name, rate=sample_rate)
            blocks = packed_blocks(container.decode(stream), resampler)
            return mono_blocks(blocks, sample_rate), sample_rate
    except (av.error.FFmpegError, ValueError, IndexError, TypeError, OSError) as err:
        log.info("PyAV cannot read the audio: %s", type(err).__name__)
        raise unreadable() from None


OGG_PAGE_HEADER = 27  # "OggS", version, flags, granule, serial, sequence, CRC, segment count
BIT_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def ogg_crc(page: bytes) -> int:
    """Ogg's page checksum (CRC-32, polynomial 0x04C11DB7, MSB first, no init or final xor),
    by zlib's reflected CRC-32 over bit-reversed bytes: C speed on a 4 MB upload."""
    raw = zlib.crc32(page.translate(BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{raw:032b}"[::-1], 2)


def check_ogg_pages(audio: bytes) -> None:
    """Refuse an Ogg file with a damaged page: a checksum that fails, or junk between pages.

    Past such a page libsndfile's vorbis reader gives samples that depend on how much is
    read at a time, so no score of them would be the file's. What follows the last page
    whole (the rest of a page cut short by an upload that ended early, a tag some tools
    append) is left alone: the pages before it decode, and are scored.
    """
    if not (audio.startswith(b"OggS") and len(audio) > 5 and audio[5] & 0x02):
        raise unreadable()  # no Ogg stream begins here (its first page must say so)
    pos = 0
    while pos < len(audio):
        table_end = pos + OGG_PAGE_HEADER + (audio[pos + 26] if pos + 26 < len(audio) else 0)
        end = table_end + sum(audio[pos + OGG_PAGE_HEADER:table_end])
        whole = audio.startswith(b"OggS", pos) and end <= len(audio)
        if pos and not whole and audio.find(b"OggS", pos + 4) == -1:
            return  # past the last whole page
        page = audio[pos:end]
        if not (whole and ogg_crc(page[:22] + bytes(4) + page[26:])
                == int.from_bytes(page[22:26], "little")):
            raise RequestError(422, "damaged_audio", f"the file is damaged: the Ogg page at "
                               f"byte {pos} fails its checksum; upload the recording again")
        pos = end


def is_ogg_opus(audio: bytes) -> bool:
    """Whether an Ogg file (its first page checked whole) opens with an OpusHead packet."""
    return audio[OGG_PAGE_HEADER + audio[26]:].startswith(b"OpusHead")


def unreadable() -> RequestError:
    return RequestError(415, "unsupported_audio",
                        f"not a readable audio file; accepted formats: {FORMATS}")


def decode(audio: bytes) -> tuple[np.ndarray, int]:
    """Bytes of an audio file -> mono float32 at its own sample rate (soundfile, then PyAV;
    Ogg Opus by PyAV alone)."""
    if not audio:
        raise RequestError(400, "empty_audio", "the audio is empty (0 bytes)")
    if len(audio) > MAX_AUDIO_BYTES:
        raise too_large(f"{len(audio)} bytes")
    if audio.startswith(b"OggS"):
        check_ogg_pages(audio)
        if is_ogg_opus(audio):
            # Not libsndfile: its Opus reader sizes each page's output by the page's granule
            # position, so a granule claiming more than the packets hold yields samples never
            # decoded, which change with the read size. FFmpeg hands on what the packets decode.
            return decode_pyav(audio, "ogg")
    decoded = decode_soundfile(audio)
    if decoded is not None:
        return decoded
    demuxer = pyav_format(audio[:16])
    if demuxer is None:
        raise RequestError(415, "unsupported_audio",
                           f"not a recognised audio file; accepted formats: {FORMATS}")
    return decode_pyav(audio, demuxer)


def quality_problem(wave: np.ndarray, sample_rate: int, quality: dict | None) -> str | None:
    """coughlab.audio.quality_problem, with model.json's `quality` values (the ones combine
    used)."""
    if wave.size == 0:
        return "empty"
    high, low = float(wave.max()), float(wave.min())  # a NaN or infinity reaches one of them
    if not (math.isfinite(high) and math.isfinite(low)):
        return "non_finite"
    if quality is None:  # a model.json from before the rule travelled with the model
        return None
    if wave.size / sample_rate < quality["min_seconds"]:
        return "too_short"
    peak = max(high, -low)
    if peak == 0.0 or 20 * np.log10(peak) < quality["silence_dbfs"]:
        return "silent"
    return None


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """The pipeline's resampler (coughlab.audio.resample): soxr HQ on float32 mono."""
    if orig_sr == target_sr:
        return wave.astype(np.float32, copy=False)
    return soxr.resample(wave.astype(np.float32, copy=False), orig_sr, target_sr, quality="HQ")


def resampled_length(n: int, orig_sr: int, target_sr: int) -> int:
    """len(resample(n samples)): soxr rounds n * target / orig to the nearest, halves up."""
    return (2 * n * target_sr + orig_sr) // (2 * orig_sr)


def graph_input(wave: np.ndarray, orig_sr: int, target_sr: int,
                input_seconds: float | None) -> np.ndarray:
    """What the graph sees of `resample(wave)`, resampling only that part when it can.

    A graph that centre-crops `input_seconds` needs only the centred span of the resampled
    clip. The span cut here starts on a sample where the input and output grids meet (a
    multiple of orig/gcd input samples) and keeps a filter margin either side, so its
    resampled samples equal the full clip's to float32 rounding. That holds where the grids
    meet often (every <= 1000 input and <= 640 output samples: all the usual rates), for
    there soxr's filter phases repeat exactly; at odd rates such as 8001 Hz its phase step is
    approximated, so the whole clip is resampled (bounded all the same: at most
    MAX_AUDIO_SECONDS).
    """
    gcd = math.gcd(orig_sr, target_sr)
    step_in, step_out = orig_sr // gcd, target_sr // gcd
    if input_seconds is None or step_in > 1000 or step_out > 640:
        return resample(wave, orig_sr, target_sr)
    length = int(round(input_seconds * target_sr))
    n_out = resampled_length(wave.size, orig_sr, target_sr)
    if n_out <= length:
        return resample(wave, orig_sr, target_sr)
    start = (n_out - length) // 2  # the graph's centre crop (coughlab.features)
    margin = math.ceil(RESAMPLER_MARGIN_SECONDS * target_sr)
    first_out = max(0, start - margin) // step_out * step_out
    first_in = first_out // step_out * step_in
    end_in = min(wave.size, -(-(start + length + margin) * orig_sr // target_sr) + 1)
    span = resample(wave[first_in:end_in], orig_sr, target_sr)
    return span[start - first_out: start - first_out + length]


def predict(audio: bytes) -> dict:
    session, meta = load_model()
    wave, sr = decode(audio)
    problem = quality_problem(wave, sr, meta.get("quality"))
    if problem is not None:
        raise RequestError(422, problem,
                           QUALITY_MESSAGES[problem].format(**meta.get("quality") or {}))
    x = graph_input(wave, sr, meta["sample_rate"], meta.get("input_seconds"))
    p = float(session.run([meta["output"]], {meta["input"]: x[None, :]})[0][0])
    if not math.isfinite(p):
        raise RequestError(422, "non_finite_score", "the model gave no finite probability for "
                           "this recording")
    return {"p_positive": p, "label": "positive" if p >= meta["threshold"] else "negative",
            "threshold": meta["threshold"], "model_version": meta["version"],
            "git_commit": meta.get("git_commit"), "seconds": round(wave.size / sr, 3)}


def header(headers, name: str) -> str:
    """A header of an event whose headers may be anything ("" when absent or not a string)."""
    if headers is None:
        return ""
    if not isinstance(headers, dict):
        raise RequestError(400, "invalid_headers", "headers must be a JSON object")
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value
    return ""


def media_type(event: dict) -> str:
    """The request's Content-Type without parameters, lower-cased: "audio/webm;codecs=opus" ->
    "audio/webm"."""
    return header(event.get("headers"), "content-type").split(";")[0].strip().lower()


def own_host(event: dict) -> str:
    """host[:port] the request was sent to: the Function URL's domain, else the Host header."""
    context = event.get("requestContext")
    domain = context.get("domainName") if isinstance(context, dict) else None
    return (domain if isinstance(domain, str) and domain else
            header(event.get("headers"), "host")).lower()


def check_origin(event: dict) -> None:
    """Refuse a request a page on another site sent (browsers name that site in Origin).

    The Function URL's CORS rule only hides the answer from such a page; the request itself
    still arrives, so it is refused here, before any work.
    """
    origin = header(event.get("headers"), "origin")
    if not origin or origin.lower() in ALLOWED_ORIGINS:
        return  # not sent by a page (curl, SDKs), or by a page allowed by name
    host = own_host(event)
    if not host or origin_host(origin) != host:
        raise RequestError(403, "cross_origin", "only the recording page served by this URL "
                           "may call it from a browser")


def origin_host(origin: str) -> str | None:
    """host[:port] of an Origin header, lower-cased; None for one no URL parser reads (an
    unclosed IPv6 bracket, a host that NFKC normalisation changes): such an origin names no
    site, so it is not this one."""
    try:
        return urllib.parse.urlsplit(origin).netloc.lower()
    except ValueError:
        return None


def check_content_type(kind: str) -> None:
    """Accept only media types a page on another site cannot POST without a preflight."""
    if kind == JSON_CONTENT_TYPE or kind.startswith(AUDIO_CONTENT_TYPES):
        return
    raise RequestError(415, "unsupported_content_type",
                       f"{'this' if kind else 'no'} Content-Type; send the file with "
                       "its audio type (e.g. audio/webm, audio/wav, application/octet-stream) "
                       "or JSON {\"audio\": base64} as application/json")


def request_audio(event: dict) -> bytes:
    """The audio bytes of a Function URL / API Gateway request."""
    check_origin(event)
    body = event.get("body")
    if body is None:
        raise RequestError(400, "missing_body", "POST the audio file, or JSON {\"audio\": base64}")
    if not isinstance(body, str):
        raise RequestError(400, "invalid_body", "body must be a string (base64 or JSON)")
    kind = media_type(event)
    check_content_type(kind)
    encoded = event.get("isBase64Encoded") is True
    if kind == JSON_CONTENT_TYPE:
        payload = parse_json(_b64(body, "body") if encoded else body)
        if not isinstance(payload, dict) or not isinstance(payload.get("audio"), str):
            raise RequestError(400, "missing_audio", "JSON body needs a string field \"audio\" "
                               "holding the base64-encoded file")
        return _b64(payload["audio"], "audio")
    if encoded:
        return _b64(body, "body")
    raise RequestError(415, "unsupported_body", "send the audio as a binary body (base64 via "
                       "API Gateway) or JSON {\"audio\": base64}")


def parse_json(text: str | bytes):
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError(400, "invalid_json", f"body is not valid JSON ({err.msg} at line "
                           f"{err.lineno} column {err.colno})") from None
    except (ValueError, RecursionError):  # not UTF-8, or nested deeper than Python recurses
        raise RequestError(400, "invalid_json", "body is not valid UTF-8 JSON") from None


def _b64(text: str | bytes, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "invalid_base64", f"{what} is not valid base64") from None


def s3_location(record) -> tuple[str, str]:
    """(bucket, key) of an S3 event record, or a 400 saying what is missing."""
    try:
        bucket = record["s3"]["bucket"]["name"]
        key = record["s3"]["object"]["key"]
    except (KeyError, TypeError):
        raise RequestError(400, "invalid_record", "not an S3 record with s3.bucket.name and "
                           "s3.object.key") from None
    if not (isinstance(bucket, str) and bucket and isinstance(key, str) and key):
        raise RequestError(400, "invalid_record", "s3.bucket.name and s3.object.key must be "
                           "non-empty strings")
    return bucket, urllib.parse.unquote_plus(key)


def read_s3_object(bucket: str, key: str) -> bytes:
    """The object's bytes, refused by its HEAD size before any byte is read (and capped after)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        size = s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"]
        if size > MAX_AUDIO_BYTES:
            raise too_large(f"{size} bytes")
        data = s3_client().get_object(Bucket=bucket, Key=key)["Body"].read(MAX_AUDIO_BYTES + 1)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "unknown")
        raise RequestError(404 if code in ("404", "NoSuchKey", "NoSuchBucket") else 403,
                           "s3_error", f"S3 refused the object ({code})") from None
    except BotoCoreError as err:
        raise RequestError(502, "s3_error", f"S3 unreachable ({type(err).__name__})") from None
    if len(data) > MAX_AUDIO_BYTES:  # the object grew after HEAD
        raise too_large(f"more than {MAX_AUDIO_BYTES} bytes")
    return data


def score_s3_record(record) -> dict:
    """One record's result; any failure is that record's error only."""
    item = {}
    try:
        bucket, key = s3_location(record)
        item.update(bucket=bucket, key=key)
        item.update(predict(read_s3_object(bucket, key)))
    except RequestError as err:
        item.update(error=err.code, message=str(err), status=err.status)
    except Exception:  # noqa: BLE001 - other records are still scored; CloudWatch gets the trace
        log.exception("unhandled error on an S3 record")
        item.update(error="internal_error", message="the model failed on this object", status=500)
    log.info(json.dumps(item))
    return item


def s3_records(records) -> dict:
    """Score every record; 200 if any was scored, else the first record's error status."""
    if not isinstance(records, list) or not records:
        raise RequestError(400, "invalid_event", "Records must be a non-empty list")
    results = [score_s3_record(record) for record in records]
    scored = any("p_positive" in item for item in results)
    return respond(200 if scored else results[0]["status"], {"results": results})


def respond(status: int, payload: dict) -> dict:
    """Strict JSON: a NaN or Infinity that slipped through raises here (a clean 500), never
    reaching a client whose JSON parser would reject the body."""
    return {"statusCode": status, "headers": {"Content-Type": "application/json"},
            "body": json.dumps(payload, allow_nan=False)}


def request_method(event) -> str | None:
    """HTTP method of a Function URL (payload 2.0) or API Gateway (REST) event, else None."""
    context = event.get("requestContext")
    http = context.get("http") if isinstance(context, dict) else None
    method = http.get("method") if isinstance(http, dict) else event.get("httpMethod")
    return method if isinstance(method, str) else None


def csp_hashes(page: str, tag: str) -> str:
    """The CSP sources naming the sha256 of each inline <tag> block of `page`."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.DOTALL)
    return " ".join("'sha256-%s'" % base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()
                    for b in blocks)


def trained_on() -> str:
    """model.json's sentence on the training data (synthetic sample, or which real sources)."""
    try:
        sentence = json.loads((MODEL_DIR / "model.json").read_text()).get("trained_on")
    except (OSError, ValueError, AttributeError):
        sentence = None
    return sentence if isinstance(sentence, str) and sentence else (
        "What this model was trained on is not recorded with it: read the model card.")


@functools.cache
def recording_page() -> dict:
    """The recording page, read once per container, with a CSP that runs only its own code, the
    upload limit it refuses larger recordings by, before posting them, and model.json's
    sentence on what the model was trained on (escaped).

    The CSP names the sha256 of each inline <script>/<style> block: nothing else can run or
    style the page, and it can only talk to its own origin.
    """
    html_text = PAGE.read_text(encoding="utf-8").replace(
        '<meta name="max-audio-bytes" content="MAX_AUDIO_BYTES">',
        f'<meta name="max-audio-bytes" content="{MAX_AUDIO_BYTES}">').replace(  # checked there too
        "<!--TRAINED_ON-->", html.escape(trained_on()))
    csp = (f"default-src 'none'; script-src {csp_hashes(html_text, 'script')}; "
           f"style-src {csp_hashes(html_text, 'style')}; "
           "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
           "frame-ancestors 'none'")
    return {"statusCode": 200, "body": html_text, "headers": {
        "Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache"}}


def wants_model_card(event: dict) -> bool:
    """GET ?model_card, exactly: a Function URL event has rawQueryString, API Gateway's only the
    parameters. Any other query (`?model_card&x=1`) gets the page, in either shape."""
    raw = event.get("rawQueryString")
    if isinstance(raw, str):
        return raw == "model_card"
    return event.get("queryStringParameters") == {"model_card": ""}


CARD_STYLE = ("body{font:16px/1.5 system-ui,sans-serif;max-width:50rem;margin:0 auto;"
              "padding:1rem}table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px "
              "solid #767676;padding:.2rem .5rem;text-align:left}pre{overflow-x:auto;"
              "background:rgba(127,127,127,.12);padding:.5rem}blockquote{border-left:4px solid "
              "#c0392b;margin:1rem 0;padding:.2rem .8rem}")
MARKDOWN_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~])")


def card_inline(text: str) -> str:
    """One line of the card as HTML: escaped first, then only **bold** and `code` marked up;
    a backslash-escaped character stays literal."""
    kept: list[str] = []

    def keep(match: re.Match) -> str:
        kept.append(match.group(1))
        return f"\0{len(kept) - 1}\0"

    text = html.escape(MARKDOWN_ESCAPE.sub(keep, text.replace("\0", "")))
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\0(\d+)\0", lambda m: html.escape(kept[int(m.group(1))]), text)


def card_cells(row: str) -> list[str]:
    return [card_inline(cell.strip())
            for cell in re.split(r"(?<!\\)\|", row.strip().removeprefix("|").removesuffix("|"))]


def card_blocks(lines: list[str]):
    """The card's blocks as HTML: front matter, fenced code, headings, tables, lists, quotes
    and paragraphs, the only Markdown export-lambda writes."""
    i = 0
    if lines[:1] == ["---"] and "---" in lines[1:]:
        end = lines.index("---", 1)
        yield ("<details><summary>Metadata (for model hubs)</summary><pre>"
               + html.escape("\n".join(lines[1:end])) + "</pre></details>")
        i = end + 1
    while i < len(lines):
        line, start = lines[i], i
        i += 1
        if line.startswith("```"):
            while i < len(lines) and not lines[i].startswith("```"):
                i += 1
            yield "<pre><code>" + html.escape("\n".join(lines[start + 1:i])) + "</code></pre>"
            i += 1
        elif heading := re.match(r"(#{1,6}) (.*)", line):
            level = len(heading.group(1))
            yield f"<h{level}>{card_inline(heading.group(2))}</h{level}>"
        elif line.startswith(("|", "- ", "> ")):
            while i < len(lines) and lines[i].startswith(line[:2] if line[0] != "|" else "|"):
                i += 1
            block = lines[start:i]
            if line.startswith("|"):
                head, *body = [row for row in block if not re.fullmatch(r"[|\-: ]+", row)]
                yield ("<table><thead><tr>" + "".join(f"<th>{c}</th>" for c in card_cells(head))
                       + "</tr></thead><tbody>" + "".join(
                           "<tr>" + "".join(f"<td>{c}</td>" for c in card_cells(row)) + "</tr>"
                           for row in body) + "</tbody></table>")
            elif line.startswith("- "):
                yield "<ul>" + "".join(f"<li>{card_inline(r[2:])}</li>" for r in block) + "</ul>"
            else:
                yield ("<blockquote>" + " ".join(card_inline(r[2:]) for r in block)
                       + "</blockquote>")
        elif line.strip():
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(
                    ("#", "|", "- ", "> ", "```")):
                i += 1
            yield "<p>" + " ".join(card_inline(r) for r in lines[start:i]) + "</p>"


def card_html(markdown: str) -> str:
    """The model card as one self-contained HTML page; no link, image or script can come from
    the card's text, whatever it holds."""
    title = next((line[2:] for line in markdown.splitlines() if line.startswith("# ")),
                 "Model card")
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title.replace('`', ''))}</title>\n"
            f"<style>{CARD_STYLE}</style>\n</head>\n<body>\n<main>\n"
            "<p><a href=\"?\">Back to the recording page</a></p>\n"
            + "\n".join(card_blocks(markdown.splitlines())) + "\n</main>\n</body>\n</html>\n")


def model_card(event: dict | None = None) -> dict:
    """The card as HTML for a browser (its Accept names text/html), else as Markdown text."""
    path = MODEL_DIR / MODEL_CARD
    if not path.is_file():
        raise RequestError(404, "no_model_card", "this model was exported without a model card")
    markdown = path.read_text(encoding="utf-8")
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    if "text/html" not in header((event or {}).get("headers"), "accept"):
        return {"statusCode": 200, "body": markdown,
                "headers": {"Content-Type": "text/plain; charset=utf-8", **headers}}
    page = card_html(markdown)
    csp = (f"default-src 'none'; style-src {csp_hashes(page, 'style')}; base-uri 'none'; "
           "form-action 'none'; frame-ancestors 'none'")
    return {"statusCode": 200, "body": page, "headers": {
        "Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": csp,
        "Referrer-Policy": "no-referrer", **headers}}


def handler(event, context=None):
    try:
        if not isinstance(event, dict):
            raise RequestError(400, "invalid_event", "the event must be a JSON object")
        if request_method(event) == "GET":
            return model_card(event) if wants_model_card(event) else recording_page()
        if "Records" in event:
            return s3_records(event["Records"])
        return respond(200, predict(request_audio(event)))
    except RequestError as err:
        return respond(err.status, {"error": err.code, "message": str(err)})
    except Exception:  # noqa: BLE001 - the client gets a clean 500, CloudWatch gets the trace
        log.exception("unhandled error")
        return respond(500, {"error": "internal_error",
                             "message": "the model failed on this input"})
