"""The Lambda handler, in-process (moto's Lambda invoke does not run handlers)."""
import base64
import importlib.util
import io
import json
import math
import os
import re
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import av
import boto3
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coughlab.audio import load_audio, quality_problem, resample, to_mono
from coughlab.config import QualityConfig
from coughlab.export import ServingModel
from coughlab.nets import load_model

from audio_fixtures import CONTAINERS
from audio_fixtures import encode as encode_recording
from function_url import function_url_event

HANDLER = Path(__file__).resolve().parents[1] / "lambda" / "handler.py"
LEAKS = re.compile(r"0x[0-9a-f]{6,}|object at|Traceback|<[A-Za-z_.]+ ")


def import_handler(model_dir: Path, monkeypatch):
    monkeypatch.setenv("MODEL_DIR", str(model_dir))
    spec = importlib.util.spec_from_file_location("lambda_handler", HANDLER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def handler(exported_model, monkeypatch):
    return import_handler(exported_model["lambda_dir"], monkeypatch)


@pytest.fixture
def model_dir_with(exported_model, tmp_path):
    """A copy of the exported model whose model.json is edited by `**changes` (None drops a key)."""
    def make(**changes):
        src = exported_model["lambda_dir"]
        meta = json.loads((src / "model.json").read_text())
        for key, value in changes.items():
            if value is None:
                meta.pop(key, None)
            else:
                meta[key] = value
        (tmp_path / "model.onnx").write_bytes((src / "model.onnx").read_bytes())
        (tmp_path / "model.json").write_text(json.dumps(meta))
        return tmp_path
    return make


def wav(seconds=2.0, sr=8000, channels=1, seed=0, amplitude=0.2, subtype="PCM_16"):
    wave = np.random.default_rng(seed).standard_normal((int(sr * seconds), channels)) * amplitude
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1, 1).astype(np.float32), sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def raw_wav_header(sample_rate: int, channels: int, data: bytes) -> bytes:
    """A PCM-16 WAV whose header fields are whatever the caller says, valid or not."""
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, (sample_rate * channels * 2) % 2**32,
                      channels * 2, 16)
    chunks = (b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
              + b"data" + struct.pack("<I", len(data)) + data)
    return b"RIFF" + struct.pack("<I", len(chunks)) + chunks


def post(audio: bytes, content_type: str = "audio/wav") -> dict:
    return {"body": base64.b64encode(audio).decode(), "isBase64Encoded": True,
            "headers": {"content-type": content_type}}


def strict_json(text: str):
    """json.loads, refusing the NaN/Infinity that Python's json accepts and browsers do not."""
    def refuse(constant):
        raise AssertionError(f"{constant} in a JSON answer: not JSON")
    return json.loads(text, parse_constant=refuse)


def body(response):
    assert response["headers"]["Content-Type"] == "application/json"
    return strict_json(response["body"])


def pipeline_p(exported_model, path: Path) -> float:
    """P(positive) as the pipeline computes it from a file: load_audio, mono, resample, model."""
    net, cfg = load_model(exported_model["model_pt"])
    wave, sr = load_audio(path)
    mono = resample(to_mono(wave), sr, cfg.sample_rate)
    with torch.inference_mode():
        return float(ServingModel(net, cfg)(torch.from_numpy(mono)[None, :])[0])


def test_binary_body_matches_the_training_pipeline(handler, exported_model, tmp_path):
    """8 kHz stereo in -> same probability as the pipeline's decode, resample and PyTorch model."""
    audio = wav(sr=8000, channels=2)
    (tmp_path / "clip.wav").write_bytes(audio)
    response = handler.handler(post(audio))
    assert response["statusCode"] == 200
    result = body(response)
    assert abs(result["p_positive"] - pipeline_p(exported_model, tmp_path / "clip.wav")) <= 1e-4
    assert result["label"] == ("positive" if result["p_positive"] >= result["threshold"]
                               else "negative")
    assert result["seconds"] == 2.0


def test_json_body_and_function_url_shape(handler):
    audio = base64.b64encode(wav()).decode()
    plain = handler.handler({"body": json.dumps({"audio": audio}),
                             "headers": {"content-type": "application/json"}})
    url_event = {"headers": {"Content-Type": "application/json"}, "isBase64Encoded": True,
                 "requestContext": {"http": {"method": "POST"}},
                 "body": base64.b64encode(json.dumps({"audio": audio}).encode()).decode()}
    via_url = handler.handler(url_event)
    assert plain["statusCode"] == via_url["statusCode"] == 200
    assert body(plain)["p_positive"] == body(via_url)["p_positive"]


