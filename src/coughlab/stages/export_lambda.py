"""Stage export-lambda: build/lambda/{model.onnx, model.json} for the Lambda handler.

model.json carries what the handler needs (sample rate, tensor names, the decision threshold
chosen on valid by evaluate) and what deploy checks before publishing: the test metrics and
the measured ONNX-vs-PyTorch parity on real test clips. Parity beyond PARITY_TOLERANCE fails
the stage, so a broken graph never becomes a DVC artifact. Its `provenance` (coughlab.provenance)
names the data, params, features and model it was derived from; reports/model.json, committed
in git, records the same under the model's version for `python -m coughlab.trace`.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from coughlab import LABELS
from coughlab.atomic import atomic_dir
from coughlab.digest import model_version
from coughlab.export import (INPUT_NAME, OUTPUT_NAME, ServingModel, export_onnx, onnx_predict,
                            onnx_session)
from coughlab.model import MODEL_FILE, load_model
from coughlab.provenance import RECORD, provenance, write_record

MODEL_DIR = Path("build/model")
METRICS = Path("reports/metrics.json")
COMBINED = Path("build/combined")
OUT = Path("build/lambda")
DATA_DIR = Path("data")
PARAMS_FILE = Path("params.yaml")
FEATURES = Path("build/features")
PARITY_TOLERANCE = 1e-4
PARITY_CLIPS = 32


def parity(onnx_path: Path, model: ServingModel, waves: list[np.ndarray]) -> float:
    """Largest |P_onnx - P_torch| over the clips, each run at its own length as the Lambda does."""
    session, worst = onnx_session(onnx_path), 0.0
    for wave in waves:
        with torch.inference_mode():
            expected = model(torch.from_numpy(wave[None, :])).numpy()
        worst = max(worst, float(np.abs(onnx_predict(session, wave[None, :]) - expected).max()))
    return worst


def export_lambda(model_dir: Path, metrics_json: Path, combined: Path, out: Path,
                  data_dir: Path = DATA_DIR, params_file: Path = PARAMS_FILE,
                  features: Path = FEATURES, record: Path = RECORD) -> dict:
    derived_from = provenance(data_dir, params_file, features, model_dir)
    net, audio = load_model(model_dir / MODEL_FILE)
    metrics = json.loads(metrics_json.read_text())
    manifest = pd.read_csv(combined / "manifest.csv", dtype={"subject_id": str})
    test_paths = manifest.loc[manifest["split"] == "test", "path"].head(PARITY_CLIPS)
    waves = [sf.read(combined / "clips" / p, dtype="float32")[0] for p in test_paths]
    with atomic_dir(out) as tmp:
        onnx_path = export_onnx(net, audio, tmp / "model.onnx")
        worst = parity(onnx_path, ServingModel(net, audio), waves)
        if worst > PARITY_TOLERANCE:
            raise RuntimeError(f"ONNX and PyTorch disagree by {worst:.2e} on test clips "
                               f"(tolerance {PARITY_TOLERANCE:g}); not exporting")
        meta = {
            "onnx_file": "model.onnx",
            "version": model_version(onnx_path),
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "sample_rate": audio.sample_rate,
            "clip_seconds": audio.clip_seconds,
            "labels": list(LABELS),
            "threshold": metrics["threshold"],
            "test_metrics": {k: metrics["test"][k] for k in ("roc_auc", "pr_auc", "sensitivity",
                                                              "specificity", "n")},
            "parity": {"max_abs_diff": worst, "clips": len(waves), "tolerance": PARITY_TOLERANCE},
            "provenance": derived_from,
        }
        (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    write_record(record, meta["version"], derived_from)
    print(f"export-lambda: {out}/model.onnx version {meta['version']}, "
          f"parity {worst:.1e} on {len(waves)} test clips")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    parser.add_argument("--metrics", type=Path, default=METRICS)
    parser.add_argument("--combined", type=Path, default=COMBINED)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--data", type=Path, default=DATA_DIR,
                        help="the dvc-tracked data whose md5 (as in data.dvc) is recorded")
    parser.add_argument("--params", type=Path, default=PARAMS_FILE)
    parser.add_argument("--features", type=Path, default=FEATURES,
                        help="featurize's output whose md5 (as in dvc.lock) is recorded")
    parser.add_argument("--record", type=Path, default=RECORD,
                        help="git-tracked {version, provenance} that coughlab.trace searches")
    args = parser.parse_args(argv)
    export_lambda(args.model_dir, args.metrics, args.combined, args.out,
                  args.data, args.params, args.features, args.record)


if __name__ == "__main__":
    main()
