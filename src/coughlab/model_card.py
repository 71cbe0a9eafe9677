"""The model card export-lambda writes beside model.json: build/lambda/model_card.md.

What a person needs before trusting a score, in the sections of Mitchell et al., "Model Cards
for Model Reporting" (2019) and the Hugging Face card layout (YAML metadata first: licence,
datasets, metrics): what the model is, what it is for and not for, how to use it, which data
(size, balance, collection, licences) it was trained on, how good it is on the test split with
95 % CIs (per source too, a source held out of training marked as the cross-source figure it
is), what the score means (not a calibrated probability; PPV and NPV at stated
prevalences), what it is known not to do, and where it came from. Everything comes from
model.json, evaluate's report and combine's manifest, never from this machine (no dates,
paths or measured timings), so the card is a function of the stage's inputs like every other
DVC output; the Lambda serves it at GET ?model_card and the recording page links to it. Source and
channel names come from data files: each is a code span that renders as itself
(coughlab.escape), never Markdown.
"""
from __future__ import annotations

import json
import math
import sys
from typing import Iterable

import yaml

from coughlab import SPLITS
from coughlab.escape import markdown_code
from coughlab.sources import SOURCES

MODEL_CARD = "model_card.md"
# data/'s md5 (as data.dvc records it) when it holds the embedded synthetic sample that
# `python -m coughlab.sample data` writes; tests/test_model_card.py regenerates it to check.
SAMPLE_DATA_MD5 = "3f69844b0eccd1df55ffcb3b3731c55f.dir"
SAMPLE_DATASET = "coughlab synthetic sample"
PROJECT_LICENCE = "mit"  # pyproject.toml's; a model trained on the sample carries it
# Prevalences the card states PPV and NPV at: a screening-like, an outbreak-like and a
# symptomatic-clinic-like share of positives.
PREVALENCES = (0.01, 0.05, 0.20)
Z95 = 1.959963984540054
# What models of this pipeline (conf/'s default for real data, 3 members) scored on a source
# they were not trained on: (trained on, scored on) -> within-channel ROC-AUC and its 95 %
# subject-bootstrap CI, from benchmarks/results/realdata_sources.json (design transfer; a test
# fails when the two drift apart). docs/quality.md: Round 3.
MEASURED_TRANSFER = {("covid19-cough", "coswara"): (0.570, 0.48, 0.64),
                     ("coswara", "covid19-cough"): (0.368, 0.32, 0.41)}


def cross_source(sources: Iterable[str]) -> str | None:
    """The measured transfer between public sources, for a model trained on any of them."""
    pairs = [(a, b, figures) for (a, b), figures in MEASURED_TRANSFER.items() if a in sources]
    if not pairs:
        return None
    measured = "; ".join(
        f"trained on {markdown_code(a, in_table=False)} and scored on "
        f"{markdown_code(b, in_table=False)}, within-channel ROC-AUC {auc:.2f} [{low:.2f}, "
        f"{high:.2f}]" for a, b, (auc, low, high) in pairs)
    return ("**Another source scores at chance or below.** Models of this pipeline (its "
            f"default for real data) were scored on a public source they never heard: {measured}"
            " (0.5 is chance; below it, the score points the wrong way). No option tried changed "
            "that (docs/quality.md, Round 3). Expect the same of this one unless it is shown "
            "otherwise: the figures above hold only for recordings made like the training data.")


# What the per-source table shows, and how the headline combines the sources (card and PR report).
PER_SOURCE = ("Per test source, the within-channel ROC-AUC over its own channels, with its test "
              "subjects and positive subjects. The headline averages every channel of every test "
              "source by subjects, so each source weighs by its test subjects and a held-out "
              "source counts like any other. A source the model was not trained on (combine put "
              "none of its clips in train) gives a **cross-source** figure.")


def is_sample(derived: dict) -> bool:
    """Whether the model was trained on the embedded synthetic sample (and nothing else)."""
    return derived["data_sources"] == ["local"] and derived["data_md5"] == SAMPLE_DATA_MD5


def trained_sources(derived: dict, evaluation: dict) -> list[str]:
    """The sources the model learnt from: those its test clips came from and combine trained
    on (a local zone may hold covid19-cough's and Coswara's), else the ones params name."""
    by_source = (evaluation.get("sources") or {}).get("by_source") or {}
    trained = [name for name, s in by_source.items() if s["trained_on"]]
    return trained or [s for s in derived["data_sources"] if s not in by_source]


