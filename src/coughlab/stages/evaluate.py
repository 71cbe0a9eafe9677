"""Stage evaluate: test-split metrics that a recording-channel confound cannot hide, plus plots.

A model that learnt the phone line instead of the cough looks good overall, because in
crowd-sourced cough sets the channel predicts the label. So the report leads with the
within-channel ROC-AUC (subject-weighted mean of the per-channel AUCs over every channel of
every test source; a channel belongs to its source, so two sources' `web` are two channels)
and sets beside it: overall, per source and per channel figures; a metadata-only baseline
(source, channel, original sample rate and channel count; fit on train) and the model's paired
margin over it; channel leakage (how well the score tells channels apart within each label);
and a 95 % bootstrap CI that resamples test subjects for every AUC. Per source it gives the
within-channel ROC-AUC over that source's channels alone, and whether combine's manifest
trained on the source: one with no train clips (held out) is a cross-source figure; with two
test sources or more, source leakage too. The threshold is the balanced-prior operating point
of a Platt calibration fit on valid (see coughlab.metrics.OPERATING_POINT).

reports/metrics.json, the DVC metric that `dvc exp show` and `dvc metrics diff` compare,
holds only the ten numbers of METRICS_KEYS, headline first, then one per test source
(`source_metric_key`); reports/evaluation.json holds everything (definitions, per-source and
per-channel tables, calibration, confusion counts, the threshold that export-lambda ships).
Plots for `dvc plots`:
reports/plots/{roc,pr,confusion,roc_by_channel,auc_ci}.json.
`--verdict` prints the stored verdict again (the last step of `make repro`): a WARNING when
the margin's CI does not lie above 0, or when the test split is too small (TEST_SIZE_RULE).

What is scored is the exported graph (build/graph/model.onnx, stage export-graph): every valid
and test clip goes through it in onnxruntime, and it must agree with the pinned torch network
on featurize's windows within GRAPH_TOLERANCE, or evaluate fails. The numbers themselves are
the torch network's, because onnxruntime picks its kernels by CPU and the reports must be the
same bytes on every machine; the graph's version goes into evaluation.json, and export-lambda
packages no other graph.

The outputs are a function of the inputs only, on every x86-64 CPU: the network runs with
train's pinned kernels (coughlab.determinism, before torch loads; one thread, oneDNN off) and
the calibration in exactly rounded plain-Python arithmetic (coughlab.metrics).
"""
from __future__ import annotations

from coughlab.determinism import pin_cpu_kernels

pin_cpu_kernels()  # before torch loads: its kernel choice is made at import

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import soundfile as sf  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from coughlab import LABELS  # noqa: E402
from coughlab.atomic import atomic_write_text  # noqa: E402
from coughlab.determinism import reproducible_cpu_kernels  # noqa: E402
from coughlab.digest import model_version  # noqa: E402
from coughlab.export import GRAPH_FILE, onnx_predict, onnx_session  # noqa: E402
from coughlab.metrics import (  # noqa: E402
    METADATA_COLUMNS,
    OPERATING_POINT,
    binary_metrics,
    channel_auc,
    channel_names,
    choose_threshold,
    grouped_metrics,
    margin_warning,
    metadata_baseline_scores,
    platt_calibration,
    roc_auc,
    source_auc,
    with_ci,
    within_channel_auc,
    within_channel_breakdown,
    within_channel_margin,
)
from coughlab.nets import MODEL_FILE, load_model, load_split, predict_proba  # noqa: E402
from coughlab.stages.cli import path_option, stage_parser  # noqa: E402

GRAPH_TOLERANCE = 1e-5
GRAPH_COMPARED = ("onnxruntime: the exported graph on combine's clips vs the pinned torch "
                  "network on featurize's windows, every valid and test clip")
# Below this many test subjects of either label, an AUC and its bootstrap CI say little: at
# AUC 0.75 with 10 subjects per class the Hanley-McNeil standard error is about 0.11.
MIN_TEST_SUBJECTS_PER_LABEL = 10
TEST_SIZE_RULE = (f"at least {MIN_TEST_SUBJECTS_PER_LABEL} test subjects of each label, and "
                  "at least one recording channel with both labels")
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0  # fixed: the CI moves only when the scores do

