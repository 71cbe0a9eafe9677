"""Stage export-lambda: build/lambda/{model.onnx, model.json, model_card.md} for the Lambda.

The graph is export-graph's build/graph/model.onnx, and only if it is the graph evaluate
scored: evaluation.json names the version it scored, and any other graph is refused, so the
threshold and metrics shipped beside it are always that graph's own.

model.json carries what the handler needs (sample rate, tensor names, the decision threshold
chosen on valid by evaluate, the span of audio the graph reads, combine's quality rules) and
what deploy checks before publishing: the test metrics and the parity gate's verdict.
model_card.md (coughlab.model_card) says what the model is for, what it was trained on and
under which licences, how good it is with CIs, what it cannot do, and where it came from;
the handler serves it beside the recording page.

Parity is end to end, from the original recordings: every test clip's fetched file (mp3, wav,
webm, as the sources ship them) goes through lambda/handler.py with the new model, and its
P(positive) must equal the pipeline's (fetch -> combine -> featurize -> trained network)
within PARITY_TOLERANCE. Anything that makes the Lambda hear other numbers than training did
(decoding, mixdown, resampling, sample format, features) fails the stage, so such a graph
never becomes a DVC artifact.
Its `provenance` (coughlab.provenance) names the data, params, features and model it was
derived from; reports/model.json, committed in git, records the same under the model's
version for `python -m coughlab.trace`.

Every output is a function of the declared inputs only, on every x86-64 CPU: torch runs with
train's pinned kernels (coughlab.determinism), and the measured residual of the parity gate,
which depends on the kernels onnxruntime picks for this CPU, goes to the stage's log only;
model.json keeps what does not (passed, tolerance, clips compared).
"""
from __future__ import annotations

from coughlab.determinism import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: its kernel choice is made at import

import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from coughlab import LABELS  # noqa: E402
from coughlab.atomic import atomic_dir  # noqa: E402
from coughlab.config import PARAMS_FILE, QualityConfig  # noqa: E402
from coughlab.determinism import reproducible_cpu_kernels  # noqa: E402
from coughlab.digest import model_version  # noqa: E402
from coughlab.export import GRAPH_FILE, INPUT_NAME, OUTPUT_NAME  # noqa: E402
from coughlab.model_card import (  # noqa: E402
    MODEL_CARD,
    data_summary,
    model_card,
    trained_on,
)
from coughlab.nets import MODEL_FILE, load_model, load_split, predict_proba  # noqa: E402
from coughlab.provenance import provenance, write_record  # noqa: E402
from coughlab.stages.cli import path_option, stage_parser  # noqa: E402

HANDLER = Path("lambda/handler.py")
PARITY_TOLERANCE = 1e-4
PARITY_COMPARED = "original files: lambda/handler.py vs the pipeline"
TEST_METRICS = ("roc_auc", "pr_auc", "sensitivity", "specificity", "n")


@contextlib.contextmanager
def lambda_handler(handler_py: Path, model_dir: Path):
    """lambda/handler.py imported as the Lambda runtime would, serving the model in `model_dir`."""
    saved = os.environ.get("MODEL_DIR")
    os.environ["MODEL_DIR"] = str(model_dir)
    try:
        spec = importlib.util.spec_from_file_location("coughlab_lambda_handler", handler_py)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        if saved is None:
            os.environ.pop("MODEL_DIR", None)
        else:
            os.environ["MODEL_DIR"] = saved


def pipeline_scores(net, features: Path, paths: list[str]) -> dict[str, float]:
    """P(positive) of test clips as evaluate computes it: featurize's window, the trained
    network."""
    test = load_split(features, "test")
    wanted = np.isin(test["path"], paths)
    with reproducible_cpu_kernels():
        scores = predict_proba(net, test["x"][wanted])
    return dict(zip(test["path"][wanted], map(float, scores)))


def handler_parity(handler, originals: dict[str, Path], expected: dict[str, float]) -> float:
    """Largest |P_handler - P_pipeline| over the original files; a refused file is a failure."""
    worst = 0.0
    for path, original in originals.items():
        answer = handler.predict(original.read_bytes())
        worst = max(worst, abs(answer["p_positive"] - expected[path]))
    return worst


class UnevaluatedGraph(RuntimeError):
    """The graph to package is not the one evaluate scored."""


def evaluated_graph(graph: Path, evaluation: dict) -> str:
    """The graph's version, if it is the graph evaluate scored; else UnevaluatedGraph."""
    version = model_version(graph)
    scored = evaluation.get("graph", {}).get("version")
    if version != scored:
        raise UnevaluatedGraph(f"{graph} is version {version}, but evaluate scored "
                               f"{scored or 'no graph'}: run `dvc repro` so evaluate scores "
                               "the graph that ships; not packaging it")
    return version


