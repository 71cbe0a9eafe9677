"""Markdown report of what a revision changes against a base: metrics, params, plots.

The revision is the workspace by default, or any git revision or DVC experiment name
(`--rev`), so two experiments compare as two commits do:

    python -m coughlab.report --base main --rev loyal-lark          # make report REV=loyal-lark
    python -m coughlab.report --base main --rev loyal-lark --headline   # the table below only

It opens with the headline figures of both sides with their 95 % CIs and, for each delta,
whether it leaves the base's CI (a delta inside it is what another test split could give
anyway), then the revision's confound check from reports/evaluation.json: the within-channel
ROC-AUC headline, the margin over the metadata-only baseline with its CI, channel leakage (and
source leakage), the warning when the margin's CI does not lie above 0, and each test source's
within-channel ROC-AUC, a source the model was not trained on marked cross-source.

CI posts it as a pull-request comment (.github/workflows/pr.yml, after `dvc repro`). The
metric table is `dvc metrics diff`'s, in reports/metrics.json's order (the headline first,
not DVC's alphabetical one); the parameter table is `dvc params diff --md` as DVC prints it.
Each plot that changed is rendered to a PNG next to the report (pr-plots/, from the
Vega-Lite spec `dvc plots diff <base> <rev> --json` fills with both revisions' data, by
vl-convert, no browser or Node needed) and linked from the report; the PR comment
(.github/scripts/pr_comment.py) points to them in the workflow's pr-report artifact. The model
card of the exported model (build/lambda/model_card.md), when the revision is the workspace and
there is one, closes the report. Channel names come from data files and are escaped to render
as text (coughlab.escape).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from coughlab.atomic import atomic_dir, atomic_write_text
from coughlab.escape import markdown_text
from coughlab.model_card import PER_SOURCE, figure, source_table

OUT = Path("build/pr-report.md")
METRICS_FILE = Path("reports/metrics.json")  # the numbers `dvc metrics diff` compares
IMAGES = "pr-plots"  # folder of the plot images, next to the report
# evaluate's full report; reports/metrics.json holds only the numbers `dvc metrics diff` compares.
METRICS = Path("reports/evaluation.json")
MODEL_CARD = Path("build/lambda/model_card.md")
WORKSPACE = "workspace"  # DVC's name for the files on disk


class ReportError(Exception):
    """The report cannot be made; the message says why."""


def dvc(repo: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise ReportError(f"`dvc {' '.join(args)}` failed (exit {result.returncode}):\n"
                          f"{result.stderr.strip()}")
    return result.stdout


def git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)


def short_commit(repo: Path, rev: str, role: str = "base") -> str:
    """The abbreviated commit `rev` names, a git revision or a DVC experiment's name; a clear
    error if neither exists here."""
    result = git(repo, "rev-parse", "--short", "--verify", "--quiet", f"{rev}^{{commit}}")
    if result.returncode == 0:
        return result.stdout.strip()
    refs = git(repo, "for-each-ref", "--format=%(objectname:short) %(refname)", "refs/exps")
    for line in refs.stdout.splitlines():
        commit, ref = line.split(" ", 1)
        if len(ref.split("/")) == 5 and ref.rsplit("/", 1)[-1] == rev:
            return commit
    raise ReportError(f"{role} revision {rev!r} not found in {repo}: neither a git revision nor "
                      "an experiment (`dvc exp list`); fetch it first (in CI: "
                      "actions/checkout with fetch-depth: 0)")


def file_at(repo: Path, rev: str | None, path: Path) -> str | None:
    """`path`'s text in the workspace (rev None) or at commit `rev`; None where it is absent."""
    if rev is None:
        return (repo / path).read_text() if (repo / path).is_file() else None
    shown = git(repo, "show", f"{rev}:{path.as_posix()}")
    return shown.stdout if shown.returncode == 0 else None


def flat_keys(tree, prefix: str = "") -> list[str]:
    """The dotted keys of a metrics file, in the file's order."""
    if not isinstance(tree, dict):
        return [prefix]
    return [key for name, value in tree.items()
            for key in flat_keys(value, f"{prefix}.{name}" if prefix else str(name))]


def shown_number(value) -> str:
    if value is None:
        return "-"
    return str(round(value, 5)) if isinstance(value, float) else str(value)


