"""Markdown report of what the workspace changes against a base revision: metrics, params, plots.

It opens with the workspace's confound check from reports/evaluation.json: the within-channel
ROC-AUC headline, the margin over the metadata-only baseline with its CI, channel leakage, and
the warning when the margin's CI does not lie above 0.

CI posts it as a pull-request comment (.github/workflows/pr.yml, after `dvc repro`). The
metric and parameter tables are `dvc metrics diff --md` and `dvc params diff --md` as DVC
prints them. Each plot that changed is rendered to a PNG next to the report (pr-plots/, from
the Vega-Lite spec `dvc plots diff <base> --json` fills with both revisions' data, by
vl-convert, no browser or Node needed) and shown in the report as an image; CML uploads those
with the comment. The model card of the exported model (build/lambda/model_card.md), when
there is one, closes the report.
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
from coughlab.model_card import figure

OUT = Path("build/pr-report.md")
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


def short_commit(repo: Path, rev: str) -> str:
    """The abbreviated commit `rev` names; a clear error if it does not exist here."""
    result = subprocess.run(["git", "rev-parse", "--short", "--verify", "--quiet", f"{rev}^{{commit}}"],
                            cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        raise ReportError(f"base revision {rev!r} not found in {repo}; fetch it first "
                          "(in CI: actions/checkout with fetch-depth: 0)")
    return result.stdout.strip()


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


def plots_diff(repo: Path, base: str) -> dict:
    return json.loads(dvc(repo, "plots", "diff", base, "--json")).get("data", {})


def plots_changes(plots: dict, base: str) -> list[PlotChange]:
    """What changed in every plot of `dvc plots diff --json` output."""
    changes = []
    for name, renders in plots.items():
        rows: dict[str, list[str]] = {}
        specs = [render["content"] for render in renders if render["type"] == "vega"]
        for spec in specs:
            for rev, values in plot_rows(spec).items():
                rows.setdefault(rev, []).extend(values)
        old, new = rows.get(base), rows.get(WORKSPACE)
        if old is None and new is None:
            continue
        change = ("added" if old is None else "removed" if new is None
                  else "changed" if sorted(old) != sorted(new) else "same")
        changes.append(PlotChange(name, len(old or []), len(new or []), change, specs))
    return changes


def plots_table(changes: list[PlotChange], base: str) -> str:
    if not changes:
        return "_No plots._"
    lines = [f"| Plot | {base} rows | {WORKSPACE} rows | Change |", "|---|---|---|---|"]
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


def images_section(images: dict[str, list[str]], base: str) -> str:
    if not images:
        return "_No plot changed._"
    return "\n\n".join(f"**{plot}** ({base} and {WORKSPACE})\n\n"
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
    lines += [figure_row(f"ROC-AUC, channel {c}", m, "roc_auc")
              for c, m in metrics.get("test_by_channel", {}).items()]
    lines += [figure_row("metadata-only baseline, within-channel ROC-AUC", base,
                         "within_channel_roc_auc"),
              figure_row("**margin over the baseline** (within-channel ROC-AUC; the baseline "
                         "counted as at least 0.5)", margin, "within_channel_roc_auc", "+")]
    lines += [figure_row(f"channel leakage within {label} (0.5 = none)", leakage[label], "roc_auc")
              for label in leakage if isinstance(leakage[label], dict)]
    skipped = head.get("skipped_channels") or {}
    notes = ["Channels left out of the headline: "
             + "; ".join(f"{c} ({why})" for c, why in skipped.items())] if skipped else []
    notes.append(f"Threshold {metrics['threshold']:.3f}: "
                 + metrics.get("operating_point", {}).get("definition", "chosen on valid."))
    verdict = (f"> **{margin['warning']}**" if margin.get("warning") else
               "The margin's CI lies above 0: within channels the model beats what the "
               "recording metadata alone gives away.")
    return "\n".join(lines) + "\n\n" + "\n\n".join([verdict, *notes])


def workspace_metrics(repo: Path) -> dict:
    path = repo / METRICS
    if not path.is_file():
        raise ReportError(f"{METRICS} not found in {repo}; run `dvc repro` first")
    return json.loads(path.read_text())


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


def render_report(repo: Path, base: str, out: Path) -> str:
    """The report's markdown; the plot images go to pr-plots/ next to `out`."""
    base_commit = short_commit(repo, base)
    head_commit = short_commit(repo, "HEAD")
    current = workspace_metrics(repo)
    metrics = dvc(repo, "metrics", "diff", base, "--md")
    params = dvc(repo, "params", "diff", base, "--md")
    plots = plots_changes(plots_diff(repo, base), base)
    images = render_images(plots, out.parent / IMAGES)
    return "\n\n".join([
        f"## coughlab: {WORKSPACE} (HEAD {head_commit}) vs {base} ({base_commit})",
        "### Does it hear coughs or the recording channel?", confound_section(current),
        "### Metrics", table_or(metrics, "No metric changed."),
        "### Params", table_or(params, "No parameter changed."),
        "### Plots", plots_table(plots, base), images_section(images, base),
        f"Interactive: `dvc plots diff {base}` (CI: the `dvc-plots` artifact of this run).",
        *model_card_section(repo),
    ]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coughlab.report", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main",
                        help="git revision to compare the workspace with (default %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="markdown file (default %(default)s)")
    parser.add_argument("--repo", type=Path, default=Path("."),
                        help="repository root (default: the current directory)")
    args = parser.parse_args(argv)
    out = args.out if args.out.is_absolute() else args.repo / args.out
    try:
        report = render_report(args.repo, args.base, out)
    except ReportError as err:
        sys.exit(f"report: {err}")
    atomic_write_text(out, report)
    print(f"report: wrote {out}")


if __name__ == "__main__":
    main()