def export_lambda(graph_dir: Path, model_dir: Path, evaluation_json: Path, combined: Path,
                  features: Path, fetched: Path, handler_py: Path, quality: QualityConfig,
                  out: Path, data_dir: Path, record: Path,
                  params_file: Path = PARAMS_FILE) -> dict:
    evaluation = json.loads(evaluation_json.read_text())
    version = evaluated_graph(graph_dir / GRAPH_FILE, evaluation)
    derived_from = provenance(data_dir, params_file, features, model_dir)
    net, audio = load_model(model_dir / MODEL_FILE)
    manifest = pd.read_csv(combined / "manifest.csv", dtype={"subject_id": str})
    test = manifest.loc[manifest["split"] == "test"]
    originals = dict(zip(test["path"], (fetched / p for p in test["fetched_path"])))
    expected = pipeline_scores(net, features, list(originals))
    with atomic_dir(out) as tmp:
        shutil.copyfile(graph_dir / GRAPH_FILE, tmp / GRAPH_FILE)
        if model_version(tmp / GRAPH_FILE) != version:  # changed while being copied
            raise UnevaluatedGraph(f"{graph_dir / GRAPH_FILE} changed while being packaged")
        meta = {
            "onnx_file": GRAPH_FILE,
            "version": version,
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "sample_rate": audio.sample_rate,
            "clip_seconds": audio.clip_seconds,
            # The graph scores the centred max_seconds: the handler resamples only those.
            "input_seconds": audio.max_seconds,
            # combine's quarantine rules: the Lambda refuses what training never saw.
            "quality": {"min_seconds": quality.min_seconds, "silence_dbfs": quality.silence_dbfs},
            "labels": list(LABELS),
            "threshold": evaluation["threshold"],
            "test_metrics": {k: evaluation["test"][k] for k in TEST_METRICS},
            "model_card": MODEL_CARD,
            # One sentence the recording page shows: synthetic sample or which real sources
            # (a source evaluate found no train clips of named as held out).
            "trained_on": trained_on(derived_from, evaluation),
            "provenance": derived_from,
        }
        (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
        with lambda_handler(handler_py, tmp) as handler:
            worst = handler_parity(handler, originals, expected)
        # The residual itself depends on this CPU's onnxruntime kernels: log it, never store it.
        print(f"export-lambda: handler-vs-pipeline parity {worst:.1e} (tolerance "
              f"{PARITY_TOLERANCE:g}) on {len(originals)} original test files")
        if worst > PARITY_TOLERANCE:
            raise RuntimeError(f"lambda/handler.py and the pipeline disagree by {worst:.2e} on "
                               f"original test files (tolerance {PARITY_TOLERANCE:g}); "
                               "not exporting")
        meta["parity"] = {"passed": True, "clips": len(originals), "tolerance": PARITY_TOLERANCE,
                          "compared": PARITY_COMPARED}
        (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
        card = model_card(meta, evaluation, data_summary(manifest))
        (tmp / MODEL_CARD).write_text(card)
    write_record(record, meta["version"], derived_from)
    print(f"export-lambda: {out}/model.onnx version {meta['version']}, {out}/{MODEL_CARD}")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser, params = stage_parser("export-lambda", "export_lambda", __doc__)
    paths = params.paths
    path_option(parser, "--graph-dir", paths.graph, "export-graph's folder: the model.onnx")
    path_option(parser, "--model-dir", paths.model,
                "train's model.pt: the parity reference, and its md5 is recorded")
    path_option(parser, "--evaluation", paths.evaluation,
                "evaluate's report: the graph it scored, the threshold, test metrics and CIs")
    path_option(parser, "--combined", paths.combined, "combine's manifest.csv: the test clips")
    path_option(parser, "--fetched", paths.fetched, "the original test recordings, for parity")
    path_option(parser, "--features", paths.features,
                "featurize's output: the parity reference, and its md5 is recorded")
    path_option(parser, "--handler", str(HANDLER), "the Lambda handler the parity gate runs")
    path_option(parser, "--out", paths.bundle, "folder to write: what deploy ships")
    path_option(parser, "--data", params.data.local_dir,
                "the dvc-tracked data whose md5 (as in data.dvc) is recorded")
    path_option(parser, "--record", paths.record,
                "git-tracked {version, provenance} that coughlab.trace searches")
    args = parser.parse_args(argv)
    export_lambda(args.graph_dir, args.model_dir, args.evaluation, args.combined, args.features,
                  args.fetched, args.handler, params.data.quality, args.out, args.data,
                  args.record)


if __name__ == "__main__":
    main()
