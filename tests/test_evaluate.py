import json

import numpy as np
import pandas as pd
import pytest

from coughlab import SPLITS
from coughlab.baselines import youden_threshold
from coughlab.metrics import binary_metrics, grouped_metrics


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
    frame = pd.DataFrame({"y": [0, 1, 0, 1], "p": [0.1, 0.9, 0.8, 0.2],
                          "channel": ["a", "a", "b", "b"]})
    out = grouped_metrics(frame, "channel", 0.5)
    assert out["a"]["roc_auc"] == 1.0 and out["b"]["roc_auc"] == 0.0
    json.dumps(out)  # serialisable for metrics.json


ONE_SOURCE = (("src", "phone", 4 / 5, SPLITS), ("src", "app", 1 / 5, SPLITS))


def write_stage_inputs(root, score, subjects=20, cells=ONE_SOURCE):
    """Features and manifest for evaluate where the 'model' score is stored in the features.

    `cells`: (source, channel, share of positive subjects, splits it has clips in), one
    recording format per channel, `subjects` subjects of two clips each per cell and split. By
    default one source whose phone subjects are mostly positive and app subjects mostly
    negative. `score(y, channel, source)` gives each clip's score.
    """
    features, rows = root / "features", []
    features.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in SPLITS:
        paths, ys, xs = [], [], []
        for source, channel, share, splits in cells:
            if split not in splits:
                continue
            for s in range(subjects):
                y = int(s < round(subjects * share))
                for clip in range(2):
                    path = f"{split}/{source}-{channel}{s}_{clip}.wav"
                    paths.append(path), ys.append(y)
                    xs.append(score(y, channel, source) + 0.01 * rng.normal())
                    rows.append({"path": path, "label": ("negative", "positive")[y],
                                 "subject_id": f"{split}-{source}-{channel}{s}",
                                 "source": source, "channel": channel,
                                 "orig_sr": 8000 if channel == "phone" else 48000,
                                 "orig_channels": 2 if channel == "phone" else 1, "split": split})
        np.savez(features / f"{split}.npz", path=np.array(paths), y=np.array(ys, np.int8),
                 x=np.array(xs, np.float32).reshape(-1, 1, 1, 1))
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)


def run_evaluate(tmp_path, monkeypatch, score, subjects=20, cells=ONE_SOURCE):
    """The evaluate stage with a stand-in model whose P(positive) is the stored score, and a
    stand-in graph that agrees with it (the graph check has its own tests in test_export)."""
    from coughlab.stages import evaluate as stage
    write_stage_inputs(tmp_path, score, subjects, cells)
    monkeypatch.setattr(stage, "load_model", lambda path: (None, None))
    monkeypatch.setattr(stage, "predict_proba", lambda net, x: x.reshape(-1).astype(np.float32))
    monkeypatch.setattr(stage, "check_graph", lambda graph, clips, scored: {"version": "stand-in"})
    stage.main(["--graph-dir", str(tmp_path), "--model-dir", str(tmp_path),
                "--features", str(tmp_path / "features"), "--combined", str(tmp_path),
                "--metrics", str(tmp_path / "metrics.json"),
                "--report", str(tmp_path / "evaluation.json"), "--plots", str(tmp_path / "plots")])
    text = (tmp_path / "evaluation.json").read_text()
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in evaluation.json")), stage


def test_a_model_that_learnt_the_channel_gets_the_warning(tmp_path, monkeypatch, capsys):
    report, stage = run_evaluate(tmp_path, monkeypatch,
                                 lambda y, channel, _: 0.8 if channel == "phone" else 0.2)
    assert report["test"]["roc_auc"] > 0.75  # the overall figure looks good ...
    assert (report["headline"]["within_channel_roc_auc"]
            == pytest.approx(0.5, abs=0.1))  # ... it isn't
    assert report["channel_leakage"]["negative"]["roc_auc"] == 1.0
    assert report["channel_leakage"]["positive"]["roc_auc"] == 1.0
    assert report["margin"]["ci_above_zero"] is False
    assert "WARNING" in report["margin"]["warning"]
    assert "WARNING" in capsys.readouterr().out
    # make repro's last step prints it again from evaluation.json, even if evaluate was cached.
    stage.main(["--verdict", "--report", str(tmp_path / "evaluation.json")])
    assert capsys.readouterr().out.splitlines()[-1] == report["margin"]["warning"]


