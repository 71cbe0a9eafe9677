import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from coughlab.export import ServingModel, onnx_predict, onnx_session
from coughlab.model import load_model


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


def test_model_json_records_parity_threshold_and_rate(exported_model):
    meta = json.loads((exported_model["lambda_dir"] / "model.json").read_text())
    assert meta["sample_rate"] == 16000 and meta["threshold"] == 0.5
    assert meta["parity"]["clips"] == 2
    assert meta["parity"]["max_abs_diff"] <= meta["parity"]["tolerance"] == 1e-4
    assert len(meta["version"]) == 12


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
