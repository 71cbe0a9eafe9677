"""Metrics that cannot hide a channel confound, each on frames whose right answer is known by
construction: a score that is the channel, a score that is the label, one format per channel."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from coughlab import LABELS
from coughlab import metrics as M
from coughlab.baselines import youden_threshold


def leakage(frame: pd.DataFrame) -> dict[str, float | None]:
    """What evaluate reports as channel leakage: `channel_auc` within each label."""
    out = {}
    for k, name in enumerate(LABELS):
        value = M.channel_auc(frame[frame["y"] == k])
        out[name] = None if np.isnan(value) else value
    return out


def confounded_frame(score: str, subjects_per_channel: int = 20, clips: int = 2) -> pd.DataFrame:
    """Two channels; phone subjects are 80 % positive, app subjects 20 %, so the channel
    predicts the label. `score` is "channel" (phone 0.9, app 0.1) or "label" (y itself)."""
    rows = []
    for channel, positive_share in (("phone", 0.8), ("app", 0.2)):
        for s in range(subjects_per_channel):
            y = int(s < positive_share * subjects_per_channel)
            for _ in range(clips):
                p = (0.9 if channel == "phone" else 0.1) if score == "channel" else float(y)
                rows.append({"y": y, "p": p, "subject_id": f"{channel}{s}", "channel": channel,
                             "source": "src"})
    return pd.DataFrame(rows)


def test_weighted_auc_matches_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300) + 0.3 * y, 1)  # coarse scores: many ties
    w = rng.integers(0, 4, (4, 300)).astype(float)
    expected = [roc_auc_score(y, p, sample_weight=row) for row in w]
    assert M.weighted_auc(y, p, w) == pytest.approx(expected, abs=1e-12)


def test_weighted_auc_is_nan_where_a_class_has_no_weight():
    out = M.weighted_auc([0, 1, 1], [0.2, 0.5, 0.9], np.array([[1, 1, 1], [0, 1, 1]]))
    assert out[0] == 1.0 and np.isnan(out[1])


def test_score_equal_to_channel_is_all_leakage_and_no_skill_within_channel():
    frame = confounded_frame("channel")
    assert M.roc_auc(frame) > 0.75  # the overall figure a confound inflates
    assert M.within_channel_auc(frame) == 0.5
    assert leakage(frame) == {"negative": 1.0, "positive": 1.0}


def test_score_equal_to_label_is_perfect_within_channel_and_leaks_nothing():
    frame = confounded_frame("label")
    assert M.within_channel_auc(frame) == 1.0
    assert leakage(frame) == {"negative": 0.5, "positive": 0.5}


def test_a_score_low_on_one_channel_leaks_as_much_as_a_high_one():
    frame = confounded_frame("channel")
    assert M.channel_auc(frame.assign(p=1 - frame["p"])) == 1.0


def test_leakage_over_three_channels_is_the_one_vs_rest_macro():
    # Score = channel index: the outer channels are perfectly told from the rest (1.0), the
    # middle one sits between the others (0.5): macro (1 + 0.5 + 1) / 3.
    frame = pd.DataFrame({"y": 0, "p": [0.0, 0.0, 1.0, 1.0, 2.0, 2.0],
                          "channel": ["a", "a", "b", "b", "c", "c"]})
    assert M.channel_auc(frame) == pytest.approx(2.5 / 3)


def test_leakage_is_undefined_with_one_channel():
    frame = confounded_frame("channel").query("channel == 'phone'")
    assert leakage(frame) == {"negative": None, "positive": None}


def test_within_channel_auc_weights_channels_by_subjects_not_clips():
    # Channel a: 2 subjects x 10 clips, ranked right (1.0). Channel b: 6 subjects x 1 clip,
    # ranked wrong (0.0). By subjects (2 * 1 + 6 * 0) / 8; by clips it would be 20 / 26.
    a = [{"y": s, "p": float(s), "subject_id": f"a{s}", "channel": "a"} for s in (0, 1)
         for _ in range(10)]
    b = [{"y": s % 2, "p": 1.0 - s % 2, "subject_id": f"b{s}", "channel": "b"} for s in range(6)]
    assert M.within_channel_auc(pd.DataFrame(a + b)) == pytest.approx(0.25)


def test_one_class_channels_are_skipped_and_named():
    frame = pd.concat([confounded_frame("label"),
                       pd.DataFrame({"y": 0, "p": 0.9, "subject_id": ["x1", "x2"],
                                     "channel": "hospital", "source": "src"})])
    assert M.within_channel_auc(frame) == 1.0
    breakdown = M.within_channel_breakdown(frame)
    assert breakdown["skipped"] == {"hospital": "only negative clips, no ROC-AUC"}
    assert breakdown["used"] == {"app": {"roc_auc": 1.0, "subjects": 20},
                                 "phone": {"roc_auc": 1.0, "subjects": 20}}


def test_margin_is_paired_difference_with_the_baseline_floored_at_chance():
    frame = confounded_frame("label")
    assert M.within_channel_margin(frame.assign(baseline=0.3)) == 0.5  # 1.0 - 0.5 (ties)
    # A baseline ranked backwards (AUC 0) transfers nothing; the model must still beat chance.
    assert M.within_channel_margin(frame.assign(baseline=1 - frame["y"])) == 0.5
    assert M.within_channel_margin(frame.assign(baseline=frame["y"])) == 0.0


def manifest_frame(single_format: bool = True) -> pd.DataFrame:
    """Train/valid/test manifest; phone is 8 kHz stereo, app 48 kHz mono (or 44.1/48 kHz)."""
    rows = []
    for split in ("train", "valid", "test"):
        frame = confounded_frame("label", subjects_per_channel=10, clips=1)
        for i, r in frame.iterrows():
            phone = r["channel"] == "phone"
            rate = 8000 if phone else (48000 if single_format or i % 2 else 44100)
            rows.append({"path": f"{split}/{i}.wav", "label": M.LABELS[r["y"]],
                         "subject_id": f"{split}-{r['subject_id']}", "source": "src",
                         "channel": r["channel"], "orig_sr": rate,
                         "orig_channels": 2 if phone else 1, "split": split})
    return pd.DataFrame(rows)


def test_metadata_baseline_is_chance_within_single_format_channels():
    manifest = manifest_frame()
    baseline = M.metadata_baseline_scores(manifest)
    test = manifest.assign(y=(manifest["label"] == "positive").astype(int), p=baseline)
    test = test[test["split"] == "test"]
    assert M.within_channel_auc(test) == 0.5
    assert M.roc_auc(test) > 0.75  # the channel alone predicts the label overall


def test_metadata_baseline_is_the_smoothed_train_rate_of_each_cell():
    manifest = manifest_frame()
    scores = M.metadata_baseline_scores(manifest)
    prior = 0.5  # train: 8 + 2 positives of 20
    phone = (8 + M.BASELINE_SMOOTHING * prior) / (10 + M.BASELINE_SMOOTHING)
    assert scores[manifest["channel"] == "phone"].unique() == pytest.approx([phone])
    unseen = manifest.iloc[[0]].assign(split="test", orig_sr=22050)
    assert M.metadata_baseline_scores(pd.concat([manifest, unseen], ignore_index=True)).iloc[-1] \
        == pytest.approx(prior)


def test_metadata_baseline_never_reads_valid_or_test_labels():
    manifest = manifest_frame(single_format=False)
    flipped = manifest.copy()
    held_out = flipped["split"] != "train"
    flipped.loc[held_out, "label"] = flipped.loc[held_out, "label"].map(
        {"positive": "negative", "negative": "positive"})
    pd.testing.assert_series_equal(M.metadata_baseline_scores(manifest),
                                   M.metadata_baseline_scores(flipped))


def test_metadata_baseline_needs_the_metadata_columns():
    with pytest.raises(ValueError, match=r"\['orig_sr'\]"):
        M.metadata_baseline_scores(manifest_frame().drop(columns="orig_sr"))


def test_bootstrap_resamples_subjects_so_repeated_clips_add_no_evidence():
    # 20 clips per subject that say the same thing are worth one: the CI must equal the CI of
    # one clip per subject (a clip bootstrap would shrink it ~sqrt(20)-fold).
    rng = np.random.default_rng(3)
    one = pd.DataFrame({"y": np.arange(30) % 2, "p": rng.random(30),
                        "subject_id": [f"s{i}" for i in range(30)], "channel": "c"})
    many = one.loc[one.index.repeat(20)].reset_index(drop=True)
    assert M.subject_bootstrap_ci(many, M.roc_auc) == M.subject_bootstrap_ci(one, M.roc_auc)
    low, high = M.subject_bootstrap_ci(many, M.roc_auc)
    assert high - low > 0.2


def test_bootstrap_weights_move_all_clips_of_a_subject_together():
    frame = pd.DataFrame({"subject_id": ["big"] * 50 + ["a", "b", "c"]})
    w = M.subject_bootstrap_weights(frame, n=200, seed=0)
    assert (w[:, :50] == w[:, [0]]).all()  # the 50 clips of `big` share one draw count
    assert (w[:, 0] + w[:, 50:].sum(axis=1) == 4).all()  # 4 subjects drawn per resample
    assert (w[:, 0] == 0).any()  # and sometimes `big` is not drawn at all


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    noise = np.random.default_rng(0).normal(size=80)
    frame = confounded_frame("label").assign(p=lambda f: f["y"] + noise)
    low, high = M.subject_bootstrap_ci(frame, M.within_channel_auc, seed=0)
    assert low <= M.within_channel_auc(frame) <= high
    assert M.subject_bootstrap_ci(frame, M.within_channel_auc, seed=0) == (low, high)
    assert M.subject_bootstrap_ci(frame, M.within_channel_auc, seed=1) != (low, high)


def test_leakage_ci_is_not_pushed_above_chance_by_folding():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"y": 0, "p": rng.random(60), "subject_id": [f"s{i}" for i in range(60)],
                          "channel": ["a", "b"] * 30})
    low, high = M.subject_bootstrap_ci(frame, M.channel_auc)
    assert low < 0.5 < high


def test_with_ci_reports_none_where_the_auc_is_undefined():
    frame = confounded_frame("label").assign(y=0)
    assert M.with_ci(frame, M.roc_auc) == {"roc_auc": None, "roc_auc_ci_low": None,
                                           "roc_auc_ci_high": None}


def margin(value, low, high):
    return {"within_channel_roc_auc": value, "within_channel_roc_auc_ci_low": low,
            "within_channel_roc_auc_ci_high": high}


def test_warning_when_the_margin_ci_is_not_above_zero():
    assert "WARNING" in M.margin_warning(margin(0.05, -0.02, 0.12))
    assert "[-0.020, +0.120]" in M.margin_warning(margin(0.05, -0.02, 0.12))
    assert "WARNING" in M.margin_warning(margin(-0.2, -0.3, -0.1))  # worse than metadata
    assert "cannot be estimated" in M.margin_warning(margin(None, None, None))
    assert M.margin_warning(margin(0.2, 0.05, 0.3)) is None


def test_threshold_is_where_the_balanced_platt_calibration_crosses_one_half():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(80), np.ones(20)].astype(int)  # 20 % positive: the balanced fit ignores it
    p = 1 / (1 + np.exp(-(rng.normal(size=100) + 2 * y - 1)))
    slope, intercept = M.platt_calibration(y, p)
    t = M.choose_threshold(y, p)
    assert slope > 0
    assert 1 / (1 + np.exp(-(slope * np.log(t / (1 - t)) + intercept))) == pytest.approx(0.5)


@pytest.mark.parametrize("n, positives, separation", [(40, 0.5, 1.0), (300, 0.3, 0.3),
                                                     (2000, 0.2, 2.0), (20, 0.5, 8.0)])
def test_platt_fit_is_scikit_learns_balanced_l2_logistic_regression(n, positives, separation):
    """The plain-Python Newton fit minimises what LogisticRegression(C=1, class_weight=
    "balanced") does, also on separable scores, where the L2 term keeps the slope finite."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(n)
    y = (rng.random(n) < positives).astype(int)
    y[:2] = [0, 1]
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + separation * (2 * y - 1))))
    x = np.log(p / (1 - p))[:, None]
    reference = LogisticRegression(C=M.PLATT_C, class_weight="balanced", tol=1e-12,
                                   max_iter=100_000).fit(x, y)
    slope, intercept = M.platt_calibration(y, p)
    assert slope == pytest.approx(reference.coef_[0, 0], rel=1e-7)
    assert intercept == pytest.approx(reference.intercept_[0], abs=1e-7)