def trained_on(derived: dict, evaluation: dict) -> str:
    """One plain sentence on the training data, for the card and the recording page; a source
    evaluate found no train clips of (`held_out`) is named as held out, not as trained on. Where
    the pipeline's models were measured on another source, it says in plain words what that
    showed."""
    if is_sample(derived):
        return ("This demo model was trained on a SYNTHETIC sample: computer-generated "
                "cough-like sounds, not recordings of people. Its score says nothing about "
                "anyone's health.")
    names = trained_sources(derived, evaluation)
    own = " (your own labelled recordings)" if "local" in names else ""
    held = list(held_out(evaluation))
    tested = ("" if not held else "Held out of training, to test it on recordings unlike "
              f"those it learnt from: {', '.join(held)}. ")
    elsewhere = ("" if cross_source(names) is None else
                 "Tested on coughs recorded elsewhere (other phones, apps and places), models "
                 "like it did no better than chance: it cannot tell COVID-19 in a cough recorded "
                 "unlike its training recordings. ")
    return (f"This research model was trained on real cough recordings from: "
            f"{', '.join(names)}{own}. {tested}{elsewhere}It is not a medical device and was "
            "not validated for diagnosis.")


def source_rows(names: list[str]) -> list[str]:
    """One table row per data source: what it is and its licence, from the source's module."""
    rows = []
    for name in names:
        module = sys.modules[SOURCES[name].__module__]
        rows.append(f"| {markdown_code(name)} | {module.WHAT} | {module.LICENCE} |")
    return rows


def figure(d: dict | None, key: str, sign: str = "", no_ci: str = "") -> tuple[str, str]:
    """(value, "[low, high]") of `key` and its `_ci_low`/`_ci_high` to 3 decimals; "n/a" for a
    missing value, `no_ci` for a missing interval. The PR report formats its figures so too."""
    d = d or {}
    value, low, high = d.get(key), d.get(f"{key}_ci_low"), d.get(f"{key}_ci_high")
    shown = "n/a" if value is None else f"{value:{sign}.3f}"
    bounds = no_ci if low is None or high is None else f"[{low:{sign}.3f}, {high:{sign}.3f}]"
    return shown, bounds


def wilson(successes: int, n: int) -> tuple[float, float] | None:
    """Wilson score 95 % interval of a proportion (None for n = 0)."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rates(confusion: dict) -> dict[str, tuple[float, float, float]]:
    """Sensitivity and specificity with Wilson intervals over clips, from the test confusion."""
    out = {}
    for name, hit, miss in (("sensitivity", "tp", "fn"), ("specificity", "tn", "fp")):
        n = confusion[hit] + confusion[miss]
        bounds = wilson(confusion[hit], n)
        if bounds is not None:
            out[name] = (confusion[hit] / n, *bounds)
    return out


def predictive_values(sens: float, spec: float, prevalence: float) -> tuple[float, float]:
    """(PPV, NPV) at `prevalence` by Bayes' rule; NaN where a denominator is 0."""
    flagged = sens * prevalence + (1 - spec) * (1 - prevalence)
    cleared = (1 - sens) * prevalence + spec * (1 - prevalence)
    ppv = sens * prevalence / flagged if flagged else math.nan
    npv = spec * (1 - prevalence) / cleared if cleared else math.nan
    return ppv, npv


def held_out(evaluation: dict) -> dict[str, dict]:
    """evaluate's figures of each test source the model was not trained on (cross-source)."""
    by_source = (evaluation.get("sources") or {}).get("by_source") or {}
    return {name: s for name, s in by_source.items() if not s["trained_on"]}


def source_table(evaluation: dict, shown=markdown_code) -> list[str]:
    """evaluate's per-source figures as a Markdown table, a held-out source's row marked
    cross-source; `shown` renders a source's name (the PR report escapes it as text). Empty
    for an evaluation from before evaluate measured per source."""
    by_source = (evaluation.get("sources") or {}).get("by_source") or {}
    if not by_source:
        return []
    rows = ["| Source | Within-channel ROC-AUC | 95 % CI | Subjects | Positive subjects | "
            "Trained on |", "|---|---|---|---|---|---|"]
    for name, s in by_source.items():
        value, bounds = figure(s, "within_channel_roc_auc", no_ci=s.get("no_roc_auc") or "n/a")
        label = shown(name) + ("" if s["trained_on"] else " (**cross-source**)")
        trained = "yes" if s["trained_on"] else "no (held out: test only)"
        rows.append(f"| {label} | {value} | {bounds} | {s['subjects']} | "
                    f"{s['positive_subjects']} | {trained} |")
    return rows


