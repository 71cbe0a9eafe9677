"""benchmarks/realdata_quality.py's pure parts, on small synthetic frames (nothing trains).

Its figures are only as good as its splits: a model that scored a clip of a subject it trained
on, or of the source it trained on in the transfer design, would flatter every option alike.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SR = 16000


@pytest.fixture(scope="module")
def rq():
    """The script as a module, its folder on sys.path as running it puts it (it imports its
    sibling `machine` by name)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        spec = importlib.util.spec_from_file_location(
            "realdata_quality", BENCHMARKS / "realdata_quality.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


# --- the splits ---------------------------------------------------------------------------

# (source, channel, label): groups of each; the channels confound the label as in the real set.
STRATA = {("covid19-cough", "call-center", "positive"): 14,
          ("covid19-cough", "call-center", "negative"): 8,
          ("covid19-cough", "telegram", "positive"): 8,
          ("covid19-cough", "telegram", "negative"): 16,
          ("coswara", "web", "positive"): 10,
          ("coswara", "web", "negative"): 18}


def synthetic_clips() -> pd.DataFrame:
    """A clips frame like `run`'s (without `wave`): every third group re-sent (two or three
    clips of one subject group, the copies under their own subject ids)."""
    rows = []
    for (source, channel, label), groups in STRATA.items():
        for g in range(groups):
            group = f"{source}:{channel}:{label}:{g}"
            for copy in range(1 + (g % 3 == 0) + (g % 6 == 0)):
                rows.append({"path": f"{source}/{channel}-{label}-{g}-{copy}.wav",
                             "label": label, "subject_id": f"{group}/{copy}",
                             "source": source, "channel": channel, "group": group,
                             "orig_sr": 8000 if channel == "call-center" else 48000,
                             "orig_channels": 2 if channel == "call-center" else 1})
    return pd.DataFrame(rows)


def strata_of(frame: pd.DataFrame) -> set[tuple]:
    return set(map(tuple, frame[["source", "channel", "label"]].to_numpy()))


def test_transfer_scores_every_clip_once_by_a_model_of_the_other_source(rq):
    clips = synthetic_clips()
    masks = rq.test_masks(clips, "transfer")
    assert (np.sum(masks, axis=0) == 1).all()
    trained_on = []
    for test in masks:
        train_sources = set(clips.loc[~test, "source"])
        assert len(train_sources) == 1
        assert set(clips.loc[test, "source"]) == set(rq.SOURCES) - train_sources
        trained_on += train_sources
    assert sorted(trained_on) == sorted(rq.SOURCES)  # both directions


def test_joint_folds_score_every_clip_once_and_keep_groups_and_strata_together(rq):
    clips = synthetic_clips()
    masks = rq.test_masks(clips, "joint")
    assert len(masks) == rq.FOLDS
    assert (np.sum(masks, axis=0) == 1).all()
    fold = rq.folds(clips)
    assert (np.argmax(masks, axis=0) == fold).all()
    assert (clips.assign(fold=fold).groupby("group")["fold"].nunique() == 1).all()
    every = strata_of(clips)
    assert min(STRATA.values()) >= rq.FOLDS  # enough groups for each fold to hold each stratum
    for test in masks:
        assert strata_of(clips[test]) == every


@pytest.mark.parametrize("design", ["joint", "transfer"])
def test_valid_split_holds_whole_groups_about_15_percent(rq, design):
    """As run_option takes it: from the clips each model trains on."""
    clips = synthetic_clips()
    for test in rq.test_masks(clips, design):
        rest = clips[~test].reset_index(drop=True)
        valid = rq.hold_out_valid(rest)
        assert not set(rest.loc[valid, "group"]) & set(rest.loc[~valid, "group"])
        share = rest.loc[valid, "group"].nunique() / rest["group"].nunique()
        assert 0.10 <= share <= 0.20, share
        assert strata_of(rest[valid]) == strata_of(rest)


def test_splits_are_fixed_by_cv_seed(rq):
    """The seed varies the model only: every seed's models see the same folds and valid split."""
    clips = synthetic_clips()
    assert (rq.folds(clips) == rq.folds(clips)).all()
    assert (rq.hold_out_valid(clips) == rq.hold_out_valid(clips)).all()


# --- cough_events -------------------------------------------------------------------------

def noise(seconds: float, amplitude: float, seed: int) -> np.ndarray:
    return (amplitude * np.random.default_rng(seed).standard_normal(round(seconds * SR))
            ).astype(np.float32)


def test_cough_events_keeps_bursts_and_cuts_the_silence_between(rq):
    bursts = [noise(0.3, 0.5, 1), noise(0.3, 0.5, 2)]
    wave = np.concatenate([noise(1.0, 1e-4, 3), bursts[0], noise(3.0, 1e-4, 4), bursts[1],
                           noise(1.0, 1e-4, 5)])
    events = rq.cough_events(wave, SR)
    # Each burst and its padding each side, within a frame of rounding at each edge.
    shortest = 2 * (0.3 + 2 * (rq.EVENT_PAD_S - rq.EVENT_FRAME_S))
    longest = 2 * (0.3 + 2 * (rq.EVENT_PAD_S + rq.EVENT_FRAME_S))
    assert shortest * SR <= len(events) <= longest * SR, len(events) / SR
    burst_energy = sum(float(np.square(b, dtype=np.float64).sum()) for b in bursts)
    assert float(np.square(events, dtype=np.float64).sum()) >= 0.999 * burst_energy
    for burst in bursts:  # whole and in order: the bursts start on frame boundaries here
        start = int(np.flatnonzero(events == burst[0])[0])
        assert np.array_equal(events[start:start + len(burst)], burst)


def test_cough_events_returns_the_whole_wave_when_events_are_too_short(rq):
    wave = np.concatenate([noise(1.5, 1e-4, 6), noise(0.1, 0.5, 7), noise(1.5, 1e-4, 8)])
    assert len(wave) > rq.EVENT_MIN_S * SR
    assert np.array_equal(rq.cough_events(wave, SR), wave)


def test_cough_events_returns_a_wave_shorter_than_a_frame_unchanged(rq):
    wave = noise(rq.EVENT_FRAME_S / 2, 0.5, 9)
    assert np.array_equal(rq.cough_events(wave, SR), wave)


@pytest.mark.parametrize("seconds", [0.05, 0.1, 0.29])
def test_cough_events_handles_a_wave_shorter_than_its_padding(rq, seconds):
    wave = noise(seconds, 0.5, 10)
    assert np.array_equal(rq.cough_events(wave, SR), wave)  # under EVENT_MIN_S: all of it


# --- per-source figures -------------------------------------------------------------------

def prediction_rows(source: str, channel: str, part: str, fold: int, trained_on: str,
                    positives: list[float], negatives: list[float]) -> list[dict]:
    rows = []
    for label, scores in (("positive", positives), ("negative", negatives)):
        for i, p in enumerate(scores):
            clip = f"{source}-{channel}-{label}-{part}{fold}-{i}"
            rows.append({"path": f"{clip}.wav", "label": label, "subject_id": clip,
                         "source": source, "channel": channel, "group": clip,
                         "orig_sr": 8000 if channel == "call-center" else 48000,
                         "orig_channels": 2 if channel == "call-center" else 1,
                         "part": part, "fold": fold, "seed": 42, "p": p,
                         "trained_on": trained_on})
    return rows


def transfer_predictions() -> pd.DataFrame:
    """Model 0 trained on covid19-cough scores coswara, inverted (within-channel AUC 0.0);
    model 1 trained on coswara scores covid19-cough, perfectly within each channel (1.0) but
    with the channel in the score. Both valid splits are symmetric about 0.5, so each model's
    threshold is 0.5. Two covid19-cough telegram negatives are one re-sent subject group."""
    rows = (prediction_rows("coswara", "web", "test", 0, "covid19-cough",
                            [0.15, 0.25], [0.3, 0.6, 0.7])
            + prediction_rows("covid19-cough", "call-center", "valid", 0, "covid19-cough",
                              [0.8, 0.9], [0.2, 0.1])
            + prediction_rows("covid19-cough", "call-center", "test", 1, "coswara",
                              [0.9, 0.8], [0.45, 0.42])
            + prediction_rows("covid19-cough", "telegram", "test", 1, "coswara",
                              [0.48, 0.4], [0.2, 0.1])
            + prediction_rows("coswara", "web", "valid", 1, "coswara", [0.7, 0.6], [0.3, 0.4]))
    frame = pd.DataFrame(rows)
    resent = (frame["channel"] == "telegram") & (frame["label"] == "negative")
    frame.loc[resent, "group"] = frame.loc[resent, "group"].iloc[0]
    return frame


def test_each_model_threshold_is_one_half(rq):
    """The premise of the hand-computed operating points below."""
    frame = transfer_predictions()
    for _, valid in frame[frame["part"] == "valid"].groupby("fold"):
        y = (valid["label"] == "positive").astype(int)
        assert rq.choose_threshold(y, valid["p"]) == pytest.approx(0.5, abs=1e-6)


def test_source_rows_are_its_test_clips_and_the_valid_splits_of_their_models(rq):
    frame = transfer_predictions()
    rows = rq.source_rows(frame, "coswara")
    test, valid = rows[rows["part"] == "test"], rows[rows["part"] == "valid"]
    assert set(test["source"]) == {"coswara"} and len(test) == 5
    assert set(valid["fold"]) == {0} and set(valid["source"]) == {"covid19-cough"}
    assert len(valid) == 4


def test_operating_point_at_each_model_own_threshold(rq):
    frame = transfer_predictions()
    # covid19-cough at 0.5: positives 0.9, 0.8 caught, 0.48, 0.4 missed; no negative above.
    assert rq.operating_point(rq.source_rows(frame, "covid19-cough")) == {
        "sensitivity": 0.5, "specificity": 1.0}
    # coswara at 0.5: both positives missed; one negative of three (0.3) below.
    point = rq.operating_point(rq.source_rows(frame, "coswara"))
    assert point == {"sensitivity": 0.0, "specificity": pytest.approx(1 / 3)}


def test_source_figures_within_channel_auc_per_source(rq):
    frame = transfer_predictions()
    covid = rq.source_figures(frame, "covid19-cough", "transfer")
    assert covid["within_channel"] == {"roc_auc": 1.0, "roc_auc_ci_low": 1.0,
                                       "roc_auc_ci_high": 1.0}
    assert covid["overall"]["roc_auc"] == pytest.approx(14 / 16)
    assert covid["channel call-center"]["roc_auc"] == covid["channel telegram"]["roc_auc"] == 1
    assert covid["leakage_negative"]["roc_auc"] == covid["leakage_positive"]["roc_auc"] == 1
    assert (covid["sensitivity"], covid["specificity"]) == (0.5, 1.0)
    # 8 clips, 4 positive, 7 subject groups (a re-sent pair is one); no margin in transfer.
    assert (covid["clips"], covid["positives"], covid["subjects"]) == (8, 4, 7)
    assert "margin" not in covid
    coswara = rq.source_figures(frame, "coswara", "transfer")
    assert coswara["within_channel"]["roc_auc"] == 0.0
    assert coswara["channel web"]["roc_auc"] == 0.0
    assert not any(key.startswith("leakage") for key in coswara)  # one channel
    assert (coswara["clips"], coswara["positives"], coswara["subjects"]) == (5, 2, 5)


def test_cross_source_figures(rq):
    figures = rq.cross_source_figures(transfer_predictions())
    # Positives beat 7, 7, 5, 3 (covid19-cough) and 1, 2 (coswara) of the 7 negatives.
    assert figures["overall, both sources"]["roc_auc"] == pytest.approx(25 / 42)
    # Negatives: coswara's 0.3, 0.6, 0.7 beat 2, 4, 4 of covid19-cough's four; positives:
    # coswara's all lower, which leaks as much as all higher.
    assert figures["source leakage, negative"]["roc_auc"] == pytest.approx(10 / 12)
    assert figures["source leakage, positive"]["roc_auc"] == 1.0


def joint_predictions() -> pd.DataFrame:
    """Two models scoring both sources, each channel the same mix in each fold, so that the
    metadata baseline is one constant per channel (within-channel AUC 0.5)."""
    rows = []
    for fold in (0, 1):
        rows += (prediction_rows("covid19-cough", "call-center", "test", fold, "both",
                                 [0.9 - fold / 10], [0.4 - fold / 10])
                 + prediction_rows("covid19-cough", "telegram", "test", fold, "both",
                                   [0.6 - fold / 10], [0.2 - fold / 10])
                 + prediction_rows("coswara", "web", "test", fold, "both",
                                   [0.3 - fold / 10], [0.7 - fold / 10])
                 + prediction_rows("coswara", "web", "valid", fold, "both", [0.8], [0.2]))
    return pd.DataFrame(rows).assign(trained_on="coswara+covid19-cough")


def test_joint_source_figures_margin_over_metadata(rq):
    frame = joint_predictions()
    covid = rq.source_figures(frame, "covid19-cough", "joint")
    assert covid["within_channel"]["roc_auc"] == 1.0
    assert covid["margin"]["roc_auc"] == pytest.approx(0.5)
    coswara = rq.source_figures(frame, "coswara", "joint")
    assert coswara["within_channel"]["roc_auc"] == 0.0
    assert coswara["margin"]["roc_auc"] == pytest.approx(-0.5)
    assert len(rq.source_rows(frame, "coswara")) == 4 + 4  # every fold scored coswara


# --- ensembles ----------------------------------------------------------------------------

def test_ensemble_of_means_each_clip_over_seeds(rq):
    """Seed 43's p is 1 - seed 42's, its rows in reverse order, one clip's nudged up by 0.2:
    every clip's mean is 0.5 but that one's, 0.6. As in the transfer design, a clip one
    model scored (test) is in another's valid split: two rows, each its own mean."""
    first = transfer_predictions()
    valid_of_model_0 = first.index[(first["part"] == "valid") & (first["fold"] == 0)][0]
    first.loc[valid_of_model_0, "path"] = first.loc[
        (first["part"] == "test") & (first["fold"] == 1), "path"].iloc[0]
    second = first.assign(seed=43, p=1 - first["p"])
    second.loc[0, "p"] += 0.2
    keys = ["part", "fold", "path"]
    ensemble = rq.ensemble_of([first, second.iloc[::-1]]).set_index(keys)
    assert len(ensemble) == len(first) and set(ensemble["seed"]) == {-1}
    nudged = tuple(first.loc[0, keys])
    assert ensemble.loc[nudged, "p"] == pytest.approx(0.6)
    assert np.allclose(ensemble.drop(index=[nudged])["p"], 0.5)


def test_help_explains_every_design(rq, capsys):
    with pytest.raises(SystemExit) as exit_:
        rq.main(["--help"])
    assert exit_.value.code == 0
    out = "".join(capsys.readouterr().out.split())  # argparse wraps lines, even at hyphens
    assert all("".join(f"{name}: {text}".split()) in out for name, text in rq.DESIGNS.items())