def test_threshold_swings_less_than_youden_across_resampled_valid_splits():
    # The same score distributions, 30 valid splits of 60 clips: the Platt threshold must
    # vary less than Youden's (which jumps between ROC points).
    rng = np.random.default_rng(0)
    platt, youden = [], []
    for _ in range(30):
        y = rng.integers(0, 2, 60)
        p = 1 / (1 + np.exp(-(rng.normal(size=60) * 1.5 + 2 * y - 1)))
        platt.append(M.choose_threshold(y, p))
        youden.append(youden_threshold(y, p))
    assert np.std(platt) < 0.5 * np.std(youden)


def test_threshold_needs_both_classes_and_falls_back_when_scores_rank_backwards():
    with pytest.raises(ValueError, match="only one class"):
        M.choose_threshold(np.zeros(5), np.linspace(0, 1, 5))
    assert M.choose_threshold(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.5


def test_statistics_name_a_missing_column():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['channel'\]"):
        M.within_channel_auc(pd.DataFrame({"y": [0, 1], "p": [0.1, 0.9], "subject_id": ["a", "b"]}))


def two_web_sources() -> pd.DataFrame:
    """Sources a and b each record one channel they both call `web`, in different ways: a's
    scores sit high (0.8/0.9), b's low (0.1/0.2), and inside each the positives score higher.
    a is mostly negative, b mostly positive, so pooling the two `web`s ranks b's positives
    below a's negatives."""
    rows = []
    for source, base, positives in (("a", 0.8, 1), ("b", 0.1, 7)):
        for s in range(10):
            y = int(s < positives)
            rows.append({"y": y, "p": base + 0.1 * y, "subject_id": f"{source}{s}",
                         "channel": "web", "source": source})
    return pd.DataFrame(rows)


def test_two_sources_that_both_call_a_channel_web_are_two_channels():
    frame = two_web_sources()
    assert M.roc_auc(frame) < 0.5  # pooled, b's low scores drag its positives down
    assert M.within_channel_auc(frame) == 1.0  # each source's `web` on its own ranks right
    assert M.within_channel_breakdown(frame)["used"] == {
        "a/web": {"roc_auc": 1.0, "subjects": 10}, "b/web": {"roc_auc": 1.0, "subjects": 10}}
    # The score tells a's `web` from b's perfectly within each label: that is channel leakage.
    assert leakage(frame) == {"negative": 1.0, "positive": 1.0}
    assert M.subject_bootstrap_ci(frame, M.within_channel_auc) == (1.0, 1.0)


def test_channel_names_nest_in_sources_only_where_the_frame_holds_several():
    frame = two_web_sources()
    assert sorted(set(M.channel_names(frame))) == ["a/web", "b/web"]
    assert set(M.channel_names(frame[frame["source"] == "a"])) == {"web"}
    # A clip without a channel of its own has its source as the channel: named once.
    assert set(M.channel_names(frame.assign(channel=frame["source"]))) == {"a", "b"}
    assert set(M.channel_names(frame.drop(columns="source"))) == {"web"}


def test_source_leakage_is_how_well_the_score_tells_sources_apart():
    frame = two_web_sources()
    assert M.source_auc(frame[frame["y"] == 0]) == 1.0
    assert M.source_auc(frame.assign(p=0.5)) == 0.5
    assert np.isnan(M.source_auc(frame[frame["source"] == "a"]))  # one source: undefined
    low, high = M.subject_bootstrap_ci(frame[frame["y"] == 1], M.source_auc)
    assert low == high == 1.0