def metric_rows(evaluation: dict) -> list[str]:
    test, head = evaluation["test"], evaluation["headline"]
    leakage = evaluation.get("channel_leakage", {})
    sources = evaluation.get("source_leakage") or {}
    rows = [("**within-channel ROC-AUC** (headline)", figure(head, "within_channel_roc_auc")),
            ("margin over the metadata-only baseline",
             figure(evaluation.get("margin"), "within_channel_roc_auc", "+")),
            *((f"channel leakage among {label} clips (0.5 = none)",
               figure(leakage[label], "roc_auc"))
              for label in ("negative", "positive") if isinstance(leakage.get(label), dict)),
            *((f"source leakage among {label} clips (0.5 = none)",
               figure(sources[label], "roc_auc"))
              for label in ("negative", "positive") if isinstance(sources.get(label), dict)),
            ("overall ROC-AUC", figure(test, "roc_auc")),
            ("PR-AUC", figure(test, "pr_auc", no_ci="not computed by evaluate"))]
    threshold = evaluation["threshold"]
    measured = rates(test["confusion"]) if "confusion" in test else {}
    for name in ("sensitivity", "specificity"):
        if name in measured:
            value, low, high = measured[name]
            shown = (f"{value:.3f}", f"[{low:.3f}, {high:.3f}] (Wilson, over clips)")
        else:
            shown = figure(test, name, no_ci="n/a")
        rows.append((f"{name} at threshold {threshold:.3f}", shown))
    rows += [(f"ROC-AUC, source {markdown_code(name)}", figure(m, "roc_auc"))
             for name, m in evaluation.get("test_by_source", {}).items()]
    rows += [(f"ROC-AUC, channel {markdown_code(name)}", figure(m, "roc_auc"))
             for name, m in evaluation.get("test_by_channel", {}).items()]
    return [f"| {name} | {value} | {bounds} |" for name, (value, bounds) in rows]


def per_source(evaluation: dict) -> list[str]:
    """The per-source table under the metrics, with what its figure is."""
    table = source_table(evaluation)
    if not table:
        return []
    return [PER_SOURCE, "", *table, ""]


def prevalence_rows(evaluation: dict) -> list[str]:
    """PPV and NPV at each of PREVALENCES, their ranges from the sensitivity and specificity
    intervals (PPV and NPV each move one way with both)."""
    measured = rates(evaluation["test"].get("confusion") or {"tp": 0, "fn": 0, "tn": 0, "fp": 0})
    if set(measured) != {"sensitivity", "specificity"}:
        return ["_Not computable: the test split lacks one of the labels._"]
    (sens, sens_lo, sens_hi), (spec, spec_lo, spec_hi) = (measured["sensitivity"],
                                                          measured["specificity"])
    rows = ["| Prevalence | PPV (flagged clips that are positive) | NPV (cleared clips that are "
            "negative) |", "|---|---|---|"]
    for prevalence in PREVALENCES:
        ppv, npv = predictive_values(sens, spec, prevalence)
        ppv_lo, npv_lo = predictive_values(sens_lo, spec_lo, prevalence)
        ppv_hi, npv_hi = predictive_values(sens_hi, spec_hi, prevalence)
        rows.append(f"| {prevalence:.0%} | {ppv:.3f} [{ppv_lo:.3f}, {ppv_hi:.3f}] | "
                    f"{npv:.3f} [{npv_lo:.3f}, {npv_hi:.3f}] |")
    return rows