def metrics_table(diff: dict, order: list[str], base: str, rev_name: str) -> str:
    """`dvc metrics diff --json` as a table, in the metrics file's order (the headline first)."""
    rows = []
    for path, metrics in diff.items():
        ranked = sorted(metrics, key=lambda k: (order.index(k) if k in order else len(order), k))
        rows += [f"| {path} | {key} | {shown_number(metrics[key].get('old'))} | "
                 f"{shown_number(metrics[key].get('new'))} | "
                 f"{shown_number(metrics[key].get('diff'))} |" for key in ranked]
    if not rows:
        return "_No metric changed._"
    return "\n".join([f"| Path | Metric | {base} | {rev_name} | Change |",
                      "|--------|----------|--------|--------|--------|", *rows])


# (label, evaluation.json section, key): the figures a person compares first, with their CIs.
HEADLINE_FIGURES = (
    ("within-channel ROC-AUC (headline)", "headline", "within_channel_roc_auc"),
    ("margin over the metadata baseline", "margin", "within_channel_roc_auc"),
    ("overall ROC-AUC", "test", "roc_auc"),
)


def delta_verdict(old: dict, new: dict, key: str) -> tuple[str, str]:
    """(delta, whether it leaves the base's 95 % CI) of one figure."""
    before, after = old.get(key), new.get(key)
    low, high = old.get(f"{key}_ci_low"), old.get(f"{key}_ci_high")
    if before is None or after is None:
        return "n/a", "n/a"
    delta = f"{after - before:+.3f}"
    if low is None or high is None:
        return delta, "no CI at the base"
    if low <= after <= high:
        return delta, "inside the base's CI: not a measurable change at this test size"
    return delta, "**outside the base's CI**"


def headline_comparison(old: dict | None, new: dict | None, base: str, rev_name: str) -> str:
    """Both sides' headline figures with CIs, each delta judged against the base's CI."""
    if not old or not new:
        missing = base if not old else rev_name
        return f"_{missing} has no {METRICS}: nothing to compare the headline with._"
    lines = [f"| Test figure | {base} [95% CI] | {rev_name} [95% CI] | Change | vs the base's CI |",
             "|---|---|---|---|---|"]
    for label, section, key in HEADLINE_FIGURES:
        before, after = old.get(section) or {}, new.get(section) or {}
        sign = "+" if section == "margin" else ""
        cells = [" ".join(figure(d, key, sign, no_ci="")).strip() for d in (before, after)]
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | "
                     + " | ".join(delta_verdict(before, after, key)) + " |")
    subjects = [(d.get("bootstrap") or {}).get("test_subjects") for d in (old, new)]
    return "\n".join(lines) + (f"\n\nTest subjects: {subjects[0]} ({base}), {subjects[1]} "
                               f"({rev_name}); CIs resample subjects.")


def table_or(text: str, nothing: str) -> str:
    """DVC's markdown table, or `nothing` where it has no rows below the header."""
    rows = [line for line in text.strip().splitlines() if line.startswith("|")]
    return text.strip() if len(rows) > 2 else f"_{nothing}_"


def plot_rows(content: dict) -> dict[str, list[str]]:
    """Each revision's data rows in one vega plot, as comparable text without the `rev` column."""
    rows: dict[str, list[str]] = {}
    for row in content["data"]["values"]:
        rows.setdefault(row["rev"], []).append(
            json.dumps({k: v for k, v in row.items() if k != "rev"}, sort_keys=True))
    return rows


@dataclass
class PlotChange:
    name: str
    old_rows: int
    new_rows: int
    change: str  # added, removed, changed or same
    specs: list[dict] = field(default_factory=list)  # Vega-Lite, data of both revisions inline


def plots_diff(repo: Path, base: str, rev: str | None = None) -> dict:
    return json.loads(dvc(repo, "plots", "diff", base, *([rev] if rev else []),
                          "--json")).get("data", {})


def plots_changes(plots: dict, base: str, rev_name: str = WORKSPACE) -> list[PlotChange]:
    """What changed in every plot of `dvc plots diff --json` output."""
    changes = []
    for name, renders in plots.items():
        rows: dict[str, list[str]] = {}
        specs = [render["content"] for render in renders if render["type"] == "vega"]
        for spec in specs:
            for rev, values in plot_rows(spec).items():
                rows.setdefault(rev, []).extend(values)
        old, new = rows.get(base), rows.get(rev_name)
        if old is None and new is None:
            continue
        change = ("added" if old is None else "removed" if new is None
                  else "changed" if sorted(old) != sorted(new) else "same")
        changes.append(PlotChange(name, len(old or []), len(new or []), change, specs))
    return changes


