"""Stage export-graph: the trained network and its featurizer as one ONNX graph,
build/graph/model.onnx.

The graph takes the raw mono waveform at audio.sample_rate (any length) and returns
P(positive): featurize's windows and log-mel, every ensemble member, the mean over windows
and members (coughlab.export). It is exported before evaluate, and evaluate scores this very
file: the threshold and every reported number belong to the graph that export-lambda ships,
which refuses a graph whose version evaluate did not score.

The bytes are a function of model.pt only, on every x86-64 CPU: the export runs with
train's pinned kernels (coughlab.determinism, before torch loads).
"""
from __future__ import annotations

from coughlab.determinism import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: its kernel choice is made at import

from pathlib import Path  # noqa: E402

from coughlab.atomic import atomic_dir  # noqa: E402
from coughlab.determinism import reproducible_cpu_kernels  # noqa: E402
from coughlab.digest import model_version  # noqa: E402
from coughlab.export import GRAPH_FILE, export_onnx  # noqa: E402
from coughlab.nets import MODEL_FILE, load_model  # noqa: E402
from coughlab.stages.cli import path_option, stage_parser  # noqa: E402


def export_graph(model_dir: Path, out: Path) -> str:
    """Write `out`/model.onnx from `model_dir`/model.pt; returns the graph's version."""
    net, audio = load_model(model_dir / MODEL_FILE)
    with atomic_dir(out) as tmp, reproducible_cpu_kernels():
        export_onnx(net, audio, tmp / GRAPH_FILE)
    version = model_version(out / GRAPH_FILE)
    print(f"export-graph: {out / GRAPH_FILE} version {version}")
    return version


def main(argv: list[str] | None = None) -> None:
    parser, params = stage_parser("export-graph", "export_graph", __doc__)
    path_option(parser, "--model-dir", params.paths.model, "train's folder with model.pt")
    path_option(parser, "--out", params.paths.graph, "folder to write model.onnx to")
    args = parser.parse_args(argv)
    export_graph(args.model_dir, args.out)


if __name__ == "__main__":
    main()