def data_summary(manifest) -> dict:
    """Clips, subjects and positives per split, and clips per source and per channel within
    each source (two sources' `web` are two ways of recording), from combine's manifest (a
    DataFrame): the training data's size, balance and make-up for the card."""
    channel = (manifest["channel"].fillna(manifest["source"]) if "channel" in manifest.columns
               else manifest["source"])
    splits = {}
    for split in SPLITS:
        rows = manifest[manifest["split"] == split]
        positive = rows["label"] == "positive"
        splits[split] = {"clips": int(len(rows)), "positive_clips": int(positive.sum()),
                              "subjects": int(rows["subject_id"].nunique()),
                              "positive_subjects": int(rows.loc[positive, "subject_id"].nunique())}
    def counts(column) -> dict[str, int]:
        return {str(k): int(v) for k, v in column.value_counts().sort_index().items()}

    return {"splits": splits, "sources": counts(manifest["source"]),
            "channels": {str(source): counts(channel[manifest["source"] == source])
                         for source in sorted(manifest["source"].unique())}}


def metadata(meta: dict, evaluation: dict) -> str:
    """The YAML front matter Hugging Face reads: licence, datasets, metrics, tags, results."""
    derived = meta["provenance"]
    sample = is_sample(derived)
    head = evaluation["headline"]
    test = evaluation["test"]
    figures = (("roc_auc", "within-channel ROC-AUC (headline)", head.get("within_channel_roc_auc")),
               ("roc_auc", "overall ROC-AUC", test.get("roc_auc")),
               ("pr_auc", "PR-AUC", test.get("pr_auc")),
               ("recall", "sensitivity", test.get("sensitivity")),
               ("specificity", "specificity", test.get("specificity")))
    results = [{"type": kind, "name": name, "value": round(value, 4)}
               for kind, name, value in figures if value is not None]
    datasets = [SAMPLE_DATASET] if sample else list(derived["data_sources"])
    front = {
        "license": PROJECT_LICENCE if sample else "other",
        **({} if sample else {"license_name": "training-data-licences"}),
        "library_name": "onnx",
        "pipeline_tag": "audio-classification",
        "tags": ["audio", "cough", "covid-19", "research-only", "not-a-medical-device",
                 *(["synthetic-data"] if sample else [])],
        "datasets": datasets,
        "metrics": ["roc_auc", "pr_auc", "recall", "specificity"],
        "model-index": [{"name": f"coughlab-{meta['version']}", "results": [{
            "task": {"type": "audio-classification", "name": "COVID-19 cough score"},
            "dataset": {"name": ", ".join(datasets), "type": ", ".join(datasets),
                        "split": "test"},
            "metrics": results}]}],
    }
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---"


def model_details(meta: dict) -> list[str]:
    derived = meta["provenance"]
    arch = (derived.get("params") or {}).get("model", {}).get("arch", "see params below")
    members = (derived.get("params") or {}).get("train", {}).get("members", 1)
    licence = ("MIT, the project's licence (trained on synthetic data the project generates)"
               if is_sample(derived) else
               "the code is MIT; the weights derive from the training data, so each source's "
               "licence below binds them too (the strictest applies, e.g. non-commercial)")
    return [
        "## Model details",
        "",
        f"- **What:** a `{arch}` audio classifier ({members} network"
        f"{'' if members == 1 else 's, their scores averaged'}) exported as one ONNX graph: raw "
        "mono waveform in, a score in [0, 1] out.",
        f"- **Version:** `{meta['version']}` (sha256 of model.onnx, first 12 hex digits).",
        "- **Authors:** the coughlab project's contributors; `python -m coughlab.trace "
        f"{meta['version']}` names the commit, and so its author.",
        "- **Date:** not written here, on purpose: the card is a pipeline output that must be "
        "the same bytes on every rerun, so it holds no clock time; the commit that "
        "`python -m coughlab.trace` names carries the date.",
        f"- **Licence:** {licence}.",
        "- **Contact:** the issue tracker of the repository this model was built from.",
        "",
    ]


def intended_use(meta: dict) -> list[str]:
    quality = meta["quality"]
    return [
        "## Intended use",
        "",
        "Research and demonstration: a score for whether a recorded cough resembles those of "
        "people who reported or tested positive for COVID-19, from audio alone. **Not a medical "
        "device**: it does not diagnose, rule out or triage anyone, and its score must not "
        "replace a test.",
        "",
        "**Out of scope:** any decision about a person's health, care, work, travel or "
        "insurance; screening or triage; use on recordings unlike the training data (another "
        "microphone, room, population, protocol or language); other diseases; children, unless "
        "the training data held them.",
        "",
        f"Input: one recording; the graph reads {meta['input_seconds']:g} s of it, mixed to "
        f"mono at {meta['sample_rate']} Hz. It refuses recordings shorter than "
        f"{quality['min_seconds']:g} s or silent (peak below {quality['silence_dbfs']:g} dBFS), "
        "as training did. Output: a **score** (not a calibrated probability) and the label at "
        f"the threshold {meta['threshold']:.3f} (balanced-prior operating point chosen on the "
        "valid split: equal weight on both classes, not the prevalence anywhere).",
        "",
    ]