HEADLINE = ("Test ROC-AUC within each recording channel, averaged over the channels of every "
            "test source weighted by their number of subjects; channels with one class only "
            "are skipped. A channel belongs to its source (two sources' `web` are two "
            "channels), so each source weighs by its test subjects, a source the model was not "
            "trained on (cross-source) included.")
BASELINE = ("Scores each clip with the train split's positive rate in its metadata cell "
            "(source x channel x original sample rate x channel count, smoothed towards the "
            "overall train rate). It never hears a cough.")
MARGIN = ("Model minus metadata baseline within-channel test ROC-AUC, the baseline counted as "
          "at least chance (0.5); paired: both scored on the same subject resamples. A CI that "
          "does not lie above 0 means the test split cannot tell the model from one that only "
          "knows how each clip was recorded.")
LEAKAGE = ("ROC-AUC of the model's score for the recording channel among clips of one label "
           "(one-vs-rest macro for more than two channels, folded so 0.5 = no leakage and "
           "1.0 = the score identifies the channel).")
SOURCES = ("Per test source, the headline's figure over that source's channels alone (the "
           "within-source within-channel ROC-AUC, subject-weighted, with its subject-bootstrap "
           "CI), its subjects, and its channel leakage where it has two channels or more. "
           "trained_on: whether combine's manifest has any of its clips in the train split. "
           "A source it has none of (held out: test only) gives a cross-source figure: how the "
           "model does on recordings made unlike anything it learnt from.")
SOURCE_LEAKAGE = ("ROC-AUC of the model's score for the source among test clips of one label "
                  "(one-vs-rest macro for more than two sources, folded so 0.5 = the score does "
                  "not tell the sources apart and 1.0 = it identifies the source).")
CROSS_SOURCE = "cross-source: not trained on"


# reports/metrics.json: (key, where in the report, which figure), headline first. Short keys,
# rounded to METRICS_DIGITS: `dvc exp show` gives each one a column.
METRICS_KEYS = (
    ("wc_auc", "headline", "within_channel_roc_auc"),
    ("wc_lo", "headline", "within_channel_roc_auc_ci_low"),
    ("wc_hi", "headline", "within_channel_roc_auc_ci_high"),
    ("margin", "margin", "within_channel_roc_auc"),
    ("leak_neg", "channel_leakage", "negative", "roc_auc"),
    ("leak_pos", "channel_leakage", "positive", "roc_auc"),
    ("auc", "test", "roc_auc"),
    ("pr_auc", "test", "pr_auc"),
    ("sens", "test", "sensitivity"),
    ("spec", "test", "specificity"),
)
METRICS_DIGITS = 4
METRICS_LEGEND = {
    "wc_auc": "within-channel test ROC-AUC (the headline: every channel of every test source, "
              "subjects-weighted), wc_lo..wc_hi its 95% CI",
    "margin": "wc_auc minus the metadata-only baseline's (counted as at least 0.5)",
    "leak_neg/leak_pos": "channel leakage among negatives/positives (0.5 = none)",
    "auc/pr_auc": "overall test ROC-AUC and PR-AUC (a channel confound inflates them)",
    "sens/spec": "test sensitivity and specificity at the threshold chosen on valid",
}


def source_metric_key(source: str, trained_on: bool) -> str:
    """metrics.json's key for one test source's within-channel ROC-AUC: auc_<source>, or
    auc_cross_<source> for one the model was not trained on, so that an experiment that holds
    a source out never compares its cross-source figure with another's within-source one.
    `make exps` drops keys that start with `auc`."""
    return f"auc_{source}" if trained_on else f"auc_cross_{source}"


def metrics_legend(by_source: dict) -> dict[str, str]:
    """METRICS_LEGEND, and a line for each test source's key (`source_report`'s figures)."""
    lines = dict(METRICS_LEGEND)
    for name, figures in by_source.items():
        trained = figures["trained_on"]
        lines[source_metric_key(name, trained)] = (
            f"within-channel test ROC-AUC over source {name}'s channels alone"
            + ("" if trained else f" ({CROSS_SOURCE})"))
    return lines


