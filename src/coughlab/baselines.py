"""Reference rules the benchmarks and tests hold the pipeline's choices against.

Nothing in a stage imports this module, so editing it never re-runs the pipeline.
"""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (chosen on valid, applied to test)."""
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thresholds = skm.roc_curve(y, p)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))