def how_to_use(meta: dict) -> list[str]:
    return [
        "## How to use",
        "",
        "```bash",
        "python -m coughlab.predict cough.wav other.webm   # one JSON line per file",
        "make serve                                       # the recording page on 127.0.0.1:8000",
        "curl -H 'Content-Type: audio/wav' --data-binary @cough.wav http://127.0.0.1:8000/",
        "```",
        "",
        "Each answer holds `p_positive` (the score), `label`, `threshold`, the seconds of audio "
        f"analysed and `model_version` (`{meta['version']}`). The Lambda answers the same for "
        "a POST of the file to its Function URL (docs/deploying.md).",
        "",
    ]


def training_data(meta: dict, evaluation: dict, summary: dict | None) -> list[str]:
    derived = meta["provenance"]
    test = evaluation["test"]
    size = evaluation.get("test_size") or {}
    subjects = size.get("subjects") or {}
    lines = ["## Training and evaluation data", "", trained_on(derived, evaluation), ""]
    if is_sample(derived):
        lines += ["Collection: `python -m coughlab.sample data` generates it bit-exactly (noise "
                  "bursts shaped like coughs; positives add a faint harmonic wheeze, some "
                  "negatives a fainter one; an 8 kHz phone and a 44.1/48 kHz app channel, "
                  "independent of the label). It shows that the pipeline works, nothing more.",
                  ""]
    lines += ["| Source | What | Licence |", "|---|---|---|", *source_rows(derived["data_sources"]),
              ""]
    if summary:
        lines += ["| Split | Clips | Positive clips | Subjects | Positive subjects |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {s['clips']} | {s['positive_clips']} | {s['subjects']} | "
                  f"{s['positive_subjects']} |" for name, s in summary["splits"].items()]
        lines += ["", "Clips per source, and per recording channel within it: " + ", ".join(
            f"`{source}` {clips} ("
            + ", ".join(f"`{k}` {v}" for k, v in summary["channels"][source].items()) + ")"
            for source, clips in summary["sources"].items()) + ".", ""]
    lines += [
        "Subjects are split disjointly into train, valid (threshold) and test (the figures "
        f"below): {test['n']} test clips, {test['positives']} positive, "
        f"{evaluation.get('bootstrap', {}).get('test_subjects', 'n/a')} subjects"
        + (f" ({subjects.get('negative')} negative, {subjects.get('positive')} positive)"
           if subjects else "") + ".",
        *([f"The test split is large enough by this card's rule: "
           f"{evaluation['test_size']['rule']}."] if evaluation.get("test_size", {}).get(
               "sufficient") else []),
        *([f"Rule for a test split that supports its numbers: {size['rule']}; this one does "
           "not."] if size.get("rule") and not size.get("sufficient") else []),
        "",
    ]
    return lines


def score_meaning(evaluation: dict) -> list[str]:
    point = evaluation.get("operating_point") or {}
    slope, intercept = point.get("calibration_slope"), point.get("calibration_intercept")
    fit = ("" if slope is None else
           f" (slope {slope:.3f}, intercept {intercept:.3f} on logit(score))")
    return [
        "## What the score means",
        "",
        "**Calibration.** The score is not a calibrated probability. evaluate fits a Platt "
        f"calibration on the valid split{fit} only to place the threshold; no calibration "
        "curve (reliability figure) is measured on test, so no probability of infection can "
        "be read off the score.",
        "",
        "**Predictive values** at the threshold, at stated prevalences (Bayes' rule from the "
        "test sensitivity and specificity; ranges from their intervals). At a low prevalence "
        "most clips it flags are negative:",
        "",
        *prevalence_rows(evaluation),
        "",
    ]


