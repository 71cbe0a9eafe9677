"""Stage export-lambda: build/lambda/{model.onnx, model.json} for the Lambda handler.

model.json carries what the handler needs (sample rate, tensor names, the decision threshold
chosen on valid by evaluate, the span of audio the graph reads, combine's quality rules) and
what deploy checks before publishing: the test metrics and the measured parity.

Parity is end to end, from the original recordings: test clips' fetched files (mp3, wav, webm,
as the sources ship them) go through lambda/handler.py with the new model, and their
P(positive) must equal the pipeline's (fetch -> combine -> featurize -> trained network)
within PARITY_TOLERANCE. Anything that makes the Lambda hear other numbers than training did
(decoding, mixdown, resampling, sample format, features) fails the stage, so such a graph
never becomes a DVC artifact.
Its `provenance` (coughlab.provenance) names the data, params, features and model it was
derived from; reports/model.json, committed in git, records the same under the model's
version for `python -m coughlab.trace`.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from coughlab import LABELS
from coughlab.atomic import atomic_dir
from coughlab.digest import model_version
from coughlab.config import QualityConfig, load_params
from coughlab.export import INPUT_NAME, OUTPUT_NAME, export_onnx
from coughlab.model import MODEL_FILE, load_model, load_split, predict_proba
from coughlab.provenance import RECORD, provenance, write_record

MODEL_DIR = Path("build/model")
METRICS = Path("reports/metrics.json")
COMBINED = Path("build/combined")
FEATURES = Path("build/features")
FETCHED = Path("build/fetched")
HANDLER = Path("lambda/handler.py")
OUT = Path("build/lambda")
DATA_DIR = Path("data")
PARAMS_FILE = Path("params.yaml")
PARITY_TOLERANCE = 1e-4
PARITY_CLIPS = 32


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
    """P(positive) of test clips as evaluate computes it: featurize's window, the trained network."""
    test = load_split(features, "test")
    wanted = np.isin(test["path"], paths)
    return dict(zip(test["path"][wanted], map(float, predict_proba(net, test["x"][wanted]))))


def handler_parity(handler, originals: dict[str, Path], expected: dict[str, float]) -> float:
    """Largest |P_handler - P_pipeline| over the original files; a refused file is a failure."""
    worst = 0.0
    for path, original in originals.items():
        answer = handler.predict(original.read_bytes())
        worst = max(worst, abs(answer["p_positive"] - expected[path]))
    return worst


def export_lambda(model_dir: Path, metrics_json: Path, combined: Path, features: Path,
                  fetched: Path, handler_py: Path, quality: QualityConfig, out: Path,
                  data_dir: Path = DATA_DIR, params_file: Path = PARAMS_FILE,
                  record: Path = RECORD) -> dict:
    derived_from = provenance(data_dir, params_file, features, model_dir)
    net, audio = load_model(model_dir / MODEL_FILE)
    metrics = json.loads(metrics_json.read_text())
    manifest = pd.read_csv(combined / "manifest.csv", dtype={"subject_id": str})
    test = manifest.loc[manifest["split"] == "test"].head(PARITY_CLIPS)
    originals = dict(zip(test["path"], (fetched / p for p in test["fetched_path"])))
    expected = pipeline_scores(net, features, list(originals))
    with atomic_dir(out) as tmp:
        onnx_path = export_onnx(net, audio, tmp / "model.onnx")
        meta = {
            "onnx_file": "model.onnx",
            "version": model_version(onnx_path),
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "sample_rate": audio.sample_rate,
            "clip_seconds": audio.clip_seconds,
            # The graph scores the centred max_seconds: the handler resamples only those.
            "input_seconds": audio.max_seconds,
            # combine's quarantine rules: the Lambda refuses what training never saw.
            "quality": {"min_seconds": quality.min_seconds, "silence_dbfs": quality.silence_dbfs},
            "labels": list(LABELS),
            "threshold": metrics["threshold"],
            "test_metrics": {k: metrics["test"][k] for k in ("roc_auc", "pr_auc", "sensitivity",
                                                              "specificity", "n")},
            "provenance": derived_from,
        }
        (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
        with lambda_handler(handler_py, tmp) as handler:
            worst = handler_parity(handler, originals, expected)
        if worst > PARITY_TOLERANCE:
            raise RuntimeError(f"lambda/handler.py and the pipeline disagree by {worst:.2e} on "
                               f"original test files (tolerance {PARITY_TOLERANCE:g}); not exporting")
        meta["parity"] = {"max_abs_diff": worst, "clips": len(originals),
                          "tolerance": PARITY_TOLERANCE,
                          "compared": "original files: lambda/handler.py vs the pipeline"}
        (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    write_record(record, meta["version"], derived_from)
    print(f"export-lambda: {out}/model.onnx version {meta['version']}, handler-vs-pipeline "
          f"parity {worst:.1e} on {len(originals)} original test files")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    parser.add_argument("--metrics", type=Path, default=METRICS)
    parser.add_argument("--combined", type=Path, default=COMBINED)
    parser.add_argument("--fetched", type=Path, default=FETCHED)
    parser.add_argument("--handler", type=Path, default=HANDLER)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--data", type=Path, default=DATA_DIR,
                        help="the dvc-tracked data whose md5 (as in data.dvc) is recorded")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    parser.add_argument("--features", type=Path, default=FEATURES,
                        help="featurize's output whose md5 (as in dvc.lock) is recorded")
    parser.add_argument("--record", type=Path, default=RECORD,
                        help="git-tracked {version, provenance} that coughlab.trace searches")
    args = parser.parse_args(argv)
    export_lambda(args.model_dir, args.metrics, args.combined, args.features, args.fetched,
                  args.handler, load_params().data.quality, args.out, args.data, args.params,
                  args.record)


if __name__ == "__main__":
    main()
