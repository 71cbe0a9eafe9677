"""The model card follows the Hugging Face / Mitchell et al. layout, for the synthetic sample and
for real data, and never quotes a result that belongs to another model."""
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from coughlab import model_card as mc
from coughlab.provenance import dvc_md5
from coughlab.sample import generate

from helpers import write_evaluation

ROOT = Path(__file__).resolve().parents[1]


def meta(sources=("local",), data_md5=mc.SAMPLE_DATA_MD5) -> dict:
    return {"version": "0123456789ab", "input_seconds": 30.0, "sample_rate": 16000,
            "threshold": 0.5, "quality": {"min_seconds": 0.3, "silence_dbfs": -60.0},
            "parity": {"tolerance": 1e-4, "clips": 3},
            "provenance": {"data_sources": list(sources), "data_md5": data_md5,
                           "features_md5": "f", "model_md5": "m",
                           "params": {"model": {"arch": "cnn"}, "train": {"members": 1}}}}


@pytest.fixture
def evaluation(tmp_path) -> dict:
    """evaluate's report in brief, with the test confusion: 17 of 19 positives, 12 of 20
    negatives, and a Platt fit."""
    report = json.loads(write_evaluation(tmp_path / "evaluation.json").read_text())
    report["test"].update(n=39, positives=19, sensitivity=17 / 19, specificity=12 / 20,
                          confusion={"tp": 17, "fn": 2, "tn": 12, "fp": 8})
    report["operating_point"] = {"calibration_slope": 1.08, "calibration_intercept": 0.32}
    report["test_size"]["subjects"] = {"negative": 4, "positive": 4}
    return report


def front_matter(card: str) -> dict:
    first, block, _ = card.split("---\n", 2)
    assert first == ""  # the very first line opens it, as Hugging Face reads it
    return yaml.safe_load(block)


def section(card: str, title: str) -> str:
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_metadata_block_names_licence_datasets_and_metrics(evaluation):
    sample = front_matter(mc.model_card(meta(), evaluation))
    assert sample["license"] == "mit" and sample["datasets"] == [mc.SAMPLE_DATASET]
    assert {"roc_auc", "pr_auc"} <= set(sample["metrics"])
    results = sample["model-index"][0]["results"][0]["metrics"]
    assert {"name": "within-channel ROC-AUC (headline)", "type": "roc_auc", "value": 0.9} in results
    real = front_matter(mc.model_card(meta(["covid19-cough", "virufy"], "x.dir"), evaluation))
    assert real["license"] == "other" and real["datasets"] == ["covid19-cough", "virufy"]
    assert "synthetic-data" not in real["tags"]


def test_details_use_and_out_of_scope_are_stated(evaluation):
    card = mc.model_card(meta(), evaluation)
    details = section(card, "Model details")
    for field in ("**Licence:**", "**Authors:**", "**Contact:**", "**Version:**"):
        assert field in details
    assert "**Date:** not written here, on purpose" in details  # not the clock: reproducible
    assert "**Out of scope:**" in section(card, "Intended use")
    assert "a **score** (not a calibrated probability)" in section(card, "Intended use")
    assert "python -m coughlab.predict" in section(card, "How to use")


def test_training_data_has_size_balance_and_collection(evaluation):
    manifest = pd.DataFrame({
        "split": ["train"] * 4 + ["valid", "test"], "label": ["positive", "negative"] * 3,
        "subject_id": ["a", "a", "b", "c", "d", "e"], "source": ["sample"] * 6,
        "channel": ["app", "phone", "app", None, "app", "phone"]})
    summary = mc.data_summary(manifest)
    assert summary["splits"]["train"] == {"clips": 4, "positive_clips": 2, "subjects": 3,
                                          "positive_subjects": 2}
    assert summary["channels"] == {"sample": {"app": 3, "phone": 2, "sample": 1}}  # none: source
    data = section(mc.model_card(meta(), evaluation, summary), "Training and evaluation data")
    assert "| train | 4 | 2 | 3 | 2 |" in data and "SYNTHETIC sample" in data
    assert "Collection: `python -m coughlab.sample data`" in data
    # The test size, and the rule it is judged by, whether or not it passes.
    assert "3 subjects (4 negative, 4 positive)" in data
    assert "Rule for a test split that supports its numbers: at least 10" in data


