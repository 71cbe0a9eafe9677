"""The model card export-lambda writes beside model.json: build/lambda/model_card.md.

What a person needs before trusting a score: what the model is for and not for, which data
(and licences) it was trained on, how good it is on the test split with 95 % CIs, what it is
known not to do, and where it came from. Everything comes from model.json and evaluate's
report, never from this machine (no dates, paths or measured timings), so the card is a
function of the stage's inputs like every other DVC output; the Lambda serves it at
GET ?model_card and the recording page links to it. Source and channel names come from data
files: each is a code span that renders as itself (coughlab.escape), never Markdown.
"""
from __future__ import annotations

import json
import sys

from coughlab.escape import markdown_code
from coughlab.sources import SOURCES

MODEL_CARD = "model_card.md"


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


def metric_rows(evaluation: dict) -> list[str]:
    test, head = evaluation["test"], evaluation["headline"]
    leakage = evaluation.get("channel_leakage", {})
    rows = [("**within-channel ROC-AUC** (headline)", figure(head, "within_channel_roc_auc")),
            ("margin over the metadata-only baseline",
             figure(evaluation.get("margin"), "within_channel_roc_auc", "+")),
            *((f"channel leakage among {label} clips (0.5 = none)", figure(leakage[label], "roc_auc"))
              for label in ("negative", "positive") if isinstance(leakage.get(label), dict)),
            ("overall ROC-AUC", figure(test, "roc_auc")),
            ("PR-AUC", figure(test, "pr_auc")),
            (f"sensitivity at threshold {evaluation['threshold']:.3f}", figure(test, "sensitivity")),
            (f"specificity at threshold {evaluation['threshold']:.3f}", figure(test, "specificity"))]
    rows += [(f"ROC-AUC, source {markdown_code(name)}", figure(m, "roc_auc"))
             for name, m in evaluation.get("test_by_source", {}).items()]
    rows += [(f"ROC-AUC, channel {markdown_code(name)}", figure(m, "roc_auc"))
             for name, m in evaluation.get("test_by_channel", {}).items()]
    return [f"| {name} | {value} | {bounds} |" for name, (value, bounds) in rows]


def model_card(meta: dict, evaluation: dict) -> str:
    """The card as Markdown, from model.json's `meta` and evaluate's report."""
    derived = meta["provenance"]
    test = evaluation["test"]
    warning = (evaluation.get("margin") or {}).get("warning")
    too_small = (evaluation.get("test_size") or {}).get("warning")
    quality = meta["quality"]
    lines = [
        f"# Model card: cough classifier `{meta['version']}`",
        "",
        *([f"> **{too_small}**", ""] if too_small else []),
        "## Intended use",
        "",
        "Research and demonstration: the probability that a recorded cough comes from someone "
        "who tested positive for COVID-19, from audio alone. **Not a medical device**: it does "
        "not diagnose, rule out or triage anyone, and its score must not replace a test.",
        f"Input: one recording; the graph reads {meta['input_seconds']:g} s of it, mixed to mono "
        f"at {meta['sample_rate']} Hz. It refuses recordings shorter than "
        f"{quality['min_seconds']:g} s or silent (peak below {quality['silence_dbfs']:g} dBFS), "
        "as training did. Output: P(positive) and the label at the threshold "
        f"{meta['threshold']:.3f} (balanced-prior operating point chosen on the valid split: "
        "equal weight on both classes, not the prevalence anywhere).",
        "",
        "## Data and licences",
        "",
        "| Source | What | Licence |",
        "|---|---|---|",
        *source_rows(derived["data_sources"]),
        "",
        "Subjects are split disjointly into train, valid (threshold) and test (the figures "
        f"below): {test['n']} test clips, {test['positives']} positive, "
        f"{evaluation.get('bootstrap', {}).get('test_subjects', 'n/a')} subjects.",
        *([f"The test split is large enough by this card's rule: "
           f"{evaluation['test_size']['rule']}."] if evaluation.get("test_size", {}).get(
               "sufficient") else []),
        "",
        "## Metrics (test split, 95 % CIs from a bootstrap over subjects)",
        "",
        "| Figure | Value | 95 % CI |",
        "|---|---|---|",
        *metric_rows(evaluation),
        "",
        "## Known limits",
        "",
        "- **Another source scores at chance.** Checked on held-out recordings of hospital "
        "patients, a source it was not trained on, this pipeline's default model was at chance "
        "(ROC-AUC 0.53 per clip, 0.55 per patient). The figures above hold only for recordings "
        "made like the training data.",
        "- **The recording channel predicts the label** in crowd-sourced cough sets (phone "
        "line vs app, sample rate, channel count). A model that learnt the channel looks good "
        "overall; that is why the headline is the ROC-AUC within each channel, set against a "
        "baseline that only sees recording metadata, and why the channel leakage is reported.",
        *([f"- {warning}"] if warning else []),
        *([f"- {too_small}"] if too_small else []),
        "- The threshold is not calibrated to any population's prevalence; the score is not "
        "a calibrated probability of infection.",
        "",
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
    return "\n".join(lines)
