import json

import numpy as np
import pandas as pd
import pytest

from coughlab.metrics import binary_metrics, grouped_metrics, youden_threshold


def test_binary_metrics_by_hand():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.4, 0.6, 0.35, 0.8, 0.9])
    m = binary_metrics(y, p, threshold=0.5)
    assert m["confusion"] == {"tn": 2, "fp": 1, "fn": 1, "tp": 2}
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 3)
    assert m["balanced_accuracy"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["roc_auc"] == pytest.approx(7 / 9)  # 7 of 9 positive/negative pairs ordered right


def test_single_class_group_has_no_auc_but_has_specificity():
    m = binary_metrics(np.zeros(4), np.array([0.1, 0.2, 0.7, 0.3]), 0.5)
    assert m["roc_auc"] is None and m["sensitivity"] is None and m["specificity"] == 0.75


def test_youden_threshold_separates_separable_scores():
    y = np.array([0, 0, 1, 1])
    t = youden_threshold(y, np.array([0.2, 0.3, 0.7, 0.9]))
    assert 0.3 < t <= 0.7


def test_grouped_metrics_per_channel():
    frame = pd.DataFrame({"y": [0, 1, 0, 1], "p": [0.1, 0.9, 0.8, 0.2], "channel": ["a", "a", "b", "b"]})
    out = grouped_metrics(frame, "channel", 0.5)
    assert out["a"]["roc_auc"] == 1.0 and out["b"]["roc_auc"] == 0.0
    json.dumps(out)  # serialisable for metrics.json