def test_a_model_that_hears_the_label_gets_no_warning(tmp_path, monkeypatch, capsys):
    report, stage = run_evaluate(tmp_path, monkeypatch, lambda y, *_: 0.2 + 0.6 * y)
    assert report["headline"]["within_channel_roc_auc"] == 1.0
    assert report["headline"]["skipped_channels"] == {}
    assert report["metadata_baseline"]["within_channel_roc_auc"] == 0.5  # one format per channel
    assert report["margin"]["within_channel_roc_auc_ci_low"] > 0
    assert report["margin"]["warning"] is None
    assert report["channel_leakage"]["negative"]["roc_auc"] < 0.8
    assert "WARNING" not in capsys.readouterr().out
    stage.main(["--verdict", "--report", str(tmp_path / "evaluation.json")])
    assert "WARNING" not in capsys.readouterr().out


def test_metrics_json_holds_only_the_compared_numbers_headline_first(tmp_path, monkeypatch):
    """What `dvc exp show` and `dvc metrics diff` list: ten numbers and one per test source, no
    text, no tables, the within-channel headline and its CI first, each equal to the report's
    figure."""
    report, stage = run_evaluate(tmp_path, monkeypatch, lambda y, *_: 0.3 + 0.4 * y)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics)[:3] == ["wc_auc", "wc_lo", "wc_hi"]
    assert len(metrics) == len(stage.METRICS_KEYS) + len(report["sources"]["by_source"]) == 11
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())
    assert metrics["wc_auc"] == round(report["headline"]["within_channel_roc_auc"], 4)
    assert metrics["wc_lo"] == round(report["headline"]["within_channel_roc_auc_ci_low"], 4)
    assert metrics["margin"] == round(report["margin"]["within_channel_roc_auc"], 4)
    assert metrics["leak_pos"] == round(report["channel_leakage"]["positive"]["roc_auc"], 4)
    assert (metrics["auc"], metrics["sens"], metrics["spec"]) == tuple(
        round(report["test"][k], 4) for k in ("roc_auc", "sensitivity", "specificity"))
    # Every key has its line in the report's legend.
    legend = json.dumps(report["metrics"])
    assert all(key in legend for key in metrics)


def test_evaluation_json_keeps_what_consumers_read_and_states_the_operating_point(tmp_path,
                                                                                 monkeypatch):
    report, _ = run_evaluate(tmp_path, monkeypatch, lambda y, *_: 0.3 + 0.4 * y)
    # export_lambda (model.json, the model card) and the PR report read these.
    assert 0 < report["threshold"] < 1
    assert {"roc_auc", "pr_auc", "sensitivity", "specificity", "n"} <= set(report["test"])
    assert "Platt" in report["operating_point"]["definition"]
    assert report["operating_point"]["fit_on"] == "valid"
    for group in (*report["test_by_channel"].values(), *report["test_by_source"].values()):
        assert group["roc_auc_ci_low"] <= group["roc_auc"] <= group["roc_auc_ci_high"]
    assert report["bootstrap"] == {"unit": "subject", "resamples": 1000, "seed": 0,
                                   "level": 0.95, "test_subjects": 40}
    by_channel = json.loads((tmp_path / "plots" / "roc_by_channel.json").read_text())
    assert {r["channel"] for r in by_channel} == {"phone", "app"}
    auc_ci = json.loads((tmp_path / "plots" / "auc_ci.json").read_text())
    headline = next(r for r in auc_ci if r["figure"] == "model, within-channel (headline)")
    assert headline["roc_auc"] == report["headline"]["within_channel_roc_auc"]


def test_verdict_of_a_report_from_before_the_confound_figures_is_a_clear_error(tmp_path):
    from coughlab.stages import evaluate as stage
    (tmp_path / "evaluation.json").write_text(json.dumps({"threshold": 0.5, "test": {}}))
    with pytest.raises(SystemExit, match="re-run evaluate"):
        stage.main(["--verdict", "--report", str(tmp_path / "evaluation.json")])
    with pytest.raises(SystemExit, match="not found; run evaluate"):
        stage.main(["--verdict", "--report", str(tmp_path / "missing.json")])


def test_clips_without_a_channel_count_one_channel_per_source():
    from coughlab.stages.evaluate import with_channel
    manifest = pd.DataFrame({"source": ["coughvid", "virufy", "local"],
                             "channel": ["app", None, None]})
    assert with_channel(manifest)["channel"].tolist() == ["app", "virufy", "local"]
    assert with_channel(manifest.drop(columns="channel"))["channel"].tolist() == \
        ["coughvid", "virufy", "local"]


