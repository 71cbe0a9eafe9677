"""Stage export-lambda: build/lambda/{model.onnx, model.json} for the Lambda handler.

model.json carries what the handler needs (sample rate, tensor names, the decision threshold
chosen on valid by evaluate) and what deploy checks before publishing: the test metrics and
the measured ONNX-vs-PyTorch parity on real test clips. Parity beyond PARITY_TOLERANCE fails
the stage, so a broken graph never becomes a DVC artifact.
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

MODEL_DIR = Path("build/model")
METRICS = Path("reports/metrics.json")
COMBINED = Path("build/combined")
OUT = Path("build/lambda")
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


def export_lambda(model_dir: Path, metrics_json: Path, combined: Path, out: Path) -> dict:
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
        }
        (tmp / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"export-lambda: {out}/model.onnx version {meta['version']}, "
          f"parity {worst:.1e} on {len(waves)} test clips")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    parser.add_argument("--metrics", type=Path, default=METRICS)
    parser.add_argument("--combined", type=Path, default=COMBINED)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    export_lambda(args.model_dir, args.metrics, args.combined, args.out)


if __name__ == "__main__":
    main()
