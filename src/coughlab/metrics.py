"""Binary classification metrics, shared by the evaluate stage and the real-data benchmark."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (chosen on valid, applied to test)."""
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thresholds = skm.roc_curve(y, p)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    """ROC-AUC, PR-AUC, sensitivity, specificity, balanced accuracy, F1 and the confusion counts.

    AUCs are None when only one class is present (e.g. a channel with only negatives); the
    threshold-based figures are still reported.
    """
    y = np.asarray(y).astype(int)
    pred = (np.asarray(p) >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred, labels=[0, 1]).ravel()
    both = len(np.unique(y)) == 2
    sens = tp / (tp + fn) if tp + fn else None
    spec = tn / (tn + fp) if tn + fp else None
    return {
        "n": int(len(y)),
        "positives": int(y.sum()),
        "roc_auc": float(skm.roc_auc_score(y, p)) if both else None,
        "pr_auc": float(skm.average_precision_score(y, p)) if both else None,
        "sensitivity": None if sens is None else float(sens),
        "specificity": None if spec is None else float(spec),
        "balanced_accuracy": (float((sens + spec) / 2) if sens is not None and spec is not None
                              else None),
        "f1": float(skm.f1_score(y, pred, zero_division=0)),
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def grouped_metrics(frame: pd.DataFrame, column: str, threshold: float) -> dict:
    """`binary_metrics` per value of `column` (source or channel) in a frame with y and p."""
    return {str(value): binary_metrics(g["y"].to_numpy(), g["p"].to_numpy(), threshold)
            for value, g in frame.groupby(column)}