def test_make_repro_ends_with_the_verdict():
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    # --no-print-directory: under `make test` this make is nested and would add "Leaving directory".
    dry = subprocess.run(["make", "--no-print-directory", "-n", "repro", "STAMP=/dev/null",
                          "VENV=.venv"], cwd=root, capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()
    assert dry[-1].endswith("-m coughlab.stages.evaluate --verdict")


def test_a_test_split_too_small_for_its_numbers_says_so(tmp_path, monkeypatch, capsys):
    """6 clips used to print `within-channel ROC-AUC 1.000 [1.000, 1.000]` with no warning."""
    from coughlab.model_card import model_card

    report, stage = run_evaluate(tmp_path, monkeypatch, lambda y, *_: 0.2 + 0.6 * y,
                                 subjects=5)
    size = report["test_size"]
    assert size["subjects"] == {"negative": 5, "positive": 5} and not size["sufficient"]
    assert report["headline"]["within_channel_roc_auc"] == 1.0  # a perfect score, but ...
    assert "too small to support these numbers" in size["warning"]
    assert size["warning"] in capsys.readouterr().out
    stage.main(["--verdict", "--report", str(tmp_path / "evaluation.json")])
    assert size["warning"] in capsys.readouterr().out
    meta = {"version": "v", "input_seconds": 30.0, "sample_rate": 16000, "threshold": 0.5,
            "quality": {"min_seconds": 0.3, "silence_dbfs": -60.0},
            "parity": {"tolerance": 1e-4, "clips": 3},
            "provenance": {"data_sources": ["local"], "data_md5": "d", "features_md5": "f",
                           "model_md5": "m", "params": {}}}
    lines = model_card(meta, report).splitlines()
    title = next(i for i, line in enumerate(lines) if line.startswith("# Model card"))
    assert lines[title + 2] == f"> **{size['warning']}**"  # first thing under the title


def test_a_test_split_of_enough_subjects_gets_no_size_warning(tmp_path, monkeypatch, capsys):
    report, _ = run_evaluate(tmp_path, monkeypatch, lambda y, *_: 0.2 + 0.6 * y)
    assert report["test_size"]["sufficient"] and report["test_size"]["warning"] is None
    assert "too small" not in capsys.readouterr().out


# Sources cc (two channels) and cs (`web`) are trained on; cv, another `web`, is held out:
# test clips only, as data.split.held_out_sources puts them.
HELD_OUT_WEB = (("cc", "phone", 4 / 5, SPLITS), ("cc", "app", 1 / 5, SPLITS),
                ("cs", "web", 1 / 2, SPLITS), ("cv", "web", 1 / 2, ("test",)))


def hears_all_but_cv(y, channel, source):
    """Ranks every trained source's clips right, and the held-out cv's backwards, higher up."""
    return 0.95 - 0.05 * y if source == "cv" else 0.2 + 0.6 * y


def test_two_sources_web_channels_are_two_channels_in_every_table(tmp_path, monkeypatch):
    report, _ = run_evaluate(tmp_path, monkeypatch, hears_all_but_cv, cells=HELD_OUT_WEB)
    channels = {"cc/app", "cc/phone", "cs/web", "cv/web"}
    assert set(report["headline"]["channels"]) == channels
    # Subjects-weighted over all channels of all sources: 20 subjects each, cv/web at 0.
    assert report["headline"]["within_channel_roc_auc"] == 0.75
    assert report["headline"]["channels"]["cv/web"] == {"roc_auc": 0.0, "subjects": 20}
    assert set(report["test_by_channel"]) == channels
    assert set(report["metadata_baseline"]["by_channel"]) == channels
    by_channel = json.loads((tmp_path / "plots" / "roc_by_channel.json").read_text())
    assert {r["channel"] for r in by_channel} == channels


def test_each_source_has_its_figure_and_a_held_out_one_is_cross_source(tmp_path, monkeypatch,
                                                                       capsys):
    report, stage = run_evaluate(tmp_path, monkeypatch, hears_all_but_cv, cells=HELD_OUT_WEB)
    sources = report["sources"]["by_source"]
    assert list(sources) == ["cc", "cs", "cv"]
    cc, cv = sources["cc"], sources["cv"]
    assert (cc["trained_on"], cc["figure"]) == (True, "within-source")
    assert (cv["trained_on"], cv["figure"]) == (False, "cross-source")
    assert cc["within_channel_roc_auc"] == 1.0 and cc["no_roc_auc"] is None
    assert (cv["within_channel_roc_auc"], cv["within_channel_roc_auc_ci_low"],
            cv["within_channel_roc_auc_ci_high"]) == (0.0, 0.0, 0.0)
    assert (cc["subjects"], cc["positive_subjects"]) == (40, 20)  # 16 phone + 4 app
    assert (cv["subjects"], cv["positive_subjects"]) == (20, 10)
    assert set(cc["channels"]) == {"app", "phone"}  # inside one source, no prefix
    assert cc["channel_leakage"]["negative"]["roc_auc_ci_low"] is not None
    assert cv["channel_leakage"] is None  # one channel: nothing to tell apart
    # The score sits higher on cv's clips whatever their label: it tells the sources apart.
    leakage = report["source_leakage"]
    for label in ("negative", "positive"):
        assert leakage[label]["roc_auc_ci_low"] <= leakage[label]["roc_auc"]
        assert leakage[label]["roc_auc"] > 0.7
    assert "cross-source" in report["sources"]["definition"]
    rows = {r["figure"]: r for r in
            json.loads((tmp_path / "plots" / "auc_ci.json").read_text())}
    assert rows["model, within-channel, source cv (cross-source: not trained on)"]["roc_auc"] == 0
    assert "source leakage within negative" in rows
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics)[len(stage.METRICS_KEYS):] == ["auc_cc", "auc_cs", "auc_cross_cv"]
    assert (metrics["auc_cc"], metrics["auc_cross_cv"]) == (1.0, 0.0)
    assert all(key in json.dumps(report["metrics"]) for key in metrics)  # a legend line each
    verdict = capsys.readouterr().out
    assert "source cv (cross-source: not trained on): within-channel ROC-AUC 0.000" in verdict