def with_channel(manifest: pd.DataFrame) -> pd.DataFrame:
    """Clips whose source gives no recording channel count as one channel per source."""
    channel = (manifest["channel"] if "channel" in manifest.columns
               else pd.Series(pd.NA, index=manifest.index))
    missing = channel.isna()
    if missing.any():
        print(f"evaluate: {int(missing.sum())} clips have no channel; each source counts as one "
              "channel for them")
    return manifest.assign(channel=channel.astype(object).where(~missing, manifest["source"]))


def scored_split(net, features: Path, manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """One row per clip of `split`: y, p (the model), and the manifest's columns by path."""
    data = load_split(features, split)
    with reproducible_cpu_kernels():
        p = predict_proba(net, data["x"])
    frame = pd.DataFrame({"path": data["path"], "y": data["y"].astype(int), "p": p})
    return frame.merge(manifest.drop(columns=["label", "split"]), on="path", how="left",
                       validate="one_to_one")


def graph_scores(graph: Path, clips: Path, paths: list[str]) -> np.ndarray:
    """P(positive) of each clip (mono, the pipeline's rate) through the exported graph."""
    session = onnx_session(graph)
    return np.array([onnx_predict(session, sf.read(clips / p, dtype="float32")[0][None])[0]
                     for p in paths], dtype=np.float64)


def check_graph(graph: Path, clips: Path, scored: pd.DataFrame) -> dict:
    """Score every clip of `scored` through the graph; it must agree with the torch network."""
    got = graph_scores(graph, clips, scored["path"].tolist())
    worst = float(np.max(np.abs(got - scored["p"].to_numpy()), initial=0.0))
    # The residual depends on this CPU's onnxruntime kernels: logged, never stored.
    print(f"evaluate: graph vs network {worst:.1e} (tolerance {GRAPH_TOLERANCE:g}) on "
          f"{len(scored)} valid and test clips")
    if not worst <= GRAPH_TOLERANCE:
        raise RuntimeError(f"{graph} disagrees with the trained network by {worst:.2e} "
                           f"(tolerance {GRAPH_TOLERANCE:g}): the export does not compute what "
                           "was trained; not evaluating it")
    return {"file": GRAPH_FILE, "version": model_version(graph), "clips": len(scored),
            "tolerance": GRAPH_TOLERANCE, "compared": GRAPH_COMPARED}


def test_size(test: pd.DataFrame, headline_channels: dict,
              what: str = "the test split is") -> dict:
    """Whether the test split, or one source's test clips (`what`, with its verb), can support
    its numbers (TEST_SIZE_RULE), and a warning if not."""
    subjects = {name: int(test.loc[test["y"] == k, "subject_id"].nunique())
                for k, name in enumerate(LABELS)}
    sufficient = (min(subjects.values()) >= MIN_TEST_SUBJECTS_PER_LABEL
                  and bool(headline_channels))
    warning = None if sufficient else (
        f"WARNING: {what} too small to support these numbers: "
        f"{subjects['negative']} negative and {subjects['positive']} positive subjects "
        f"(rule: {TEST_SIZE_RULE}); treat every figure and CI here as anecdotal.")
    return {"rule": TEST_SIZE_RULE, "subjects": subjects, "sufficient": sufficient,
            "warning": warning}


def ci(frame: pd.DataFrame, statistic, key: str = "roc_auc") -> dict:
    return with_ci(frame, statistic, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, key)


def by_group_with_ci(frame: pd.DataFrame, by: str | np.ndarray, threshold: float) -> dict:
    """`grouped_metrics` per source or channel, each with its subjects and ROC-AUC CI."""
    out = grouped_metrics(frame, by, threshold)
    for value, group in frame.groupby(by):
        bounds = ci(group, roc_auc)
        out[str(value)].update(subjects=int(group["subject_id"].nunique()),
                               roc_auc_ci_low=bounds["roc_auc_ci_low"],
                               roc_auc_ci_high=bounds["roc_auc_ci_high"])
    return out


def confound_report(test: pd.DataFrame) -> dict:
    """Headline, metadata baseline, margin and leakage on the test split, each with its CI."""
    baseline = test.assign(p=test["baseline"])
    breakdown = within_channel_breakdown(test)
    margin = {"definition": MARGIN, **ci(test, within_channel_margin, "within_channel_roc_auc")}
    warning = margin_warning(margin)
    return {
        "headline": {"definition": HEADLINE,
                     **ci(test, within_channel_auc, "within_channel_roc_auc"),
                     "channels": breakdown["used"], "skipped_channels": breakdown["skipped"]},
        "metadata_baseline": {
            "definition": BASELINE, "features": list(METADATA_COLUMNS), "fit_on": "train",
            **ci(baseline, within_channel_auc, "within_channel_roc_auc"), **ci(baseline, roc_auc),
            "by_channel": {str(c): ci(g, roc_auc)
                           for c, g in baseline.groupby(channel_names(baseline))}},
        "margin": {**margin, "ci_above_zero": warning is None, "warning": warning},
        "channel_leakage": {"definition": LEAKAGE,
                            **{name: ci(test[test["y"] == k], channel_auc)
                               for k, name in enumerate(LABELS)}},
        "bootstrap": {"unit": "subject", "resamples": BOOTSTRAP_RESAMPLES,
                      "seed": BOOTSTRAP_SEED, "level": 0.95,
                      "test_subjects": int(test["subject_id"].nunique())},
    }


def trained_sources(manifest: pd.DataFrame) -> set[str]:
    """The sources combine put train clips of: what the model learnt from."""
    return set(manifest.loc[manifest["split"] == "train", "source"].astype(str))


def no_roc_auc(source: pd.DataFrame, breakdown: dict) -> str | None:
    """Why a source has no within-channel ROC-AUC, as the headline says for channels."""
    if source["y"].nunique() < 2:
        return f"only {LABELS[int(source['y'].iloc[0])]} clips, no ROC-AUC"
    if not breakdown["used"]:
        return "no recording channel holds both labels, no within-channel ROC-AUC"
    return None


def source_figures(source: pd.DataFrame, trained_on: bool) -> dict:
    """One test source's within-channel ROC-AUC with its CI, size and channel leakage."""
    breakdown = within_channel_breakdown(source)
    several_channels = len(np.unique(channel_names(source))) >= 2
    return {
        "figure": "within-source" if trained_on else "cross-source",
        "trained_on": trained_on,
        **ci(source, within_channel_auc, "within_channel_roc_auc"),
        "no_roc_auc": no_roc_auc(source, breakdown),
        "subjects": int(source["subject_id"].nunique()),
        "positive_subjects": int(source.loc[source["y"] == 1, "subject_id"].nunique()),
        "clips": int(len(source)), "positive_clips": int(source["y"].sum()),
        "channels": breakdown["used"], "skipped_channels": breakdown["skipped"],
        "channel_leakage": ({name: ci(source[source["y"] == k], channel_auc)
                             for k, name in enumerate(LABELS)} if several_channels else None),
        "test_size": test_size(source, breakdown["used"],
                               f"source {source['source'].iloc[0]}'s test clips are"),
    }


def source_report(test: pd.DataFrame, trained: set[str]) -> dict:
    """Each test source's figures; with two sources or more, how well the score tells them
    apart within each label."""
    report = {"sources": {"definition": SOURCES, "by_source": {
        str(name): source_figures(group, str(name) in trained)
        for name, group in test.groupby(test["source"].astype(str))}}}
    if len(report["sources"]["by_source"]) >= 2:
        report["source_leakage"] = {"definition": SOURCE_LEAKAGE,
                                    **{name: ci(test[test["y"] == k], source_auc)
                                       for k, name in enumerate(LABELS)}}
    return report


def source_label(name: str, figures: dict) -> str:
    """`source <name>`, marked where it is a cross-source figure."""
    return f"source {name}" + ("" if figures["trained_on"] else f" ({CROSS_SOURCE})")


def auc_ci_rows(report: dict) -> list[dict]:
    """The AUCs with their CIs as plot rows: what the model, the baseline and the leakage show."""
    def row(kind, figure, d, key="roc_auc"):
        return {"kind": kind, "figure": figure, "roc_auc": d[key],
                "ci_low": d[f"{key}_ci_low"], "ci_high": d[f"{key}_ci_high"]}
    model, base = "model: label", "metadata baseline: label"
    leak = "model: channel leakage (0.5 = none)"
    rows = [row(model, "model, within-channel (headline)", report["headline"],
                "within_channel_roc_auc"),
            row(model, "model, overall", report["test"])]
    rows += [row(model, f"model, source {s}", m) for s, m in report["test_by_source"].items()]
    rows += [row(model, f"model, within-channel, {source_label(s, m)}", m,
                 "within_channel_roc_auc")
             for s, m in report["sources"]["by_source"].items()]
    rows += [row(model, f"model, channel {c}", m) for c, m in report["test_by_channel"].items()]
    rows += [row(base, "baseline, within-channel", report["metadata_baseline"],
                 "within_channel_roc_auc"),
             row(base, "baseline, overall", report["metadata_baseline"])]
    rows += [row(leak, f"leakage within {name}", report["channel_leakage"][name])
             for name in LABELS]
    if "source_leakage" in report:
        rows += [row("model: source leakage (0.5 = none)", f"source leakage within {name}",
                     report["source_leakage"][name]) for name in LABELS]
    return [r for r in rows if r["roc_auc"] is not None]


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
        "roc_by_channel": roc_by_channel(test),
    }