def plots_table(changes: list[PlotChange], base: str, rev_name: str = WORKSPACE) -> str:
    if not changes:
        return "_No plots._"
    lines = [f"| Plot | {base} rows | {rev_name} rows | Change |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.old_rows} | {c.new_rows} | {c.change} |" for c in changes]
    return "\n".join(lines)


def image_name(plot: str, index: int) -> str:
    """A file name that says which plot it is: `ROC (test)` -> roc-test.png."""
    slug = re.sub(r"[^a-z0-9]+", "-", plot.lower()).strip("-") or "plot"
    return f"{slug}.png" if index == 0 else f"{slug}-{index + 1}.png"


def render_images(changes: list[PlotChange], folder: Path) -> dict[str, list[str]]:
    """PNGs of every added or changed plot, both revisions in one chart, in `folder` (replaced
    as a whole); plot name -> image file names."""
    import vl_convert  # dev extra: only the report needs it

    shown = [c for c in changes if c.change in ("added", "changed")]
    names: dict[str, list[str]] = {}
    with atomic_dir(folder) as tmp:
        for c in shown:
            for index, spec in enumerate(c.specs):
                name = image_name(c.name, index)
                try:
                    png = vl_convert.vegalite_to_png(spec, scale=2)
                except ValueError as err:
                    raise ReportError(f"plot {c.name!r} cannot be rendered: {err}") from err
                (Path(tmp) / name).write_bytes(png)
                names.setdefault(c.name, []).append(name)
    return names


def images_section(images: dict[str, list[str]], base: str, rev_name: str = WORKSPACE) -> str:
    if not images:
        return "_No plot changed._"
    return "\n\n".join(f"**{plot}** ({base} and {rev_name})\n\n"
                        + "\n".join(f"![{plot}]({IMAGES}/{name})" for name in names)
                        for plot, names in images.items())


def figure_row(name: str, d: dict, key: str, sign: str = "") -> str:
    shown, bounds = figure(d, key, sign, no_ci="n/a")
    return f"| {name} | {shown} | {bounds} |"


def confound_section(metrics: dict) -> str:
    """The figures that say whether the model hears coughs or the recording channel."""
    if "margin" not in metrics:
        return f"_{METRICS} has no within-channel figures; re-run `dvc repro evaluate`._"
    head, base, margin = metrics["headline"], metrics["metadata_baseline"], metrics["margin"]
    leakage = metrics["channel_leakage"]
    lines = ["| Test figure | Value | 95% CI (subjects resampled) |", "|---|---|---|",
             figure_row("**within-channel ROC-AUC (headline)**", head, "within_channel_roc_auc"),
             figure_row("overall ROC-AUC", metrics["test"], "roc_auc")]
    lines += [figure_row(f"ROC-AUC, channel {markdown_text(c)}", m, "roc_auc")
              for c, m in metrics.get("test_by_channel", {}).items()]
    lines += [figure_row("metadata-only baseline, within-channel ROC-AUC", base,
                         "within_channel_roc_auc"),
              figure_row("**margin over the baseline** (within-channel ROC-AUC; the baseline "
                         "counted as at least 0.5)", margin, "within_channel_roc_auc", "+")]
    lines += [figure_row(f"channel leakage within {label} (0.5 = none)", leakage[label], "roc_auc")
              for label in leakage if isinstance(leakage[label], dict)]
    sources = metrics.get("source_leakage") or {}
    lines += [figure_row(f"source leakage within {label} (0.5 = none)", sources[label], "roc_auc")
              for label in sources if isinstance(sources[label], dict)]
    skipped = head.get("skipped_channels") or {}
    left_out = "; ".join(f"{markdown_text(c)} ({markdown_text(why)})" for c, why in skipped.items())
    notes = [f"Channels left out of the headline: {left_out}"] if skipped else []
    notes.append(f"Threshold {metrics['threshold']:.3f}: "
                 + metrics.get("operating_point", {}).get("definition", "chosen on valid."))
    verdict = (f"> **{margin['warning']}**" if margin.get("warning") else
               "The margin's CI lies above 0: within channels the model beats what the "
               "recording metadata alone gives away.")
    per_source = source_table(metrics, markdown_text)
    if per_source:
        notes.append(PER_SOURCE + "\n\n" + "\n".join(per_source))
    return "\n".join(lines) + "\n\n" + "\n\n".join([verdict, *notes])


