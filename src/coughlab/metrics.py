"""Metrics shared by the evaluate stage and the real-data benchmark.

A model that learnt the recording channel instead of the cough looks good overall, because in
crowd-sourced cough sets the channel predicts the label. The figures here are built so that
cannot hide: ROC-AUC within each channel, a baseline that sees only recording metadata, how
well the score tells channels apart within a label, and a confidence interval that resamples
subjects (clips of one subject are not independent evidence).

Frames hold one row per clip with columns y (0/1), p (the score), subject_id, channel, source,
and `baseline` (the metadata baseline's score) where a margin is asked for. A channel belongs to
its source (`channel_names`): two sources that both call a channel `web` are two channels.

The statistics `roc_auc`, `within_channel_auc`, `within_channel_margin`, `channel_auc` and
`source_auc` take
`(frame, weights=None)`. Without weights each clip counts once and the result is a float (nan
where undefined). With a (B, n) matrix of clip weights the result is B values, one per row:
`subject_bootstrap_ci` scores all its resamples in one vectorised pass that way.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from coughlab import LABELS

Statistic = Callable[..., "float | np.ndarray"]

METADATA_COLUMNS = ("source", "channel", "orig_sr", "orig_channels")
BASELINE_SMOOTHING = 2.0  # pseudo-clips at the train positive rate added to every metadata cell
PLATT_C = 1.0  # inverse L2 strength: keeps the slope finite when valid is separable
OPERATING_POINT = (
    "Platt calibration fit on the valid split: a class-balanced logistic regression (L2, C=1) "
    "of the label on logit(p). The threshold is the raw score p where the calibrated "
    "P(positive) = 0.5, i.e. equal weight on both classes whatever their share in the data "
    "(a balanced-prior operating point). Where the calibration slope is not positive (the "
    "scores do not rank valid positives higher) the threshold falls back to p = 0.5.")


def platt_calibration(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of calibrated P(positive) = sigmoid(slope * logit(p) + intercept).

    Class-balanced, so the calibrated 0.5 does not move with the positive share of the split.
    It minimises what scikit-learn's LogisticRegression(C=PLATT_C, class_weight="balanced")
    does, by Newton's method in plain Python floats: every sum is `math.fsum` (exactly
    rounded, so independent of order) and exp/log are libm's scalar ones. BLAS (OpenBLAS picks
    its kernels per CPU) and numpy's SIMD loops (AVX-512 variants of exp and log) never touch
    it, so the threshold is the same to the last bit on every x86-64 machine.
    """
    y = np.asarray(y).astype(int)
    if len(np.unique(y)) < 2:
        raise ValueError("cannot calibrate the threshold: the split has only one class "
                         f"({LABELS[int(y[0])] if len(y) else 'no clips'})")
    labels = [int(v) for v in y]
    logits = [math.log(q / (1 - q)) for q in (min(max(float(v), 1e-7), 1 - 1e-7) for v in p)]
    counts = (labels.count(0), labels.count(1))
    weights = [len(labels) / (2 * counts[k]) for k in labels]
    return _newton_logistic(logits, labels, weights, 1 / PLATT_C)


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def _log1p_exp(z: float) -> float:
    return z + math.log1p(math.exp(-z)) if z > 0 else math.log1p(math.exp(z))


def _newton_logistic(x: list[float], y: list[int], w: list[float], l2: float,
                     max_steps: int = 100) -> tuple[float, float]:
    """argmin over (a, b) of sum w_i * logloss(y_i, a x_i + b) + l2 / 2 * a^2, the intercept
    unpenalised. The objective is strictly convex; Newton steps, halved until the objective
    does not rise, stop once they move the estimate by less than 1e-14 of its size."""
    def loss(a: float, b: float) -> float:
        return math.fsum([wi * (_log1p_exp(a * xi + b) - yi * (a * xi + b))
                          for xi, yi, wi in zip(x, y, w)]) + l2 / 2 * a * a

    a = b = 0.0
    current = loss(a, b)
    for _ in range(max_steps):
        s = [_sigmoid(a * xi + b) for xi in x]
        r = [wi * (si - yi) for si, yi, wi in zip(s, y, w)]
        h = [wi * si * (1 - si) for si, wi in zip(s, w)]
        grad_a, grad_b = math.fsum([ri * xi for ri, xi in zip(r, x)]) + l2 * a, math.fsum(r)
        h_aa = math.fsum([hi * xi * xi for hi, xi in zip(h, x)]) + l2
        h_ab, h_bb = math.fsum([hi * xi for hi, xi in zip(h, x)]), math.fsum(h)
        det = h_aa * h_bb - h_ab * h_ab
        if not det > 0:
            break
        step_a = (h_bb * grad_a - h_ab * grad_b) / det
        step_b = (h_aa * grad_b - h_ab * grad_a) / det
        scale = 1.0
        while scale > 1e-10:
            trial = loss(a - scale * step_a, b - scale * step_b)
            if trial <= current:
                break
            scale /= 2
        else:
            break
        moved = scale * max(abs(step_a), abs(step_b))
        a, b, current = a - scale * step_a, b - scale * step_b, trial
        if moved <= 1e-14 * (1 + abs(a) + abs(b)):
            break
    return a, b