def test_sensitivity_specificity_get_intervals_and_predictive_values_a_prevalence(evaluation):
    card = mc.model_card(meta(), evaluation)
    metrics = section(card, "Metrics (test split, 95 % CIs from a bootstrap over subjects "
                            "unless stated)")
    assert "| sensitivity at threshold 0.500 | 0.895 | [0.686, 0.971] (Wilson, over clips) |" \
        in metrics
    assert "| specificity at threshold 0.500 | 0.600 | [0.387, 0.781] (Wilson, over clips) |" \
        in metrics
    assert "| PR-AUC | 0.900 | not computed by evaluate |" in metrics
    meaning = section(card, "What the score means")
    # PPV = 0.895 * 0.05 / (0.895 * 0.05 + 0.4 * 0.95) = 0.105
    assert "| 5% | 0.105 [" in meaning and "| 1% |" in meaning and "| 20% |" in meaning
    assert "slope 1.080, intercept 0.320" in meaning and "not a calibrated probability" in meaning


def test_the_cross_source_result_is_quoted_only_for_the_model_it_belongs_to(evaluation):
    """The user's own data once got "at chance (ROC-AUC 0.53 ...)", a result of another model:
    the measured transfer is quoted only for a model trained on a source it was measured from."""
    def limits(*args):
        return section(mc.model_card(meta(*args), evaluation), "Known limits")

    measured = "Another source scores at chance or below"
    assert measured in limits(["covid19-cough"], "x.dir")
    assert measured in limits(["coughvid", "coswara"], "x.dir")
    assert measured not in limits(["local"], "your-data.dir")
    assert "Not checked on any other source" in limits(["local"], "your-data.dir")
    assert measured not in limits() and "Synthetic data only" in limits()
    assert measured not in limits(["coughvid"], "x.dir")
    # A local zone holding covid19-cough's recordings: the clips' source counts, once trained on.
    zone = {**evaluation, "sources": {"by_source": {
        "covid19-cough": {"trained_on": True, "test_size": {"warning": None}}}}}
    assert measured in "\n".join(mc.known_limits(meta(["local"], "zone.dir"), zone))
    held_out = {**evaluation, "sources": {"by_source": {"covid19-cough": {
        "trained_on": False, "test_size": {"warning": None}, "within_channel_roc_auc": 0.41,
        "within_channel_roc_auc_ci_low": 0.3, "within_channel_roc_auc_ci_high": 0.5,
        "subjects": 40, "positive_subjects": 20}}}}
    assert measured not in "\n".join(mc.known_limits(meta(["local"], "zone.dir"), held_out))


def test_the_measured_transfer_is_the_benchmarks_default_ensemble():
    """MEASURED_TRANSFER is a copy of benchmarks/results/realdata_sources.json: it must not
    drift from what the benchmark measured for conf/'s default (design transfer, xK)."""
    results = json.loads((ROOT / "benchmarks" / "results" / "realdata_sources.json").read_text())
    transfer = results["designs"]["transfer"]
    default = transfer["options"][transfer["default"]]
    ensemble = max((k for k in default["coswara"] if k.startswith("x")), key=lambda k: int(k[1:]))
    assert ensemble == f"x{transfer['default_members']}"
    for (trained, scored), figures in mc.MEASURED_TRANSFER.items():
        assert trained != scored
        f = default[scored][ensemble]["within_channel"]
        assert figures == (round(f["mean"], 3), round(f["ci_low"], 2), round(f["ci_high"], 2))


def test_page_sentence_says_synthetic_or_names_the_real_sources():
    def sentence(sources, by_source=None):
        evaluation = {} if by_source is None else {"sources": {"by_source": {
            name: {"trained_on": trained} for name, trained in by_source.items()}}}
        return mc.trained_on(meta(sources, "x.dir")["provenance"], evaluation)

    assert "SYNTHETIC" in mc.trained_on(meta()["provenance"], {})
    real = sentence(["local"])
    assert "SYNTHETIC" not in real and "real cough recordings from: local" in real
    assert "Held out" not in real and "no better than chance" not in real
    held_out = sentence(["covid19-cough", "coswara"], {"covid19-cough": True, "coswara": False})
    assert "recordings from: covid19-cough. Held out of training" in held_out
    assert "learnt from: coswara. Tested on coughs recorded elsewhere" in held_out
    assert held_out.endswith("It is not a medical device and was not validated for diagnosis.")
    # A local zone of public recordings: the clips' sources are named, and what was measured.
    zone = sentence(["local"], {"covid19-cough": True, "coswara": True})
    assert "recordings from: covid19-cough, coswara. Tested on" in zone
    assert "no better than chance" in zone


