"""The Lambda handler, in-process (moto's Lambda invoke does not run handlers)."""
import base64
import importlib.util
import io
import json
from pathlib import Path

import boto3
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from coughlab.export import ServingModel
from coughlab.model import load_model

HANDLER = Path(__file__).resolve().parents[1] / "lambda" / "handler.py"


@pytest.fixture
def handler(exported_model, monkeypatch):
    monkeypatch.setenv("MODEL_DIR", str(exported_model["lambda_dir"]))
    spec = importlib.util.spec_from_file_location("lambda_handler", HANDLER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wav(seconds=2.0, sr=8000, channels=1, seed=0):
    wave = (np.random.default_rng(seed).standard_normal((int(sr * seconds), channels)) * 0.2)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def body(response):
    assert response["headers"]["Content-Type"] == "application/json"
    return json.loads(response["body"])


def test_binary_body_matches_the_training_pipeline(handler, exported_model):
    """8 kHz stereo in -> same probability as combine's resampling + the PyTorch model."""
    audio = wav(sr=8000, channels=2)
    response = handler.handler({"body": base64.b64encode(audio).decode(), "isBase64Encoded": True})
    assert response["statusCode"] == 200
    result = body(response)
    data, _ = sf.read(io.BytesIO(audio), dtype="float32")
    wave = torchaudio.functional.resample(torch.from_numpy(data.mean(axis=1)), 8000, 16000)
    net, cfg = load_model(exported_model["model_pt"])
    with torch.inference_mode():
        expected = float(ServingModel(net, cfg)(wave[None, :])[0])
    assert abs(result["p_positive"] - expected) <= 1e-4
    assert result["label"] == ("positive" if result["p_positive"] >= result["threshold"] else "negative")
    assert result["seconds"] == 2.0


def test_json_body_and_function_url_shape(handler):
    audio = base64.b64encode(wav()).decode()
    plain = handler.handler({"body": json.dumps({"audio": audio})})
    url_event = {"headers": {"Content-Type": "application/json"}, "isBase64Encoded": True,
                 "requestContext": {"http": {"method": "POST"}},
                 "body": base64.b64encode(json.dumps({"audio": audio}).encode()).decode()}
    via_url = handler.handler(url_event)
    assert plain["statusCode"] == via_url["statusCode"] == 200
    assert body(plain)["p_positive"] == body(via_url)["p_positive"]


@pytest.mark.parametrize("event,status,code", [
    ({"body": base64.b64encode(b"definitely not audio").decode(), "isBase64Encoded": True}, 415, "unsupported_audio"),
    ({"body": "", "isBase64Encoded": True}, 400, "empty_audio"),
    ({"body": "{not json"}, 400, "invalid_json"),
    ({"body": json.dumps({"sound": "x"})}, 400, "missing_audio"),
    ({"body": json.dumps({"audio": "***"})}, 400, "invalid_base64"),
    ({"body": "plain text"}, 415, "unsupported_body"),
    ({}, 400, "missing_body"),
    ("a string event", 400, "invalid_event"),
])
def test_bad_requests_get_4xx_json_without_traceback(handler, event, status, code):
    response = handler.handler(event)
    assert response["statusCode"] == status
    assert body(response)["error"] == code
    assert "Traceback" not in response["body"]


def test_too_large_and_too_long(handler, monkeypatch):
    monkeypatch.setattr(handler, "MAX_AUDIO_BYTES", 1000)
    big = handler.handler({"body": base64.b64encode(wav()).decode(), "isBase64Encoded": True})
    assert big["statusCode"] == 413 and body(big)["error"] == "audio_too_large"
    monkeypatch.setattr(handler, "MAX_AUDIO_BYTES", 10**8)
    monkeypatch.setattr(handler, "MAX_AUDIO_SECONDS", 1.0)
    long = handler.handler({"body": base64.b64encode(wav(seconds=2)).decode(), "isBase64Encoded": True})
    assert long["statusCode"] == 413 and body(long)["error"] == "audio_too_long"


def test_model_loads_once_per_container(handler, monkeypatch):
    import onnxruntime

    created = []
    real = onnxruntime.InferenceSession
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *a, **k: created.append(1) or real(*a, **k))
    event = {"body": base64.b64encode(wav()).decode(), "isBase64Encoded": True}
    assert [handler.handler(event)["statusCode"] for _ in range(3)] == [200] * 3
    assert len(created) == 1


def test_s3_object_created_event(handler, aws_env):
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="coughs")
    s3.put_object(Bucket="coughs", Key="in/my cough.wav", Body=wav())
    s3.put_object(Bucket="coughs", Key="in/broken.wav", Body=b"junk")
    records = [{"eventSource": "aws:s3", "s3": {"bucket": {"name": "coughs"}, "object": {"key": key}}}
               for key in ("in/my+cough.wav", "in/broken.wav")]
    results = handler.handler({"Records": records})["results"]
    assert results[0]["key"] == "in/my cough.wav" and 0 <= results[0]["p_positive"] <= 1
    assert results[1]["error"] == "unsupported_audio"


@pytest.mark.parametrize("orig,new", [(8000, 16000), (48000, 16000), (44100, 16000), (16000, 8000)])
def test_numpy_resampler_matches_torchaudio(handler, orig, new):
    wave = np.random.default_rng(orig).standard_normal(orig + 17).astype(np.float32)
    expected = torchaudio.functional.resample(torch.from_numpy(wave), orig, new).numpy()
    got = handler.sinc_resample(wave, orig, new)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-4