def choose_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The raw score where the class-balanced Platt calibration gives 0.5 (see OPERATING_POINT).

    Every clip moves the fit a little, unlike Youden's J which hangs on one ROC point, so the
    threshold does not swing from seed to seed.
    """
    slope, intercept = platt_calibration(y, p)
    if slope <= 0:
        return 0.5
    return 1 / (1 + math.exp(intercept / slope))


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


def grouped_metrics(frame: pd.DataFrame, by: str | np.ndarray, threshold: float) -> dict:
    """`binary_metrics` per group of a frame with y and p: `by` is a column (source) or one
    name per clip (`channel_names`)."""
    return {str(value): binary_metrics(g["y"].to_numpy(), g["p"].to_numpy(), threshold)
            for value, g in frame.groupby(by)}


def require_columns(frame: pd.DataFrame, *columns: str) -> None:
    """A clear error naming what is missing or empty, instead of a KeyError deep in a metric."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}; it has {list(frame.columns)}")
    empty = [c for c in columns if frame[c].isna().any()]
    if empty:
        raise ValueError(f"column(s) {empty} have missing values")


def weighted_auc(y: np.ndarray, p: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC-AUC for each row of clip weights (B, n); ties count half; nan where a class weighs 0.

    The clips are sorted once by score; each resample only changes how much each clip counts,
    so all B AUCs come from one cumulative sum over the tie groups.
    """
    y, p = np.asarray(y, dtype=bool), np.asarray(p, dtype=float)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    if y.size == 0:
        return np.full(len(weights), np.nan)
    order = np.argsort(p, kind="stable")
    y, p, weights = y[order], p[order], weights[:, order]
    tie_starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
    pos = np.add.reduceat(weights * y, tie_starts, axis=1)
    neg = np.add.reduceat(weights * ~y, tie_starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    ordered = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, ordered / pairs, np.nan)


def _weights(frame: pd.DataFrame, weights: np.ndarray | None) -> np.ndarray:
    return np.ones((1, len(frame))) if weights is None else np.atleast_2d(weights)


def _result(values: np.ndarray, weights: np.ndarray | None) -> float | np.ndarray:
    return float(values[0]) if weights is None else values


def _weighted_mean(values: list[np.ndarray], weights: list[np.ndarray]) -> np.ndarray:
    """Row-wise mean of `values` by `weights`, leaving out nan values; nan where none is left."""
    values, weights = np.array(values), np.array(weights)
    weights = np.where(np.isnan(values), 0.0, weights)
    total = weights.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (np.nan_to_num(values) * weights).sum(axis=0) / total, np.nan)


def roc_auc(frame: pd.DataFrame, weights: np.ndarray | None = None) -> float | np.ndarray:
    """ROC-AUC of p for y over all clips: the figure a channel confound inflates."""
    require_columns(frame, "y", "p")
    return _result(weighted_auc(frame["y"], frame["p"], _weights(frame, weights)), weights)


def channel_names(frame: pd.DataFrame) -> np.ndarray:
    """Each clip's recording channel, nested in its source: `web` in two sources is two ways of
    recording, so two channels. Named `source/channel` where the frame holds clips of two
    sources or more (just `source` for clips whose source stands in as their channel), the
    channel alone otherwise."""
    channel = frame["channel"].astype(str)
    if "source" not in frame.columns or frame["source"].nunique() < 2:
        return channel.to_numpy()
    source = frame["source"].astype(str)
    return (source + "/" + channel).where(channel != source, source).to_numpy()


def _per_channel(frame: pd.DataFrame, w: np.ndarray):
    """(channel, ROC-AUC, subjects) per channel; subjects counts each drawn subject once."""
    channel = channel_names(frame)
    y, p = frame["y"].to_numpy(), frame["p"].to_numpy()
    clips_of_subject = frame.groupby(
        [channel, frame["subject_id"].astype(str).to_numpy()])["y"].transform("size").to_numpy()
    for name in np.unique(channel):
        m = channel == name
        yield name, weighted_auc(y[m], p[m], w[:, m]), (w[:, m] / clips_of_subject[m]).sum(axis=1)


def within_channel_auc(frame: pd.DataFrame,
                       weights: np.ndarray | None = None) -> float | np.ndarray:
    """Mean of the per-channel ROC-AUCs, each weighted by its number of subjects.

    The headline: the channel cannot help inside a channel. Channels with only one class have
    no AUC and are left out (see `within_channel_breakdown` for which).
    """
    require_columns(frame, "y", "p", "subject_id", "channel")
    w = _weights(frame, weights)
    parts = list(_per_channel(frame, w))
    if not parts:
        return _result(np.full(len(w), np.nan), weights)
    return _result(_weighted_mean([a for _, a, _ in parts], [s for _, _, s in parts]), weights)


def within_channel_breakdown(frame: pd.DataFrame) -> dict:
    """Which channels the within-channel AUC averages, with their weights, and which it skips."""
    require_columns(frame, "y", "p", "subject_id", "channel")
    used, skipped = {}, {}
    names = channel_names(frame)
    for name, auc, subjects in _per_channel(frame, _weights(frame, None)):
        if np.isnan(auc[0]):
            present = LABELS[int(frame.loc[names == name, "y"].iloc[0])]
            skipped[str(name)] = f"only {present} clips, no ROC-AUC"
        else:
            used[str(name)] = {"roc_auc": float(auc[0]), "subjects": int(round(subjects[0]))}
    return {"used": used, "skipped": skipped}


def within_channel_margin(frame: pd.DataFrame,
                          weights: np.ndarray | None = None) -> float | np.ndarray:
    """Model minus metadata baseline within-channel ROC-AUC, on the same clips (paired).

    The baseline counts as at least chance (0.5): one that scores below chance on test has
    learnt nothing that transfers, and beating it must not flatter the model. Under
    `subject_bootstrap_ci` both sides see the same resamples, so the CI is of the paired
    difference, not of two independent figures.
    """
    require_columns(frame, "baseline")
    baseline = within_channel_auc(frame.assign(p=frame["baseline"]), weights)
    return within_channel_auc(frame, weights) - np.maximum(baseline, 0.5)


def channel_auc(frame: pd.DataFrame, weights: np.ndarray | None = None) -> float | np.ndarray:
    """How well p tells the recording channels apart: 0.5 not at all, 1.0 perfectly.

    One-vs-rest ROC-AUC of p for each channel, folded (max(AUC, 1 - AUC): a score that is low
    on one channel leaks as much as one that is high), then the macro mean. nan with fewer than
    two channels. With weights the fold keeps the direction of the unweighted clips, so a
    bootstrap CI is not pushed above 0.5 by folding every resample its own way. Call it within
    one label (`channel_leakage`): across labels a good model separates channels whenever the
    channel predicts the label.
    """
    require_columns(frame, "p", "channel")
    return _separation(frame, channel_names(frame), weights)


def source_auc(frame: pd.DataFrame, weights: np.ndarray | None = None) -> float | np.ndarray:
    """How well p tells the sources apart, as `channel_auc` does channels (0.5 not at all).

    Call it within one label: a score that sits higher on one source's recordings whatever
    their label has learnt something of how that source records, which another source lacks.
    """
    require_columns(frame, "p", "source")
    return _separation(frame, frame["source"].astype(str).to_numpy(), weights)


def _separation(frame: pd.DataFrame, groups: np.ndarray,
                weights: np.ndarray | None) -> float | np.ndarray:
    """Folded one-vs-rest macro ROC-AUC of p for `groups` (see `channel_auc`)."""
    w, p = _weights(frame, weights), frame["p"].to_numpy()
    names = np.unique(groups)
    if len(names) < 2:
        return _result(np.full(len(w), np.nan), weights)
    if len(names) == 2:
        names = names[:1]  # the other one-vs-rest AUC is its mirror image
    folded = []
    for name in names:
        direction = np.sign(weighted_auc(groups == name, p, np.ones(len(p)))[0] - 0.5) or 1.0
        folded.append(0.5 + direction * (weighted_auc(groups == name, p, w) - 0.5))
    return _result(_weighted_mean(folded, [np.ones(len(w))] * len(folded)), weights)


def subject_bootstrap_weights(frame: pd.DataFrame, n: int = 1000, seed: int = 0) -> np.ndarray:
    """(n, clips) weights: how often each clip's subject was drawn in each resample.

    Subjects are drawn with replacement, as many as there are; all clips of a drawn subject
    come along, so a subject with many clips cannot narrow the interval.
    """
    require_columns(frame, "subject_id")
    codes, subjects = pd.factorize(frame["subject_id"].astype(str))
    if len(subjects) == 0:
        return np.zeros((n, 0))
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(subjects), np.full(len(subjects), 1 / len(subjects)), size=n)
    return counts[:, codes].astype(float)


def subject_bootstrap_ci(frame: pd.DataFrame, statistic: Statistic, n: int = 1000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float] | None:
    """Percentile CI of `statistic(frame, weights)` over `n` subject resamples, seeded.

    Resamples where the statistic is undefined (a class drawn away) are left out; None when
    none is defined.
    """
    values = np.asarray(statistic(frame, subject_bootstrap_weights(frame, n, seed)))
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def with_ci(frame: pd.DataFrame, statistic: Statistic, n: int = 1000, seed: int = 0,
            key: str = "roc_auc") -> dict:
    """{key, key_ci_low, key_ci_high}: the statistic on the frame and its subject-bootstrap CI."""
    value = statistic(frame)
    ci = subject_bootstrap_ci(frame, statistic, n, seed) if not np.isnan(value) else None
    return {key: None if np.isnan(value) else float(value),
            f"{key}_ci_low": None if ci is None else ci[0],
            f"{key}_ci_high": None if ci is None else ci[1]}


def metadata_baseline_scores(manifest: pd.DataFrame,
                             smoothing: float = BASELINE_SMOOTHING) -> pd.Series:
    """P(positive) from recording metadata alone, fit on the manifest's train split.

    Each cell of source x channel x original sample rate x channel count scores the train
    positive rate of its clips, shrunk towards the overall train rate by `smoothing`
    pseudo-clips; a cell train never saw scores the overall train rate. It never hears a
    cough: what it achieves is what the recording set-up alone gives away. Returns a Series
    named `baseline` on the manifest's index.
    """
    require_columns(manifest, "label", "split", *METADATA_COLUMNS)
    cell = manifest[list(METADATA_COLUMNS)].astype(str).agg(" | ".join, axis=1)
    positive = (manifest["label"] == LABELS[1]).astype(float)
    train = manifest["split"] == "train"
    if not train.any():
        raise ValueError("manifest has no train clips to fit the metadata baseline on")
    prior = positive[train].mean()
    counts = positive[train].groupby(cell[train]).agg(["sum", "count"])
    rate = (counts["sum"] + smoothing * prior) / (counts["count"] + smoothing)
    return cell.map(rate).fillna(prior).astype(float).rename("baseline")


def margin_warning(margin: dict) -> str | None:
    """The warning `make repro` prints unless the margin's CI lies wholly above 0.

    `margin` holds within_channel_roc_auc (model minus baseline) and its _ci_low, _ci_high.
    A CI that includes 0, or lies below it, means the test split cannot tell the model from
    one that only knows how each clip was recorded.
    """
    key = "within_channel_roc_auc"
    value, low, high = (margin.get(f"{key}{k}") for k in ("", "_ci_low", "_ci_high"))
    if value is None or low is None or high is None:
        return ("WARNING: the model's margin over the metadata-only baseline cannot be estimated "
                "(no test channel has both classes); nothing shows the model hears coughs "
                "rather than the recording channel.")
    if low <= 0:
        return (f"WARNING: within channels the model is not distinguishably better than a "
                f"metadata-only baseline (source, channel, sample rate, channel count): margin "
                f"{value:+.3f} ROC-AUC, 95% CI [{low:+.3f}, {high:+.3f}] is not above 0. It may "
                "have learnt the recording channel rather than the cough; do not trust the "
                "overall ROC-AUC.")
    return None