def test_a_source_without_both_labels_in_a_channel_has_no_auc_and_says_why(tmp_path,
                                                                         monkeypatch):
    cells = (*ONE_SOURCE, ("neg", "web", 0.0, SPLITS),
             ("split", "pos-line", 1.0, SPLITS), ("split", "neg-line", 0.0, SPLITS))
    report, _ = run_evaluate(tmp_path, monkeypatch, lambda y, *_: 0.2 + 0.6 * y, cells=cells)
    sources = report["sources"]["by_source"]
    assert sources["src"]["within_channel_roc_auc"] == 1.0
    for name, why in (("neg", "only negative clips, no ROC-AUC"),
                      ("split", "no recording channel holds both labels, no within-channel "
                                "ROC-AUC")):
        assert sources[name]["within_channel_roc_auc"] is None
        assert sources[name]["within_channel_roc_auc_ci_low"] is None
        assert sources[name]["no_roc_auc"] == why
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["auc_neg"] is None and metrics["auc_src"] == 1.0


def test_one_source_adds_its_entry_and_nothing_else_and_the_same_bytes_each_run(tmp_path,
                                                                                 monkeypatch):
    outputs = []
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
        report, stage = run_evaluate(tmp_path / run, monkeypatch, lambda y, *_: 0.3 + 0.4 * y)
        outputs.append({p.relative_to(tmp_path / run): p.read_bytes()
                        for p in sorted((tmp_path / run).rglob("*"))
                        if p.is_file() and p.suffix == ".json"})
    assert outputs[0] == outputs[1] and len(outputs[0]) == 7  # 2 reports, 5 plots
    metrics = json.loads((tmp_path / "first" / "metrics.json").read_text())
    assert list(metrics) == [key for key, *_ in stage.METRICS_KEYS] + ["auc_src"]
    assert metrics["auc_src"] == metrics["wc_auc"]
    assert "source_leakage" not in report  # one source: nothing to tell apart
    assert report["sources"]["by_source"]["src"]["trained_on"] is True
    assert set(report["test_by_channel"]) == {"app", "phone"}  # channel names as before


def test_a_source_with_too_few_test_subjects_of_a_label_says_so(tmp_path, monkeypatch, capsys):
    cells = (*ONE_SOURCE, ("few", "web", 1 / 10, SPLITS))
    report, _ = run_evaluate(tmp_path, monkeypatch, lambda y, *_: 0.2 + 0.6 * y, cells=cells)
    sources = report["sources"]["by_source"]
    few = sources["few"]["test_size"]
    assert (few["sufficient"], few["subjects"]) == (False, {"negative": 18, "positive": 2})
    assert few["warning"].startswith("WARNING: source few's test clips are too small")
    assert sources["src"]["test_size"]["warning"] is None
    assert report["test_size"]["warning"] is None  # the split as a whole is big enough
    assert few["warning"] in capsys.readouterr().out