@pytest.mark.parametrize("event,status,code", [
    ({"body": base64.b64encode(b"definitely not audio").decode(), "isBase64Encoded": True,
      "headers": {"content-type": "audio/wav"}}, 415, "unsupported_audio"),
    ({"body": "", "isBase64Encoded": True, "headers": {"content-type": "audio/wav"}},
     400, "empty_audio"),
    ({"body": "{not json", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
    ({"body": json.dumps({"sound": "x"}), "headers": {"content-type": "application/json"}},
     400, "missing_audio"),
    ({"body": json.dumps({"audio": "***"}), "headers": {"content-type": "application/json"}},
     400, "invalid_base64"),
    ({"body": "plain text", "headers": {"content-type": "audio/wav"}}, 415, "unsupported_body"),
    ({}, 400, "missing_body"),
    ("a string event", 400, "invalid_event"),
    (None, 400, "invalid_event"),
    ({"body": 123}, 400, "invalid_body"),
    ({"body": ["a"], "isBase64Encoded": True}, 400, "invalid_body"),
    ({"body": {"audio": "x"}}, 400, "invalid_body"),
    ({"body": "{}", "headers": ["Content-Type", "application/json"]}, 400, "invalid_headers"),
    ({"body": "{}", "headers": "application/json"}, 400, "invalid_headers"),
    ({"body": "{}", "headers": {1: "x", "content-type": 5}}, 415, "unsupported_content_type"),
    ({"body": "é", "isBase64Encoded": True, "headers": {"content-type": "audio/wav"}},
     400, "invalid_base64"),
    ({"body": base64.b64encode(b"\xff\xfe{").decode(), "isBase64Encoded": True,
      "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
    ({"body": "[" * 100_000, "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
    ({"Records": ["s3"]}, 400, "invalid_record"),
    ({"Records": [None, 1, []]}, 400, "invalid_record"),
    ({"Records": "s3"}, 400, "invalid_event"),
    ({"Records": []}, 400, "invalid_event"),
    ({"Records": {"s3": {}}}, 400, "invalid_event"),
    ({"Records": [{"s3": {"bucket": {"name": 1}, "object": {"key": "a"}}}]}, 400, "invalid_record"),
    ({"requestContext": "GET"}, 400, "missing_body"),
    ({"requestContext": {"http": ["GET"]}}, 400, "missing_body"),
    ({"requestContext": {"http": {"method": 1}}, "httpMethod": "GET"}, 400, "missing_body"),
])
def test_malformed_events_get_4xx_json_without_traceback(handler, event, status, code):
    response = handler.handler(event)
    assert response["statusCode"] == status
    payload = body(response)
    assert payload.get("error", (payload.get("results") or [{}])[0].get("error")) == code
    assert not LEAKS.search(response["body"]), response["body"]


@pytest.mark.parametrize("junk", [
    b"definitely not audio", bytes(range(256)) * 4,
    b"RIFF\x10\x00\x00\x00WAVEfmt ",  # a truncated wav header
    b"fLaC" + bytes(100),
    b"OggS" + bytes(200),
    b"\x1a\x45\xdf\xa3" + bytes(range(200)),  # matroska/webm magic, garbage after
    b"\x00\x00\x00\x18ftypmp42" + bytes(100),  # mp4 magic, no boxes
    b"ID3\x04\x00" + bytes(100),
    b"\xff\xf1" + bytes(100),  # ADTS sync word
])
def test_unreadable_audio_is_415_and_names_no_python_object(handler, junk):
    response = handler.handler(post(junk))
    assert response["statusCode"] == 415, response["body"]
    assert body(response)["error"] in ("unsupported_audio", "unsupported_sample_rate")
    assert not LEAKS.search(response["body"]), response["body"]


def test_too_large_and_too_long(handler, monkeypatch):
    monkeypatch.setattr(handler, "MAX_AUDIO_BYTES", 1000)
    big = handler.handler(post(wav()))
    assert big["statusCode"] == 413 and body(big)["error"] == "audio_too_large"
    monkeypatch.setattr(handler, "MAX_AUDIO_BYTES", 10**8)
    monkeypatch.setattr(handler, "MAX_AUDIO_SECONDS", 1.0)
    long = handler.handler(post(wav(seconds=2)))
    assert long["statusCode"] == 413 and body(long)["error"] == "audio_too_long"


# --- resource limits from the header, before decoding -------------------------------------

def flac(seconds, sr, channels):
    buf = io.BytesIO()
    sf.write(buf, np.zeros((int(seconds * sr), channels), np.float32), sr, format="FLAC")
    return buf.getvalue()


@pytest.fixture
def sample_reads(monkeypatch):
    """Counts the samples libsndfile decodes (sf.read and SoundFile.read/blocks all go through
    read)."""
    counted = []
    real = sf.SoundFile.read

    def read(self, frames=-1, *args, **kwargs):
        out = real(self, frames, *args, **kwargs)
        counted.append(len(out))
        return out

    monkeypatch.setattr(sf.SoundFile, "read", read)
    return counted


@pytest.mark.parametrize("audio,status,code", [
    (flac(200, 4000, 1), 413, "audio_too_long"),  # longer than MAX_AUDIO_SECONDS=120
    (flac(130, 8000, 8), 413, "audio_too_long"),
    (wav(0.5, 8000, channels=9), 415, "unsupported_channels"),
    (wav(0.5, 8000, channels=16), 415, "unsupported_channels"),
])
def test_duration_and_channels_are_refused_from_the_header_before_decoding(
        handler, sample_reads, audio, status, code):
    response = handler.handler(post(audio))
    assert (response["statusCode"], body(response)["error"]) == (status, code)
    assert sum(sample_reads) == 0  # not one sample decoded


@pytest.mark.parametrize("rate", [1, 3999, 192001, 384000, 2**31 - 1, 2**32 - 1])
def test_sample_rates_outside_4_to_192_khz_are_415_before_decoding(handler, sample_reads, rate):
    response = handler.handler(post(raw_wav_header(rate, 1, bytes(32000))))
    assert response["statusCode"] == 415, response["body"]
    assert body(response)["error"] in ("unsupported_sample_rate", "unsupported_audio")
    assert sum(sample_reads) == 0


@pytest.mark.parametrize("rate", [4000, 8001, 11025, 44101, 96001, 191999, 192000])
def test_any_accepted_rate_resamples_in_bounded_memory(handler, rate):
    """A 1 s clip at an awkward rate costs what a 1 s clip costs (the old sinc port: GBs)."""
    audio = wav(seconds=1.0, sr=rate)
    handler.load_model()
    tracemalloc.start()
    try:
        response = handler.handler(post(audio))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response["statusCode"] == 200, response["body"]
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB for a 1 s clip"


def webm_without_duration(seconds: float, sr: int = 48000) -> bytes:
    """webm/opus as MediaRecorder streams it: no duration in the header."""
    class Unseekable(io.RawIOBase):
        def __init__(self):
            self.data = bytearray()

        def writable(self):
            return True

        def write(self, b):
            self.data += bytes(b)
            return len(b)

    sink = Unseekable()
    encode(sink, "webm", "libopus", sr, tone(seconds, sr))
    return bytes(sink.data)


def test_headerless_duration_stops_decoding_once_over_the_limit(handler, monkeypatch):
    audio = webm_without_duration(6.0)
    with av.open(io.BytesIO(audio)) as container:
        assert handler.header_frames(container, container.streams.audio[0], 48000) is None
    monkeypatch.setattr(handler, "MAX_AUDIO_SECONDS", 1.0)
    decoded = []
    real = handler.mono_blocks

    def counting(blocks, sr):
        def each():
            for block in blocks:
                decoded.append(block.shape[-1])
                yield block
        return real(each(), sr)

    monkeypatch.setattr(handler, "mono_blocks", counting)
    response = handler.handler(post(audio))
    assert (response["statusCode"], body(response)["error"]) == (413, "audio_too_long")
    assert 48000 < sum(decoded) <= 48000 + max(decoded)  # stopped at the first frame past 1 s


# --- formats browsers and phones record ---------------------------------------------------

def tone(seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    noise = np.random.default_rng(0).standard_normal(t.size) * 0.02
    return (np.sin(2 * np.pi * 440 * t) * np.exp(-2 * t) * 0.5 + noise).astype(np.float32)


def encode(sink, container_format: str, codec: str, sr: int, wave: np.ndarray, layout="mono"):
    """Encode a mono float wave with PyAV (FFmpeg), as a browser or phone would record it."""
    with av.open(sink, mode="w", format=container_format) as out:
        stream = out.add_stream(codec, rate=sr, layout=layout)
        frame_size = stream.codec_context.frame_size or 1024
        fmt = stream.codec_context.format.name
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=sr)
        planes = np.tile(wave, (len(stream.layout.channels), 1))
        for start in range(0, wave.size, frame_size):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(planes[:, start:start + frame_size]), format="fltp",
                layout=layout)
            frame.sample_rate = sr
            for converted in resampler.resample(frame):
                out.mux(stream.encode(converted))
        out.mux(stream.encode(None))


@pytest.mark.parametrize("name,container_format,codec,sr,layout", [
    ("chrome.webm", "webm", "libopus", 48000, "mono"),
    ("firefox.ogg", "ogg", "libopus", 48000, "stereo"),
    ("safari.mp4", "mp4", "aac", 44100, "mono"),
    ("phone.m4a", "ipod", "aac", 48000, "stereo"),
    ("recorder.wav", "wav", "pcm_s16le", 44100, "mono"),
    ("recorder.flac", "flac", "flac", 22050, "stereo"),
    ("upload.mp3", "mp3", "libmp3lame", 44100, "mono"),
])
def test_formats_browsers_and_phones_record(handler, exported_model, tmp_path, name,
                                            container_format, codec, sr, layout):
    """Each file made by FFmpeg: 200, and the probability the pipeline gets from that file."""
    path = tmp_path / name
    encode(str(path), container_format, codec, sr, tone(2.5, sr), layout)
    response = handler.handler(post(path.read_bytes()))
    assert response["statusCode"] == 200, response["body"]
    result = body(response)
    assert abs(result["seconds"] - 2.5) < 0.1
    assert abs(result["p_positive"] - pipeline_p(exported_model, path)) <= 1e-4


# --- what training would have quarantined -------------------------------------------------

def float_wav(wave: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


QUALITY_CASES = {
    "digital silence, 2 s": (np.zeros(32000), 16000),
    "10 ms": (tone(0.01, 16000), 16000),
    "31 ms at 48 kHz": (tone(0.031, 48000), 48000),
    "0.29 s at 8 kHz": (tone(0.29, 8000), 8000),
    "-70 dBFS hum": (np.full(8000, 10 ** (-70 / 20)), 8000),
    "-59 dBFS hum": (np.full(8000, 10 ** (-59 / 20)), 8000),
    "no samples": (np.zeros(0), 16000),
    "NaN": (np.r_[tone(1.0, 8000)[:-1], np.nan], 8000),
    "ordinary cough": (tone(1.0, 44100), 44100),
}


@pytest.mark.parametrize("case", QUALITY_CASES)
def test_the_lambda_refuses_what_combine_quarantines(handler, exported_model, case):
    """422 with exactly the reason coughlab.audio.quality_problem gives, at the file's own rate."""
    wave, sr = QUALITY_CASES[case]
    meta = json.loads((exported_model["lambda_dir"] / "model.json").read_text())
    expected = quality_problem(wave.astype(np.float32), sr,
                               QualityConfig(**meta["quality"], max_quarantine_fraction=0.0))
    response = handler.handler(post(float_wav(wave, sr)))
    if expected is None:
        assert response["statusCode"] == 200, response["body"]
    else:
        assert response["statusCode"] == 422, response["body"]
        assert body(response)["error"] == expected
        assert body(response)["message"]


def test_quality_values_come_from_model_json(model_dir_with, monkeypatch):
    strict = import_handler(model_dir_with(quality={"min_seconds": 3.0, "silence_dbfs": -60.0}),
                            monkeypatch)
    response = strict.handler(post(wav(seconds=2.0)))
    assert (response["statusCode"], body(response)["error"]) == (422, "too_short")
    assert "3 s" in body(response)["message"]


# --- resampling only what the graph reads --------------------------------------------------

def centre_window(wave: np.ndarray, length: int) -> np.ndarray:
    """The graph's one-window crop: the centred `length` samples, zero-padded when shorter."""
    padded = np.pad(wave, (length, length))
    start = length + (wave.size - length) // 2
    return padded[start : start + length]


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 16000, 4000, 11025, 96000, 192000,
                                  8001, 44101, 150025])
@pytest.mark.parametrize("seconds", [0.5, 2.99, 3.0, 3.01, 7.3, 61.7])
def test_graph_input_equals_the_centre_of_the_fully_resampled_clip(handler, rate, seconds):
    """What the graph reads of graph_input() == what it reads of resample(whole clip)."""
    rng = np.random.default_rng(rate + int(seconds * 100))
    wave = np.clip(rng.standard_normal(int(rate * seconds)) * 0.3, -1, 1).astype(np.float32)
    expected = centre_window(resample(wave, rate, 16000), 48000)
    got = handler.graph_input(wave, rate, 16000, 3.0)
    n_out = handler.resampled_length(wave.size, rate, 16000)
    assert got.size == (n_out if rate in (8001, 44101, 150025) else min(48000, n_out))
    assert np.abs(centre_window(got, 48000) - expected).max() <= 1e-6


def test_graph_input_without_input_seconds_is_the_whole_clip(handler):
    wave = np.random.default_rng(0).standard_normal(44100 * 5).astype(np.float32) * 0.2
    assert np.array_equal(handler.graph_input(wave, 44100, 16000, None),
                          soxr.resample(wave, 44100, 16000, quality="HQ"))


@pytest.mark.parametrize("rate", [4000, 8000, 8001, 11025, 22050, 44100, 44101, 48000, 192000])
def test_resampled_length_is_soxr_output_length(handler, rate):
    for n in np.random.default_rng(rate).integers(1, 3 * rate, 25):
        assert handler.resampled_length(int(n), rate, 16000) == soxr.resample(
            np.zeros(n, np.float32), rate, 16000, quality="HQ").size


def test_resampled_only_the_centre_of_a_long_clip(handler, monkeypatch):
    sizes = []
    real = handler.soxr.resample
    monkeypatch.setattr(handler.soxr, "resample",
                        lambda x, *a, **k: sizes.append(x.size) or real(x, *a, **k))
    response = handler.handler(post(wav(seconds=40, sr=48000)))  # 3.8 MB, under the body limit
    assert response["statusCode"] == 200
    # the graph's input_seconds (audio.max_seconds, 30 s) + filter margin + grid, not all 60 s
    assert sizes and max(sizes) < 48000 * 31.5


# --- model.json fields in the answer, model loading -----------------------------------------

def test_result_names_the_git_commit_of_the_model(model_dir_with, monkeypatch):
    tagged = import_handler(model_dir_with(git_commit="0123abc"), monkeypatch)
    assert body(tagged.handler(post(wav())))["git_commit"] == "0123abc"
    untagged = import_handler(model_dir_with(git_commit=None), monkeypatch)
    assert body(untagged.handler(post(wav())))["git_commit"] is None


def test_get_model_card_as_plain_text_in_both_event_shapes(handler, exported_model, tmp_path,
                                                            monkeypatch):
    function_url = handler.handler({"requestContext": {"http": {"method": "GET"}},
                                    "rawPath": "/", "rawQueryString": "model_card"})
    api_gateway = handler.handler({"httpMethod": "GET", "path": "/",
                                   "queryStringParameters": {"model_card": ""}})
    assert function_url == api_gateway
    assert function_url["statusCode"] == 200
    assert function_url["headers"]["Content-Type"] == "text/plain; charset=utf-8"
    assert function_url["body"] == (exported_model["lambda_dir"] / "model_card.md").read_text()
    monkeypatch.setattr(handler, "MODEL_DIR", tmp_path)
    missing = handler.handler({"httpMethod": "GET", "queryStringParameters": {"model_card": ""}})
    assert missing["statusCode"] == 404 and json.loads(missing["body"])["error"] == "no_model_card"


@pytest.mark.parametrize("event", [
    {"rawQueryString": "model_card&x=1", "queryStringParameters": {"model_card": "", "x": "1"}},
    {"rawQueryString": "x=1&model_card", "queryStringParameters": {"model_card": "", "x": "1"}},
    {"rawQueryString": "model_card=1", "queryStringParameters": {"model_card": "1"}},
    {"rawQueryString": "", "queryStringParameters": {"model_card": ""}},
    {"queryStringParameters": {"model_card": "", "x": "1"}},
    {"queryStringParameters": {"model_card": "yes"}},
])
def test_only_the_exact_model_card_query_gets_the_card(handler, event):
    """Both event shapes agree: `?model_card` is the card, any other query the page (a
    Function URL gave the card for `?model_card&x=1`, the local stand-in the page)."""
    response = handler.handler({"requestContext": {"http": {"method": "GET"}}, **event})
    assert response["headers"]["Content-Type"] == "text/html; charset=utf-8"


def test_model_loads_once_per_container(handler, monkeypatch):
    import onnxruntime

    created = []
    real = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession",
                        lambda *a, **k: created.append(1) or real(*a, **k))
    event = post(wav())
    assert [handler.handler(event)["statusCode"] for _ in range(3)] == [200] * 3
    assert len(created) == 1


# --- S3 events ------------------------------------------------------------------------------

def s3_record(bucket, key):
    return {"eventSource": "aws:s3", "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}


def test_s3_object_created_event(handler, aws_env):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="coughs")
    s3.put_object(Bucket="coughs", Key="in/my cough.wav", Body=wav())
    s3.put_object(Bucket="coughs", Key="in/broken.wav", Body=b"junk")
    records = [s3_record("coughs", key) for key in ("in/my+cough.wav", "in/broken.wav")]
    response = handler.handler({"Records": records})
    assert response["statusCode"] == 200
    results = body(response)["results"]
    assert results[0]["key"] == "in/my cough.wav" and 0 <= results[0]["p_positive"] <= 1
    assert results[1]["error"] == "unsupported_audio"


def test_every_s3_record_fails_alone(handler, aws_env):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="coughs")
    s3.put_object(Bucket="coughs", Key="good.wav", Body=wav())
    records = [{"s3": {"bucket": {"name": "coughs"}, "object": {}}},  # no key
               {"s3": {"object": {"key": "good.wav"}}},  # no bucket
               "s3", None, {"s3": "x"}, {"eventSource": "aws:sqs"},
               s3_record("coughs", "missing.wav"), s3_record("no-such-bucket", "a.wav"),
               s3_record("coughs", "good.wav")]
    response = handler.handler({"Records": records})
    assert response["statusCode"] == 200
    results = body(response)["results"]
    assert len(results) == len(records)
    assert [r.get("error") for r in results[:-1]] == ["invalid_record"] * 6 + ["s3_error"] * 2
    assert 0 <= results[-1]["p_positive"] <= 1
    assert not LEAKS.search(response["body"])


def test_s3_objects_over_the_limit_are_refused_by_size_before_reading(handler, aws_env,
                                                                      monkeypatch):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="coughs")
    s3.put_object(Bucket="coughs", Key="huge.wav", Body=wav(seconds=2))
    s3.put_object(Bucket="coughs", Key="small.wav", Body=wav(seconds=0.5))
    monkeypatch.setattr(handler, "MAX_AUDIO_BYTES", 20_000)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", boto3.session.Session())
    downloads = []
    boto3.DEFAULT_SESSION.events.register(
        "provide-client-params.s3.GetObject", lambda params, **_: downloads.append(params["Key"]))
    response = handler.handler({"Records": [s3_record("coughs", "huge.wav"),
                                            s3_record("coughs", "small.wav")]})
    results = body(response)["results"]
    assert results[0]["error"] == "audio_too_large" and results[0]["status"] == 413
    assert "p_positive" in results[1]
    assert downloads == ["small.wav"]  # the big one was never fetched


# --- every channel layout in every container: never a crash -----------------------------------

CHILD = Path(__file__).resolve().parent / "handler_child.py"


@pytest.mark.parametrize("container", sorted(CONTAINERS))
def test_every_channel_count_in_every_container_scores_without_crashing(exported_model, container):
    """1-8 channels (mp3: 1-2), each posted twice, in a child process: a decoder crash
    (PyAV 18.1's to_ndarray on 8 planar channels was a SIGSEGV) is this test failing, not the
    test runner dying. Safe path: frames are resampled to one packed plane before numpy sees
    them, so every count the header check lets through is scored."""
    env = {**os.environ, "MODEL_DIR": str(exported_model["lambda_dir"]), "ORT_THREADS": "1",
           "PYTHONPATH": str(CHILD.parent)}
    proc = subprocess.run([sys.executable, str(CHILD), container], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["recording"] for r in results] == [
        f"{container}/{n}ch" for n in range(1, CONTAINERS[container][2] + 1)]
    for result in results:
        assert result["status"] == 200, result
        assert result["same_body"], result
        assert abs(strict_json(result["body"])["seconds"] - 1.0) < 0.1, result


@pytest.mark.parametrize("channels", [2, 7])  # 8 only in a child process: it crashed in-process
def test_multichannel_pcm_decodes_to_the_same_samples_by_either_decoder(handler, channels):
    """The packed path loses nothing: PCM read by FFmpeg (Matroska) gives exactly the mono mix
    libsndfile gives of the same PCM in a WAV."""
    via_pyav, sr = handler.decode(encode_recording("mkv-pcm", channels))
    via_soundfile, sr_wav = handler.decode(encode_recording("wav", channels))
    assert sr == sr_wav == 48000 and via_pyav.shape == via_soundfile.shape == (48000,)
    assert np.array_equal(via_pyav, via_soundfile)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "AIFF"])