def roc_by_channel(test: pd.DataFrame) -> list[dict]:
    """ROC points of every channel with both classes, in curve order (`point`)."""
    rows = []
    for channel, group in test.groupby(channel_names(test)):
        if group["y"].nunique() < 2:
            continue
        fpr, tpr, thr = skm.roc_curve(group["y"], group["p"])
        rows += [{"channel": str(channel), "point": i, "fpr": float(f), "tpr": float(t),
                  "threshold": float(min(h, 1.0))}
                 for i, (f, t, h) in enumerate(zip(fpr, tpr, thr))]
    return rows


def verdict_lines(report: dict) -> list[str]:
    """The headline and margin in one line, with two test sources or more one line per source,
    then the warnings if there are any."""
    h, m = report["headline"], report["margin"]

    def fig(d, key, sign=""):
        if d[key] is None:
            return "n/a"
        bounds = ("" if d[f"{key}_ci_low"] is None else
                  f" [{d[f'{key}_ci_low']:{sign}.3f}, {d[f'{key}_ci_high']:{sign}.3f}]")
        return f"{d[key]:{sign}.3f}{bounds}"
    lines = [f"evaluate: within-channel ROC-AUC {fig(h, 'within_channel_roc_auc')}, margin over "
             f"the metadata-only baseline {fig(m, 'within_channel_roc_auc', '+')} (95% CIs, "
             f"subjects resampled)"]
    sources = (report.get("sources") or {}).get("by_source") or {}
    if len(sources) >= 2:
        lines += [f"evaluate: {source_label(name, s)}: within-channel ROC-AUC "
                  + (fig(s, "within_channel_roc_auc") if s["no_roc_auc"] is None
                     else f"n/a ({s['no_roc_auc']})") + f", {s['subjects']} subjects"
                  for name, s in sources.items()]
    source_warnings = [s["test_size"]["warning"] for s in sources.values()
                       if len(sources) >= 2 and s["test_size"]["warning"]]
    return lines + [w for w in (report["test_size"]["warning"], m["warning"]) if w] + \
        source_warnings


