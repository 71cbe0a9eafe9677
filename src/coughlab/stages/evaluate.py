"""Stage evaluate: test-split metrics at a threshold chosen on valid, plus plots for `dvc plots`.

Writes reports/metrics.json (ROC-AUC, PR-AUC, sensitivity, specificity, balanced accuracy,
F1, confusion counts; overall and per source and per channel when the manifest has them) and
reports/plots/{roc,pr,confusion}.json. Per-channel figures are what keeps us honest: a model
that learnt the phone line instead of the cough looks good overall and bad within a channel.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from sklearn import metrics as skm

from coughlab import LABELS
from coughlab.atomic import atomic_write_text
from coughlab.metrics import binary_metrics, grouped_metrics, youden_threshold
from coughlab.model import MODEL_FILE, load_model, load_split, predict_proba

MODEL_DIR = Path("build/model")
FEATURES = Path("build/features")
MANIFEST = Path("build/combined/manifest.csv")
METRICS = Path("reports/metrics.json")
PLOTS = Path("reports/plots")


def scored_split(net, features: Path, manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    data = load_split(features, split)
    frame = pd.DataFrame({"path": data["path"], "y": data["y"].astype(int),
                          "p": predict_proba(net, data["x"])})
    return frame.merge(manifest.drop(columns=["label", "split"]), on="path", how="left")


def curves(test: pd.DataFrame, threshold: float) -> dict[str, list[dict]]:
    fpr, tpr, roc_thr = skm.roc_curve(test["y"], test["p"])
    precision, recall, pr_thr = skm.precision_recall_curve(test["y"], test["p"])
    return {
        "roc": [{"fpr": float(f), "tpr": float(t), "threshold": float(min(h, 1.0))}
                for f, t, h in zip(fpr, tpr, roc_thr)],
        "pr": [{"recall": float(r), "precision": float(p), "threshold": float(h)}
               for r, p, h in zip(recall[:-1], precision[:-1], pr_thr)],
        "confusion": [{"actual": LABELS[a], "predicted": LABELS[int(p >= threshold)]}
                      for a, p in zip(test["y"], test["p"])],
    }


def evaluate(model_dir: Path, features: Path, manifest_csv: Path, metrics_out: Path,
             plots_out: Path) -> dict:
    net, _ = load_model(model_dir / MODEL_FILE)
    manifest = pd.read_csv(manifest_csv, dtype={"subject_id": str})
    valid = scored_split(net, features, manifest, "valid")
    test = scored_split(net, features, manifest, "test")
    threshold = youden_threshold(valid["y"].to_numpy(), valid["p"].to_numpy())
    report = {
        "threshold": threshold,
        "test": binary_metrics(test["y"], test["p"], threshold),
        "valid": binary_metrics(valid["y"], valid["p"], threshold),
    }
    for column in ("source", "channel"):
        if column in test.columns and test[column].notna().all():
            report[f"test_by_{column}"] = grouped_metrics(test, column, threshold)
    atomic_write_text(metrics_out, json.dumps(report, indent=2) + "\n")
    plots_out.mkdir(parents=True, exist_ok=True)
    for name, rows in curves(test, threshold).items():
        atomic_write_text(plots_out / f"{name}.json", json.dumps(rows) + "\n")
    t = report["test"]
    print(f"evaluate: test ROC-AUC {t['roc_auc']:.3f}  PR-AUC {t['pr_auc']:.3f}  "
          f"sens {t['sensitivity']:.3f}  spec {t['specificity']:.3f}  at threshold {threshold:.3f}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    parser.add_argument("--features", type=Path, default=FEATURES)
    parser.add_argument("--manifest", type=Path, default=MANIFEST)
    parser.add_argument("--metrics", type=Path, default=METRICS)
    parser.add_argument("--plots", type=Path, default=PLOTS)
    args = parser.parse_args(argv)
    evaluate(args.model_dir, args.features, args.manifest, args.metrics, args.plots)


if __name__ == "__main__":
    main()
