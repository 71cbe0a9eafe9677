import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from coughlab.export import ServingModel, onnx_predict, onnx_session
from coughlab.model import load_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("batch,samples", [(1, 1), (1, 800), (2, 48000), (3, 48001), (1, 160000)])
def test_onnx_matches_pytorch(exported_model, batch, samples):
    """The ONNX graph (featurizer inside) gives PyTorch's probabilities at any length."""
    net, audio = load_model(exported_model["model_pt"])
    wave = (np.random.default_rng(samples).standard_normal((batch, samples)) * 0.1).astype(np.float32)
    with torch.inference_mode():
        expected = ServingModel(net, audio)(torch.from_numpy(wave)).numpy()
    got = onnx_predict(onnx_session(exported_model["lambda_dir"] / "model.onnx"), wave)
    assert got.shape == (batch,)
    assert np.abs(got - expected).max() <= 1e-4


def test_model_json_records_parity_threshold_rate_and_rules(exported_model):
    meta = json.loads((exported_model["lambda_dir"] / "model.json").read_text())
    assert meta["sample_rate"] == 16000 and meta["threshold"] == 0.5
    assert meta["parity"]["clips"] == 3
    assert meta["parity"]["max_abs_diff"] <= meta["parity"]["tolerance"] == 1e-4
    assert meta["input_seconds"] == 3.0
    assert meta["quality"] == {"min_seconds": 0.3, "silence_dbfs": -60.0}
    assert len(meta["version"]) == 12


def test_handler_hears_what_the_pipeline_heard_from_the_original_files(exported_model):
    """mp3 8 kHz stereo, mp3 48 kHz mono, wav 44.1 kHz: lambda/handler.py on the original bytes
    gives the pipeline's P(positive) (fetch -> combine -> featurize -> network) within 1e-4."""
    from coughlab.stages.export_lambda import lambda_handler, pipeline_scores

    net, _ = load_model(exported_model["model_pt"])
    originals = exported_model["originals"]
    expected = pipeline_scores(net, exported_model["features"], list(originals))
    assert set(expected) == set(originals)
    with lambda_handler(ROOT / "lambda" / "handler.py", exported_model["lambda_dir"]) as handler:
        for path, original in originals.items():
            got = handler.predict(original.read_bytes())["p_positive"]
            assert abs(got - expected[path]) <= 1e-4, (path, got, expected[path])


def test_export_refuses_a_model_the_handler_hears_differently(exported_model, tmp_path):
    """Training on 16-bit clips (what combine used to write) while the Lambda feeds float
    samples is train/serve skew: the parity gate must stop the export, leaving no output."""
    import shutil

    import soundfile as sf

    from coughlab.config import AudioConfig, QualityConfig
    from coughlab.stages.export_lambda import export_lambda
    from coughlab.stages.featurize import featurize

    combined = tmp_path / "combined"
    shutil.copytree(exported_model["combined"], combined)
    for clip in (combined / "clips").iterdir():
        wave, sr = sf.read(clip, dtype="float32")
        sf.write(clip, np.round(wave * 64) / 64, sr, subtype="FLOAT")  # coarse quantisation
    featurize(combined, tmp_path / "features", AudioConfig())
    with pytest.raises(RuntimeError, match="disagree"):
        export_lambda(exported_model["model_pt"].parent, exported_model["lambda_dir"].parent /
                      "metrics.json", combined, tmp_path / "features", exported_model["fetched"],
                      ROOT / "lambda" / "handler.py", QualityConfig(), tmp_path / "lambda")
    assert not (tmp_path / "lambda").exists()


def test_onnx_graph_needs_no_torch_ops(exported_model):
    import onnx

    graph = onnx.load(exported_model["lambda_dir"] / "model.onnx").graph
    domains = {node.domain for node in graph.node}
    assert domains <= {"", "ai.onnx"}, domains
    assert [i.name for i in graph.input] == ["waveform"]
    assert [o.name for o in graph.output] == ["p_positive"]


def test_export_is_byte_identical_across_processes(exported_model, tmp_path):
    """So DVC sees the same model.onnx hash for the same model.pt, run after run."""
    script = ("import sys; from pathlib import Path; from coughlab.model import load_model; "
              "from coughlab.export import export_onnx; net, audio = load_model(Path(sys.argv[1])); "
              "export_onnx(net, audio, Path(sys.argv[2]))")
    for name in ("a.onnx", "b.onnx"):
        subprocess.run([sys.executable, "-c", script, str(exported_model["model_pt"]),
                        str(tmp_path / name)], check=True, capture_output=True)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