def measured_transfer(evaluation: dict) -> str | None:
    """What this evaluation measured on the sources the model was not trained on, if any."""
    figures = []
    for name, s in held_out(evaluation).items():
        value, bounds = figure(s, "within_channel_roc_auc")
        measured = (f"within-channel ROC-AUC {value} {bounds}".strip()
                    if s["within_channel_roc_auc"] is not None else s["no_roc_auc"])
        figures.append(f"{markdown_code(name, in_table=False)} ({s['subjects']} subjects, "
                       f"{s['positive_subjects']} positive): {measured}")
    if not figures:
        return None
    return ("**Measured on a source it was not trained on:** " + "; ".join(figures)
            + ". This is the cross-source figure: expect such numbers, not the within-source "
            "ones, on recordings made unlike the training data.")


def known_limits(meta: dict, evaluation: dict) -> list[str]:
    derived = meta["provenance"]
    warning = (evaluation.get("margin") or {}).get("warning")
    too_small = (evaluation.get("test_size") or {}).get("warning")
    measured = measured_transfer(evaluation)
    by_source = (evaluation.get("sources") or {}).get("by_source") or {}
    measured_elsewhere = cross_source(
        [*derived["data_sources"], *trained_sources(derived, evaluation)])
    too_small_sources = [s["test_size"]["warning"] for s in by_source.values()
                         if len(by_source) >= 2 and (s.get("test_size") or {}).get("warning")]
    if is_sample(derived):
        transfer = ["**Synthetic data only.** It has never heard a real cough: its score on "
                    "one means nothing, and the figures above say only that the pipeline runs."]
    else:
        transfer = [*([measured] if measured else []),
                    *([measured_elsewhere] if measured_elsewhere else [])]
    if not transfer:
        transfer = ["**Not checked on any other source.** Nothing is known about recordings "
                    "made unlike the training data; hold a source out as the test set to find "
                    "out."]
    return [
        "## Known limits",
        "",
        *(f"- {line}" for line in transfer),
        "- **The recording channel predicts the label** in crowd-sourced cough sets (phone "
        "line vs app, sample rate, channel count). A model that learnt the channel looks good "
        "overall; that is why the headline is the ROC-AUC within each channel, set against a "
        "baseline that only sees recording metadata, and why the channel leakage is reported.",
        *([f"- {warning}"] if warning else []),
        *([f"- {too_small}"] if too_small else []),
        *(f"- {w}" for w in too_small_sources),
        "- The threshold is not calibrated to any population's prevalence; the score is not "
        "a calibrated probability of infection.",
        "- Sensitivity and specificity intervals count clips as independent; clips of one "
        "subject are not, so the true uncertainty is wider. evaluate computes no interval for "
        "PR-AUC.",
        "",
    ]


def provenance_lines(meta: dict) -> list[str]:
    derived = meta["provenance"]
    return [
        "## Provenance",
        "",
        f"- model version (sha256 of model.onnx, first 12 hex digits): `{meta['version']}`",
        f"- data: `{derived['data_md5']}` (data.dvc's md5), sources "
        f"{', '.join(markdown_code(s, in_table=False) for s in derived['data_sources'])}",
        f"- features: `{derived['features_md5']}`; trained model: `{derived['model_md5']}` "
        "(dvc.lock's hashes)",
        f"- parity: the Lambda handler matched the pipeline within {meta['parity']['tolerance']:g} "
        f"on all {meta['parity']['clips']} test recordings, from the original files",
        "- `python -m coughlab.trace <version>` finds the git commit that produced it.",
        "- params (train's, as dvc.lock records them):",
        "",
        "```json",
        json.dumps(derived["params"], indent=2, sort_keys=True),
        "```",
        "",
    ]


def model_card(meta: dict, evaluation: dict, summary: dict | None = None) -> str:
    """The card as Markdown, from model.json's `meta`, evaluate's report and `data_summary`."""
    too_small = (evaluation.get("test_size") or {}).get("warning")
    lines = [
        metadata(meta, evaluation),
        "",
        f"# Model card: cough classifier `{meta['version']}`",
        "",
        *([f"> **{too_small}**", ""] if too_small else []),
        *model_details(meta),
        *intended_use(meta),
        *how_to_use(meta),
        *training_data(meta, evaluation, summary),
        "## Metrics (test split, 95 % CIs from a bootstrap over subjects unless stated)",
        "",
        "| Figure | Value | 95 % CI |",
        "|---|---|---|",
        *metric_rows(evaluation),
        "",
        *per_source(evaluation),
        *score_meaning(evaluation),
        *known_limits(meta, evaluation),
        *provenance_lines(meta),
    ]
    return "\n".join(lines)