def evaluation_at(repo: Path, rev: str | None) -> dict | None:
    text = file_at(repo, rev, METRICS)
    return None if text is None else json.loads(text)


def workspace_metrics(repo: Path, rev: str | None = None) -> dict:
    found = evaluation_at(repo, rev)
    if found is None:
        where = f"in {repo}" if rev is None else f"at {rev}"
        raise ReportError(f"{METRICS} not found {where}; run `dvc repro` first")
    return found


def model_card_section(repo: Path) -> list[str]:
    """The exported model's card, its headings nested under the report's, if export wrote one."""
    path = repo / MODEL_CARD
    if not path.is_file():
        return []
    text = path.read_text()
    if text.startswith("---\n"):  # the YAML metadata block is for model hubs, not the PR
        text = text.split("\n---\n", 1)[-1]
    card = re.sub(r"^(#{1,3}) ", lambda m: "#" * (len(m.group(1)) + 3) + " ",
                  text.strip(), flags=re.M)
    return [f"### Model card ({MODEL_CARD})", card]


def render_report(repo: Path, base: str, out: Path, rev: str | None = None) -> str:
    """The report's markdown for `rev` (None: the workspace) against `base`; the plot images
    go to pr-plots/ next to `out`."""
    base_commit = short_commit(repo, base)
    head_commit = short_commit(repo, rev or "HEAD", "compared")
    rev_name = rev or WORKSPACE
    at_rev = None if rev is None else head_commit
    current = workspace_metrics(repo, at_rev)
    order = flat_keys(json.loads(file_at(repo, at_rev, METRICS_FILE) or "{}"))
    metrics = json.loads(dvc(repo, "metrics", "diff", base, *([rev] if rev else []), "--json"))
    params = dvc(repo, "params", "diff", base, *([rev] if rev else []), "--md")
    plots = plots_changes(plots_diff(repo, base, rev), base, rev_name)
    images = render_images(plots, out.parent / IMAGES)
    title = (f"{WORKSPACE} (HEAD {head_commit})" if rev is None else f"{rev} ({head_commit})")
    return "\n\n".join([
        f"## coughlab: {title} vs {base} ({base_commit})",
        "### Headline: does the change leave the base's CI?",
        headline_comparison(evaluation_at(repo, base_commit), current, base, rev_name),
        "### Does it hear coughs or the recording channel?", confound_section(current),
        "### Metrics", metrics_table(metrics, order, base, rev_name),
        "### Params", table_or(params, "No parameter changed."),
        "### Plots", plots_table(plots, base, rev_name), images_section(images, base, rev_name),
        f"Interactive, offline: `make plots REVS=\"{base} {rev or ''}\"` (`dvc plots diff`; "
        "CI: the `dvc-plots` artifact of this run).",
        *(model_card_section(repo) if rev is None else []),
    ]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coughlab.report", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main",
                        help="git revision or experiment to compare with (default %(default)s)")
    parser.add_argument("--rev", default=None,
                        help="git revision or experiment name to report on (default: the "
                        "workspace)")
    parser.add_argument("--headline", action="store_true",
                        help="print only the headline comparison (figures, CIs, whether each "
                        "delta leaves the base's CI), write nothing")
    parser.add_argument("--out", type=Path, default=OUT, help="markdown file (default %(default)s)")
    parser.add_argument("--repo", type=Path, default=Path("."),
                        help="repository root (default: the current directory)")
    args = parser.parse_args(argv)
    out = args.out if args.out.is_absolute() else args.repo / args.out
    try:
        if args.headline:
            base = short_commit(args.repo, args.base)
            rev = None if args.rev is None else short_commit(args.repo, args.rev, "compared")
            print(headline_comparison(evaluation_at(args.repo, base), evaluation_at(args.repo, rev),
                                      args.base, args.rev or WORKSPACE))
            return
        report = render_report(args.repo, args.base, out, args.rev)
    except ReportError as err:
        sys.exit(f"report: {err}")
    atomic_write_text(out, report)
    print(f"report: wrote {out}")


if __name__ == "__main__":
    main()