@pytest.mark.parametrize("channels", [1, 2])
def test_16_bit_pcm_decodes_to_the_pipelines_floats(handler, tmp_path, fmt, channels):
    """The handler's integer read of 16-bit PCM gives, bit for bit, the mono floats combine
    decodes from the same file (every int16 value, blocks of DECODE_BLOCK_FRAMES and a rest)."""
    every_value = np.arange(-32768, 32768, dtype=np.int16)
    samples = np.stack([np.random.default_rng(c).permutation(every_value)
                        for c in range(channels)], axis=1)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, samples, 16000, format=fmt, subtype="PCM_16")
    wave, sr = handler.decode(path.read_bytes())
    pipeline, pipeline_sr = load_audio(path)
    assert sr == pipeline_sr == 16000 and wave.dtype == np.float32
    assert np.array_equal(wave, to_mono(pipeline))


# --- only decoded samples are scored; same bytes, same answer; strict JSON --------------------

def truncated_mp3() -> bytes:
    whole = encode_recording("mp3", 1, seconds=3.0)
    return whole[: len(whole) // 2]


def test_truncated_audio_is_scored_from_decoded_samples_only(handler):
    """The header claims 3 s; what decodes is what is scored and reported, the same every time."""
    audio = truncated_mp3()
    decoded, sr = sf.read(io.BytesIO(audio), dtype="float32")  # sf.read trims to what decoded
    answers = [handler.handler(post(audio)) for _ in range(4)]
    assert len({a["body"] for a in answers}) == 1, [a["body"] for a in answers]
    response = answers[0]
    assert response["statusCode"] in (200, 422), response["body"]
    if response["statusCode"] == 200:
        assert body(response)["seconds"] == round(len(decoded) / sr, 3)
        assert math.isfinite(body(response)["p_positive"])


def unknown_codec(container: str, codec_field: bytes) -> bytes:
    """A recording whose header names a codec no decoder knows (one byte of it damaged)."""
    data = encode_recording(container, 2, seconds=0.5)
    assert data.count(codec_field) == 1
    return data.replace(codec_field, codec_field[:-1] + b"Q")


def wav_with_format_tag(tag: int) -> bytes:
    data = bytearray(encode_recording("wav", 2, seconds=0.5))
    data[20:22] = struct.pack("<H", tag)  # WAVEFORMATEX.wFormatTag
    return bytes(data)


@pytest.mark.parametrize("audio", [
    pytest.param(lambda: unknown_codec("webm-opus", b"A_OPUS"), id="webm"),
    pytest.param(lambda: unknown_codec("mkv-pcm", b"A_PCM/INT/LIT"), id="mkv"),
    pytest.param(lambda: wav_with_format_tag(0x7777), id="wav")])
def test_a_codec_no_decoder_knows_is_415_not_a_500(handler, audio):
    """FFmpeg demuxes such a stream but opens no codec for it (PyAV's codec_context is None):
    the file is unreadable, which is the client's 415, not the handler's crash."""
    response = handler.handler(post(audio(), "audio/webm"))
    assert (response["statusCode"], body(response)["error"]) == (415, "unsupported_audio")
    assert "accepted formats" in body(response)["message"]


def damaged_mid_file(container: str) -> bytes:
    """Three seconds with 200 bytes in the middle garbled (a page or frame lost in transit)."""
    data = bytearray(encode_recording(container, 2, seconds=3.0))
    for pos in range(len(data) // 2, len(data) // 2 + 200):
        data[pos] ^= 0x5A
    return bytes(data)


@pytest.mark.parametrize("container", ["flac", "mp3", "wav"])
def test_a_file_damaged_mid_way_scores_only_samples_that_decode(handler, container):
    """The same samples on every call, never more than the header holds, and exactly the
    pipeline decoder's (one sf.read) where it reads the file; flac's lost sync makes
    libsndfile refuse it, and PyAV decodes it."""
    audio = damaged_mid_file(container)
    first, sr = handler.decode(audio)
    assert np.array_equal(first, handler.decode(audio)[0])
    assert 0 < first.size <= 3 * sr
    try:
        reference, _ = sf.read(io.BytesIO(audio), dtype="float32", always_2d=True)
    except sf.LibsndfileError:
        assert container == "flac"
        return
    assert np.array_equal(first, reference.mean(axis=1, dtype=np.float32))


@pytest.mark.parametrize("container", ["ogg-vorbis", "ogg-opus"])
def test_a_damaged_ogg_page_is_422_not_a_guess(handler, monkeypatch, container):
    """Past a page that fails its checksum, libsndfile's vorbis reader gives samples that
    depend on how much is read at a time (on this file 65,536-frame reads differ from one
    sf.read from 0.6 s before the damage on): no answer from them would be the file's, so
    it is refused."""
    audio = damaged_mid_file(container)
    for frames in (4096, 65536):
        monkeypatch.setattr(handler, "DECODE_BLOCK_FRAMES", frames)
        response = handler.handler(post(audio, "audio/ogg"))
        assert (response["statusCode"], body(response)["error"]) == (422, "damaged_audio")
        assert "checksum" in body(response)["message"]


@pytest.mark.parametrize("ending", ["cut", "tagged"])
def test_an_ogg_file_that_ends_oddly_scores_what_it_holds(handler, ending):
    """An upload cut short ends in part of a page, and some taggers append an ID3v1 tag
    after the last page: neither is damage, and the pages before it decode."""
    whole = encode_recording("ogg-vorbis", 2, seconds=3.0)
    audio = whole[: len(whole) * 2 // 3] if ending == "cut" else whole + b"TAG" + bytes(125)
    decoded, sr = sf.read(io.BytesIO(audio), dtype="float32")
    response = handler.handler(post(audio, "audio/ogg"))
    assert response["statusCode"] == 200, response["body"]
    assert body(response)["seconds"] == round(len(decoded) / sr, 3)
    assert (body(response)["seconds"] < 2.5) == (ending == "cut")


def test_truncated_mp3_reports_the_seconds_that_decode(handler):
    audio = truncated_mp3()
    with sf.SoundFile(io.BytesIO(audio)) as f:
        claimed = f.frames / f.samplerate
    result = body(handler.handler(post(audio)))
    assert claimed > 2.9 and result["seconds"] < 2.0  # about half of the 3 s


def test_a_non_finite_score_is_422_and_the_answer_strict_json(handler, monkeypatch):
    session, meta = handler.load_model()

    class NanSession:
        def run(self, *args, **kwargs):
            return [np.array([np.nan], np.float32)]

    monkeypatch.setattr(handler, "load_model", lambda: (NanSession(), meta))
    response = handler.handler(post(wav()))
    assert (response["statusCode"], body(response)["error"]) == (422, "non_finite_score")


def test_a_nan_that_reaches_the_answer_is_a_clean_500_not_invalid_json(handler, monkeypatch):
    monkeypatch.setattr(handler, "predict", lambda audio: {"p_positive": float("nan")})
    response = handler.handler(post(wav()))
    assert (response["statusCode"], body(response)["error"]) == (500, "internal_error")


# --- only what a browser cannot send cross-site without a preflight ---------------------------

@pytest.mark.parametrize("content_type", [
    None, "", "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "image/png", "application/jsonp"])
def test_content_types_a_page_elsewhere_can_send_without_preflight_are_415(handler, content_type):
    audio = base64.b64encode(wav()).decode()
    for event in ({"body": audio, "isBase64Encoded": True},
                  {"body": json.dumps({"audio": audio})}):
        if content_type is not None:
            event["headers"] = {"Content-Type": content_type}
        response = handler.handler(event)
        assert ((response["statusCode"], body(response)["error"])
                == (415, "unsupported_content_type"))
        assert "audio/webm" in body(response)["message"]


@pytest.mark.parametrize("content_type", [
    "audio/wav", "audio/webm;codecs=opus", "Audio/Ogg", "video/webm", "video/mp4",
    "application/octet-stream", "application/json"])
def test_audio_content_types_and_json_are_scored(handler, content_type):
    audio = wav()
    event = (post(audio, content_type) if content_type != "application/json" else
             {"body": json.dumps({"audio": base64.b64encode(audio).decode()}),
              "headers": {"content-type": content_type}})
    assert handler.handler(event)["statusCode"] == 200


def url_post(audio: bytes, host: str = "abc.lambda-url.eu-west-1.on.aws", **headers) -> dict:
    """A Function URL event (payload 2.0) for a POST of `audio` as audio/wav."""
    return function_url_event("POST", "/", {"content-type": "audio/wav", "host": host, **headers},
                              audio, host, "203.0.113.7")


@pytest.mark.parametrize("origin,status", [
    ("https://abc.lambda-url.eu-west-1.on.aws", 200),
    ("https://ABC.lambda-url.eu-west-1.on.aws", 200),
    ("https://evil.example", 403),
    ("https://abc.lambda-url.eu-west-1.on.aws.evil.example", 403),
    ("null", 403),  # sandboxed iframes, file:// pages
    (None, 200),  # curl, SDKs: no Origin at all
])
def test_origin_must_be_the_urls_own(handler, origin, status):
    extra = {} if origin is None else {"origin": origin}
    response = handler.handler(url_post(wav(), **extra))
    assert response["statusCode"] == status, response["body"]
    if status == 403:
        assert body(response)["error"] == "cross_origin"


def test_origin_is_compared_with_the_host_header_without_a_domain_name(handler):
    event = {**post(wav()), "headers": {"content-type": "audio/wav", "host": "127.0.0.1:8080",
                                        "origin": "http://127.0.0.1:8080"}}
    assert handler.handler(event)["statusCode"] == 200
    event["headers"]["origin"] = "http://127.0.0.1:9090"
    assert handler.handler(event)["statusCode"] == 403
    del event["headers"]["host"]
    assert handler.handler(event)["statusCode"] == 403  # an Origin, and nothing to match it to


def test_allowed_origins_admit_a_front_end_by_name(exported_model, monkeypatch):
    monkeypatch.setenv("ALLOWED_ORIGINS", "https://coughs.example.org, https://other.example")
    fronted = import_handler(exported_model["lambda_dir"], monkeypatch)
    assert (fronted.handler(url_post(wav(), origin="https://coughs.example.org"))["statusCode"]
            == 200)
    assert fronted.handler(url_post(wav(), origin="https://evil.example"))["statusCode"] == 403


@pytest.mark.parametrize("origin", [
    "https://[::1", "https://evil]", "https://[", "http://]:80", "https://[::1]x",
    "https://évil.example", "https://ex\u2100ample", "https://a\uff03b", "https://\x00",
    "https://[fe80::1%25eth0", "//", "https://example:port", "\u212a://x"])
def test_a_malformed_origin_is_403_not_a_500(handler, origin):
    """urlsplit raises ValueError on an unclosed IPv6 bracket and on a host that NFKC
    normalisation changes: none of it names this URL, so it is a page elsewhere."""
    response = handler.handler(url_post(wav(), origin=origin))
    assert (response["statusCode"], body(response)["error"]) == (403, "cross_origin")


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(origin=st.one_of(
    st.text(max_size=40),
    st.builds("{}://{}{}".format, st.sampled_from(["https", "http", "", "HTTPS", "null"]),
              st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("[]:@%/?#"),
                      max_size=30),
              st.sampled_from(["", ":443", ":", "]", "[", "/path"]))))
def test_any_origin_is_403_or_passes_on_never_a_500(handler, origin):
    """What is not the URL's own origin is a 403 in JSON; the URL's own reaches the content
    checks (here 415: the body is no audio)."""
    event = url_post(b"not audio", origin=origin)
    response = handler.handler(event)
    assert response["statusCode"] in (403, 415), (origin, response["body"])
    if response["statusCode"] == 403:
        assert body(response)["error"] == "cross_origin"
    else:  # only no origin at all, or one naming this URL's host, gets past
        assert origin == "" or event["requestContext"]["domainName"] in origin.lower(), origin


# --- the body limit a Function URL allows ------------------------------------------------------

def test_the_largest_accepted_file_fits_a_function_url_request(handler):
    """Lambda's 6 MB request limit applies to the event: base64 body (4/3) and the rest."""
    limit = handler.MAX_AUDIO_BYTES
    event = url_post(bytes(limit), **{"user-agent": "Mozilla/5.0 " + "x" * 1000,
                                      "origin": "https://abc.lambda-url.eu-west-1.on.aws"})
    assert len(json.dumps(event).encode()) <= handler.FUNCTION_URL_PAYLOAD_BYTES
    assert len(base64.b64encode(bytes(limit + 1))) > 3 * 2**20  # not a needlessly low limit


def test_one_byte_over_the_limit_is_413_saying_the_limit(handler):
    limit = handler.MAX_AUDIO_BYTES
    response = handler.handler(post(bytes(limit + 1)))
    assert (response["statusCode"], body(response)["error"]) == (413, "audio_too_large")
    assert f"{limit} bytes" in body(response)["message"]
    assert "6 MB" in body(response)["message"]