def headline_metrics(report: dict) -> dict[str, float | None]:
    """The numbers a person compares across experiments, from the full report: METRICS_KEYS,
    then each test source's within-channel ROC-AUC (`source_metric_key`)."""
    figures = []
    for key, *where in METRICS_KEYS:
        value = report
        for step in where:
            value = value[step]
        figures.append((key, value))
    figures += [(source_metric_key(name, s["trained_on"]), s["within_channel_roc_auc"])
                for name, s in report["sources"]["by_source"].items()]
    return {key: None if value is None else round(value, METRICS_DIGITS)
            for key, value in figures}


def evaluate(graph_dir: Path, model_dir: Path, features: Path, combined: Path,
             metrics_out: Path, report_out: Path, plots_out: Path) -> dict:
    net, _ = load_model(model_dir / MODEL_FILE)
    manifest = with_channel(pd.read_csv(combined / "manifest.csv", dtype={"subject_id": str}))
    manifest["baseline"] = metadata_baseline_scores(manifest)
    valid = scored_split(net, features, manifest, "valid")
    test = scored_split(net, features, manifest, "test")
    graph = check_graph(graph_dir / GRAPH_FILE, combined / "clips", pd.concat([valid, test]))
    slope, intercept = platt_calibration(valid["y"].to_numpy(), valid["p"].to_numpy())
    threshold = choose_threshold(valid["y"].to_numpy(), valid["p"].to_numpy())
    per_source = source_report(test, trained_sources(manifest))
    report = {
        "metrics": metrics_legend(per_source["sources"]["by_source"]),
        "graph": graph,
        "threshold": threshold,
        "operating_point": {"definition": OPERATING_POINT, "fit_on": "valid",
                            "calibration_slope": slope, "calibration_intercept": intercept},
        "test": {**binary_metrics(test["y"], test["p"], threshold),
                 **{k: v for k, v in ci(test, roc_auc).items() if k != "roc_auc"}},
        "valid": binary_metrics(valid["y"], valid["p"], threshold),
        "test_by_source": by_group_with_ci(test, "source", threshold),
        "test_by_channel": by_group_with_ci(test, channel_names(test), threshold),
        **confound_report(test),
        **per_source,
    }
    report["test_size"] = test_size(test, report["headline"]["channels"])
    plots = {**curves(test, threshold), "auc_ci": auc_ci_rows(report)}
    atomic_write_text(report_out, json.dumps(report, indent=2) + "\n")
    atomic_write_text(metrics_out, json.dumps(headline_metrics(report), indent=2) + "\n")
    plots_out.mkdir(parents=True, exist_ok=True)
    for name, rows in plots.items():
        atomic_write_text(plots_out / f"{name}.json", json.dumps(rows) + "\n")
    t = report["test"]
    print(f"evaluate: test ROC-AUC {t['roc_auc']:.3f}  PR-AUC {t['pr_auc']:.3f}  "
          f"sens {t['sensitivity']:.3f}  spec {t['specificity']:.3f}  at threshold {threshold:.3f}")
    print("\n".join(verdict_lines(report)))
    return report


