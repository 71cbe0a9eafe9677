"""Export the trained network, with its featurizer, as one framework-free ONNX graph.

The graph's input is `waveform`: float32 `[batch, samples]`, mono, at the pipeline's sample
rate, any length. Inside it: featurize's log-mel of the clip's frames (its centred
audio.max_seconds; one transform, its DFT as matrix products) cut into the windows, then the
network (each member of an ensemble once, over every window) and a softmax, and the mean
P(positive) over windows and members. Its output is `p_positive` `[batch]`. The Lambda
therefore needs only onnxruntime and numpy, and cannot drift from training in how it computes
features.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from coughlab.config import AudioConfig
from coughlab.features import WindowedFeaturizer
from coughlab.nets import window_proba

GRAPH_FILE = "model.onnx"
INPUT_NAME = "waveform"
OUTPUT_NAME = "p_positive"
OPSET = 18


class ServingModel(nn.Module):
    """Waveform -> P(positive): windows + featurizer + network + softmax + mean, in eval mode."""

    def __init__(self, net: nn.Module, audio: AudioConfig):
        super().__init__()
        self.featurizer = WindowedFeaturizer(audio)
        self.net = net
        self.eval()

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return window_proba(self.net, self.featurizer(waveform))


def export_onnx(net: nn.Module, audio: AudioConfig, path: Path) -> Path:
    """Write `path` (atomically) and check it loads and runs in onnxruntime."""
    import onnx

    from coughlab.atomic import atomic_file

    model = ServingModel(net, audio)
    example = torch.zeros(2, int(audio.sample_rate * audio.clip_seconds) + 1234)
    samples = torch.export.Dim("samples", min=1, max=audio.sample_rate * 600)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(
        model, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME], dynamic_shapes={"waveform": {0: batch, 1: samples}},
        verbose=False)
    proto = program.model_proto
    # The exporter's per-node debug metadata holds memory addresses ("<function sym_min at
    # 0x7f..>"): dropping it makes the same model.pt export to the same bytes in any process.
    for node in [*proto.graph.node, *(n for f in proto.functions for n in f.node)]:
        del node.metadata_props[:]
    onnx.checker.check_model(proto)
    with atomic_file(path) as fh:
        fh.write(proto.SerializeToString())
    return path


def onnx_session(path: Path):
    """Load the graph once; every prediction reuses the session, as the Lambda does."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_predict(session, waveform: np.ndarray) -> np.ndarray:
    """P(positive) from the ONNX session for a `[batch, samples]` float32 waveform."""
    return session.run([OUTPUT_NAME], {INPUT_NAME: waveform.astype(np.float32)})[0]