def test_sample_md5_is_the_regenerated_samples(tmp_path):
    generate(tmp_path / "data", n_subjects=48)
    assert dvc_md5(tmp_path / "data") == mc.SAMPLE_DATA_MD5


def test_channels_of_the_training_data_are_counted_within_their_source(evaluation):
    """Two sources that both call a channel `web` record it two ways: two channels."""
    manifest = pd.DataFrame({"split": ["train"] * 3, "label": ["positive", "negative"] * 1
                             + ["negative"], "subject_id": ["a", "b", "c"],
                             "source": ["coswara", "coswara", "coughvid"], "channel": "web"})
    summary = mc.data_summary(manifest)
    assert summary["channels"] == {"coughvid": {"web": 1}, "coswara": {"web": 2}}
    data = section(mc.model_card(meta(["coswara", "coughvid"], "x.dir"), evaluation, summary),
                   "Training and evaluation data")
    assert ("Clips per source, and per recording channel within it: `coswara` 2 (`web` 2), "
            "`coughvid` 1 (`web` 1).") in data


def with_sources(evaluation: dict, held_out: bool) -> dict:
    """evaluation with evaluate's per-source figures: covid19-cough trained on, coswara held
    out of training (test only) or trained on, and a source whose test clips are negative."""
    def source(auc, low, high, trained, subjects, positives, why=None):
        return {"figure": "within-source" if trained else "cross-source", "trained_on": trained,
                "within_channel_roc_auc": auc, "within_channel_roc_auc_ci_low": low,
                "within_channel_roc_auc_ci_high": high, "no_roc_auc": why,
                "subjects": subjects, "positive_subjects": positives}
    by_source = {"covid19-cough": source(0.71, 0.62, 0.8, True, 120, 40),
                 "coswara": source(0.52, 0.44, 0.6, not held_out, 80, 20),
                 "virufy": source(None, None, None, True, 5, 0, "only negative clips, no ROC-AUC")}
    leakage = {"roc_auc": 0.83, "roc_auc_ci_low": 0.77, "roc_auc_ci_high": 0.88}
    return {**evaluation, "sources": {"definition": "...", "by_source": by_source},
            "source_leakage": {"definition": "...", "negative": leakage, "positive": leakage}}


def test_metrics_have_a_per_source_table_with_the_cross_source_row_marked(evaluation):
    sources = ["covid19-cough", "coswara", "virufy"]
    card = mc.model_card(meta(sources, "x.dir"), with_sources(evaluation, held_out=True))
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section(
        card, "Metrics (test split, 95 % CIs from a bootstrap over subjects unless stated)")
        .splitlines() if line.startswith("|")]
    assert ["`covid19-cough`", "0.710", "[0.620, 0.800]", "120", "40", "yes"] in rows
    assert ["`coswara` (**cross-source**)", "0.520", "[0.440, 0.600]", "80", "20",
            "no (held out: test only)"] in rows
    assert ["`virufy`", "n/a", "only negative clips, no ROC-AUC", "5", "0", "yes"] in rows
    assert ["source leakage among negative clips (0.5 = none)", "0.830", "[0.770, 0.880]"] \
        in rows
    assert "a held-out source counts like any other" in card  # how the headline combines
    data = section(card, "Training and evaluation data")
    assert ("trained on real cough recordings from: covid19-cough, virufy. Held out of "
            "training, to test it on recordings unlike those it learnt from: coswara.") in data


def test_a_cross_source_figure_of_the_evaluation_is_stated_in_the_known_limits(evaluation):
    sources = ["covid19-cough", "coswara", "virufy"]
    held_out = section(mc.model_card(meta(sources, "x.dir"),
                                     with_sources(evaluation, held_out=True)), "Known limits")
    assert ("**Measured on a source it was not trained on:** `coswara` (80 subjects, 20 "
            "positive): within-channel ROC-AUC 0.520 [0.440, 0.600]") in held_out
    assert "Not checked on any other source" not in held_out
    trained = section(mc.model_card(meta(sources, "x.dir"),
                                    with_sources(evaluation, held_out=False)), "Known limits")
    # Nothing held out: what the benchmark measured for models trained on covid19-cough.
    assert "Measured on a source" not in trained and "Not checked on any other source" not in \
        trained and "Another source scores at chance or below" in trained
    # The benchmark's measurement stays where it belongs, beside a measured one.
    alone = section(mc.model_card(meta(["covid19-cough"], "x.dir"), evaluation), "Known limits")
    assert "chance or below" in alone and "Measured on a source" not in alone
    assert "chance or below" in held_out