def print_verdict(report_json: Path) -> None:
    """Print the verdict evaluate stored, so `make repro` ends with it even when evaluate was
    up to date and did not run."""
    if not report_json.is_file():
        sys.exit(f"{report_json} not found; run evaluate (dvc repro evaluate)")
    report = json.loads(report_json.read_text())
    if "margin" not in report or "test_size" not in report:
        sys.exit(f"{report_json} was written by an older evaluate: "
                 "re-run evaluate (dvc repro evaluate)")
    print("\n".join(verdict_lines(report)))


def main(argv: list[str] | None = None) -> None:
    parser, params = stage_parser("evaluate", "evaluate", __doc__)
    paths = params.paths
    path_option(parser, "--graph-dir", paths.graph, "export-graph's folder: the model.onnx scored")
    path_option(parser, "--model-dir", paths.model, "train's folder with model.pt")
    path_option(parser, "--features", paths.features, "featurize's {valid,test}.npz")
    path_option(parser, "--combined", paths.combined,
                "combine's folder: clips (for the graph), manifest.csv (subjects, channels, "
                "formats, the train split for the metadata baseline)")
    path_option(parser, "--metrics", paths.metrics,
                "the DVC metric to write: the numbers `dvc exp show` compares")
    path_option(parser, "--report", paths.evaluation,
                "the full evaluation JSON to write (or read, with --verdict)")
    path_option(parser, "--plots", paths.plots, "folder for the plot JSON files")
    parser.add_argument("--verdict", action="store_true",
                        help="only print the verdict stored in --report (headline, margin over "
                        "the metadata baseline, WARNINGs if any), then exit")
    args = parser.parse_args(argv)
    if args.verdict:
        print_verdict(args.report)
        return
    evaluate(args.graph_dir, args.model_dir, args.features, args.combined, args.metrics,
             args.report, args.plots)


if __name__ == "__main__":
    main()
