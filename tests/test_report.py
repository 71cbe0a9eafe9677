"""`make report`: the PR comment shows what a branch changes against main, with old and new values,
and the changed plots as images."""
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml

from coughlab import report

ROOT = Path(__file__).resolve().parents[1]
# The colours DVC's templates give the two revisions of a `dvc plots diff`.
WORKSPACE_COLOUR, BASE_COLOUR = (0x94, 0x5D, 0xD6), (0x13, 0xAD, 0xC7)

DVC_YAML = {"stages": {"train": {
    "cmd": "python train.py",
    "params": ["lr", "train.epochs"],
    "metrics": [{"reports/metrics.json": {"cache": False}}],
    "plots": [{"reports/plots/roc.json": {"cache": False, "x": "fpr", "y": "tpr"}},
              {"reports/plots/pr.json": {"cache": False, "x": "recall", "y": "precision"}}],
}}}


def write_results(repo, lr, roc_auc, roc_points):
    (repo / "params.yaml").write_text(yaml.safe_dump({"lr": lr, "train": {"epochs": 20}}))
    (repo / "reports" / "plots").mkdir(parents=True, exist_ok=True)
    (repo / "reports" / "metrics.json").write_text(
        json.dumps({"test": {"roc_auc": roc_auc, "f1": 0.7}}))
    (repo / "reports" / "evaluation.json").write_text(json.dumps({"test": {"roc_auc": roc_auc}}))
    (repo / "reports" / "plots" / "roc.json").write_text(json.dumps(
        [{"fpr": i / roc_points, "tpr": min(1.0, 2 * i / roc_points)} for i in range(roc_points)]))
    (repo / "reports" / "plots" / "pr.json").write_text(json.dumps(
        [{"recall": 1.0, "precision": 0.5}, {"recall": 0.0, "precision": 1.0}]))


def commit(repo, message):
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", message], cwd=repo, check=True)


def table_rows(markdown):
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in markdown.splitlines() if line.startswith("|")]


def png_colours(png: bytes) -> dict[tuple[int, int, int], int]:
    """Pixel count per RGB colour of an 8-bit RGB(A) PNG (what vl-convert writes)."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    pos, chunks = 8, {}
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        chunks.setdefault(kind, []).append(png[pos + 8:pos + 8 + length])
        pos += 12 + length
    header = struct.unpack(">IIBBBBB", chunks[b"IHDR"][0])
    width, height, depth, colour_type, interlace = *header[:4], header[6]
    assert (depth, colour_type, interlace) in ((8, 6, 0), (8, 2, 0))
    channels = 4 if colour_type == 6 else 3
    raw, stride = zlib.decompress(b"".join(chunks[b"IDAT"])), width * channels
    previous, counts = bytearray(stride), {}
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):  # undo the PNG row filter
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                paeth = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + paeth) & 255
        for x in range(0, stride, channels):
            colour = tuple(line[x:x + 3])
            counts[colour] = counts.get(colour, 0) + 1
        previous = line
    return counts


@pytest.fixture
def two_commit_repo(tmp_path):
    """main: lr 0.003, ROC-AUC 0.8, a 3-point ROC; branch `feature` (checked out): lr 0.001,
    ROC-AUC 0.9, a 4-point ROC; epochs, F1 and the PR curve unchanged."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    write_results(repo, lr=0.003, roc_auc=0.8, roc_points=3)
    commit(repo, "baseline")
    subprocess.run(["git", "checkout", "-q", "-b", "feature"], cwd=repo, check=True)
    write_results(repo, lr=0.001, roc_auc=0.9, roc_points=4)
    commit(repo, "lower lr")
    return repo


def test_report_lists_changed_metrics_params_and_plots(two_commit_repo, capsys):
    # The arguments `make report` passes (BASE defaults to main).
    report.main(["--base", "main", "--repo", str(two_commit_repo)])
    markdown = (two_commit_repo / "build" / "pr-report.md").read_text()
    rows = table_rows(markdown)
    assert ["reports/metrics.json", "test.roc_auc", "0.8", "0.9", "0.1"] in rows
    assert ["params.yaml", "lr", "0.003", "0.001"] in rows
    assert ["reports/plots/roc.json", "3", "4", "changed"] in rows
    assert ["reports/plots/pr.json", "2", "2", "same"] in rows
    unchanged = {"test.f1", "train.epochs"}
    assert not [row for row in rows if unchanged & set(row) and len(row) > 2]  # in no diff
    assert "pr-report.md" in capsys.readouterr().out
    # This evaluation.json predates the confound figures: the report says so rather than failing.
    assert "has no within-channel figures" in markdown
    # The changed ROC as an image with both revisions; the unchanged PR curve as none.
    assert "![reports/plots/roc.json](pr-plots/reports-plots-roc-json.png)" in markdown
    images = two_commit_repo / "build" / "pr-plots"
    assert [p.name for p in images.iterdir()] == ["reports-plots-roc-json.png"]
    colours = png_colours((images / "reports-plots-roc-json.png").read_bytes())
    assert colours[WORKSPACE_COLOUR] > 100 and colours[BASE_COLOUR] > 100
    assert "Model card" not in markdown  # no build/lambda/model_card.md here


CONFOUNDED = {
    "threshold": 0.42,
    "operating_point": {"definition": "Platt calibration fit on the valid split."},
    "test": {"roc_auc": 0.81, "roc_auc_ci_low": 0.74, "roc_auc_ci_high": 0.87},
    "test_by_channel": {"call-center": {"roc_auc": 0.66, "roc_auc_ci_low": 0.55,
                                        "roc_auc_ci_high": 0.76}},
    "headline": {"within_channel_roc_auc": 0.64, "within_channel_roc_auc_ci_low": 0.55,
                 "within_channel_roc_auc_ci_high": 0.72,
                 "skipped_channels": {"hospital": "only negative clips, no ROC-AUC"}},
    "metadata_baseline": {"within_channel_roc_auc": 0.6, "within_channel_roc_auc_ci_low": 0.52,
                          "within_channel_roc_auc_ci_high": 0.68},
    "margin": {"within_channel_roc_auc": 0.04, "within_channel_roc_auc_ci_low": -0.05,
               "within_channel_roc_auc_ci_high": 0.13, "warning": "WARNING: not above 0."},
    "channel_leakage": {"definition": "...",
                        "negative": {"roc_auc": 0.97, "roc_auc_ci_low": 0.94,
                                     "roc_auc_ci_high": 0.99},
                        "positive": {"roc_auc": None, "roc_auc_ci_low": None,
                                     "roc_auc_ci_high": None}},
}


def test_report_shows_headline_margin_leakage_and_the_warning():
    markdown = report.confound_section(CONFOUNDED)
    rows = table_rows(markdown)
    assert ["**within-channel ROC-AUC (headline)**", "0.640", "[0.550, 0.720]"] in rows
    assert ["ROC-AUC, channel call-center", "0.660", "[0.550, 0.760]"] in rows
    assert [r for r in rows if r[0].startswith("**margin")] == [
        [rows[-3][0], "+0.040", "[-0.050, +0.130]"]]
    assert ["channel leakage within negative (0.5 = none)", "0.970", "[0.940, 0.990]"] in rows
    assert ["channel leakage within positive (0.5 = none)", "n/a", "n/a"] in rows
    assert "> **WARNING: not above 0.**" in markdown
    assert "hospital (only negative clips, no ROC-AUC)" in markdown
    assert "Threshold 0.420: Platt calibration" in markdown


def test_report_says_when_the_margin_is_clear():
    clear = {**CONFOUNDED, "margin": {**CONFOUNDED["margin"], "warning": None}}
    assert "WARNING" not in report.confound_section(clear)
    assert "CI lies above 0" in report.confound_section(clear)


def test_missing_metrics_is_a_clear_error(two_commit_repo):
    (two_commit_repo / "reports" / "evaluation.json").unlink()
    with pytest.raises(SystemExit, match="reports/evaluation.json not found"):
        report.main(["--base", "main", "--repo", str(two_commit_repo)])


def test_unknown_base_revision_is_a_clear_error(two_commit_repo):
    with pytest.raises(SystemExit, match="base revision 'origin/main' not found"):
        report.main(["--base", "origin/main", "--repo", str(two_commit_repo)])
    assert not (two_commit_repo / "build" / "pr-report.md").exists()


def test_report_includes_the_model_card_under_its_own_heading(two_commit_repo):
    card = two_commit_repo / "build" / "lambda" / "model_card.md"
    card.parent.mkdir(parents=True)
    card.write_text("---\nlicense: mit\n---\n\n# Model card: cough classifier 43f685139a7d\n\n"
                    "## Intended use\n\nResearch.\n")
    report.main(["--base", "main", "--repo", str(two_commit_repo)])
    markdown = (two_commit_repo / "build" / "pr-report.md").read_text()
    _, section = markdown.split("### Model card (build/lambda/model_card.md)\n\n")
    assert section == ("#### Model card: cough classifier 43f685139a7d\n\n##### Intended use\n\n"
                       "Research.\n")


@pytest.fixture
def project_plots_repo(tmp_path):
    """This project's dvc.yaml, plot templates (.dvc/plots) and committed plot data on `main`;
    the workspace has every plot file with its last data row dropped."""
    repo = tmp_path / "plots"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")  # dvc.yaml's ${paths.*}
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    data = [p.relative_to(ROOT) for folder in ("reports/plots", "reports/train/plots")
            for p in sorted((ROOT / folder).rglob("*")) if p.suffix in (".json", ".tsv")]
    for path in data:
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, repo / path)
    commit(repo, "baseline")
    for path in data:
        file = repo / path
        if path.suffix == ".json":
            file.write_text(json.dumps(json.loads(file.read_text())[:-1]))
        else:
            file.write_text("".join(file.read_text().splitlines(keepends=True)[:-1]))
    return repo


def test_every_plot_of_the_project_renders_from_a_real_dvc_plots_diff(project_plots_repo, tmp_path):
    changes = report.plots_changes(report.plots_diff(project_plots_repo, "main"), "main")
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    expected = {next(iter(plot)) for plot in plots}
    assert expected <= {c.name for c in changes}
    assert {c.change for c in changes} == {"changed"}
    images = report.render_images(changes, tmp_path / "pr-plots")
    assert set(images) == {c.name for c in changes}
    for plot, names in images.items():
        png = (tmp_path / "pr-plots" / names[0]).read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR", plot
        width, height = struct.unpack(">II", png[16:24])
        assert width >= 300 and height >= 200, (plot, width, height)


def test_every_plot_is_drawn_once_with_axes_in_words(project_plots_repo):
    """The training curves were drawn twice (a stage-level plot and a top-level one), and
    their axes read `y` and `step`."""
    shown = json.loads(report.dvc(project_plots_repo, "plots", "show", "--json"))["data"]
    defined = [next(iter(plot))
               for plot in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]]
    assert sorted(shown) == sorted(defined)
    raw_names = {"x", "y", "step", "fpr", "tpr", "recall", "precision", "predicted", "actual"}
    for name, renders in shown.items():
        titles = axis_titles(renders[0]["content"])
        assert titles and not set(titles) & raw_names, (name, titles)


def axis_titles(spec) -> list:
    """The titles of every x and y encoding in a Vega-Lite spec (None where a row's label is
    its own title, as in the CI chart's y)."""
    found = []
    if isinstance(spec, dict):
        for channel in ("x", "y"):
            encoding = (spec.get("encoding") or {}).get(channel)
            if isinstance(encoding, dict) and "title" in encoding and encoding["title"]:
                found.append(encoding["title"])
        for value in spec.values():
            found += axis_titles(value)
    elif isinstance(spec, list):
        for value in spec:
            found += axis_titles(value)
    return found


def test_a_diff_says_which_revision_each_mark_is_and_counts_the_confusion(project_plots_repo):
    changes = {c.name: c for c in report.plots_changes(
        report.plots_diff(project_plots_repo, "main"), "main")}
    for name in ("ROC per channel (test)",
                 "ROC-AUC with 95% CI (test; model, metadata baseline, channel leakage)"):
        spec = json.dumps(changes[name].specs[0])
        assert '"shape": {"field": "rev"' in spec, name  # a legend entry per revision
    (confusion,) = [c for name, c in changes.items() if name.startswith("Confusion matrix")]
    layers = confusion.specs[0]["spec"]["layer"]
    assert [layer["encoding"]["text"]["field"] for layer in layers if layer["mark"]["type"]
            == "text"] == ["clips"]
    assert confusion.specs[0]["facet"]["column"]["field"] == "rev"


def test_report_pngs_are_each_a_different_plot(project_plots_repo, tmp_path):
    """3 of 10 PNGs drew numbers another PNG drew already (the training curves, twice)."""
    changes = report.plots_changes(report.plots_diff(project_plots_repo, "main"), "main")
    images = report.render_images(changes, tmp_path / "pr-plots")
    assert sum(map(len, images.values())) == len(changes)

    bookkeeping = {"rev", "dvc_inferred_y_value", "filename::field", "filename", "field"}

    def points(change) -> set:  # what each row draws, without the columns DVC adds
        return {tuple(sorted((k, str(v)) for k, v in row.items() if k not in bookkeeping))
                for spec in change.specs for row in spec["data"]["values"]}

    repeats = [(a.name, b.name) for a in changes for b in changes
               if a is not b and points(a) <= points(b)]
    assert repeats == []


def test_report_compares_two_experiments(two_commit_repo):
    """`make report BASE=main REV=<experiment>`: both sides from git, the workspace untouched;
    an experiment's name resolves through refs/exps as `dvc exp run` leaves it."""
    feature = subprocess.run(["git", "rev-parse", "HEAD"], cwd=two_commit_repo, check=True,
                             capture_output=True, text=True).stdout.strip()
    main = subprocess.run(["git", "rev-parse", "main"], cwd=two_commit_repo, check=True,
                          capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "update-ref", f"refs/exps/{main[:2]}/{main[2:]}/lower-lr", feature],
                   cwd=two_commit_repo, check=True)
    subprocess.run(["git", "checkout", "-q", "main"], cwd=two_commit_repo, check=True)
    report.main(["--base", "main", "--rev", "lower-lr", "--repo", str(two_commit_repo)])
    markdown = (two_commit_repo / "build" / "pr-report.md").read_text()
    rows = table_rows(markdown)
    assert markdown.startswith(f"## coughlab: lower-lr ({feature[:7]}) vs main")
    assert ["reports/metrics.json", "test.roc_auc", "0.8", "0.9", "0.1"] in rows
    assert ["params.yaml", "lr", "0.003", "0.001"] in rows
    assert ["reports/plots/roc.json", "3", "4", "changed"] in rows
    with pytest.raises(SystemExit, match="compared revision 'no-such-exp' not found"):
        report.main(["--base", "main", "--rev", "no-such-exp", "--repo", str(two_commit_repo)])


def test_metrics_table_puts_the_headline_first_not_alphabetical():
    diff = {"reports/metrics.json": {"auc": {"old": 0.9, "new": 0.8, "diff": -0.1},
                                     "wc_auc": {"old": 0.7, "new": 0.65, "diff": -0.05},
                                     "margin": {"old": 0.1, "new": 0.2, "diff": 0.1}}}
    table = report.metrics_table(diff, ["wc_auc", "wc_lo", "margin", "auc"], "main", "exp")
    assert [row[1] for row in table_rows(table)[2:]] == ["wc_auc", "margin", "auc"]


def test_a_delta_inside_the_bases_ci_is_called_so():
    """wc_auc -0.045 gave no hint that it lies inside a CI of [0.635, 1.000] (8 subjects)."""
    base = {"headline": {"within_channel_roc_auc": 0.9, "within_channel_roc_auc_ci_low": 0.635,
                         "within_channel_roc_auc_ci_high": 1.0},
            "test": {"roc_auc": 0.9, "roc_auc_ci_low": 0.85, "roc_auc_ci_high": 0.95},
            "margin": {}, "bootstrap": {"test_subjects": 8}}
    new = {"headline": {"within_channel_roc_auc": 0.855, "within_channel_roc_auc_ci_low": 0.6,
                        "within_channel_roc_auc_ci_high": 1.0},
           "test": {"roc_auc": 0.7, "roc_auc_ci_low": 0.6, "roc_auc_ci_high": 0.8},
           "margin": {}, "bootstrap": {"test_subjects": 8}}
    rows = table_rows(report.headline_comparison(base, new, "main", "exp"))
    assert rows[2] == ["within-channel ROC-AUC (headline)", "0.900 [0.635, 1.000]",
                       "0.855 [0.600, 1.000]", "-0.045",
                       "inside the base's CI: not a measurable change at this test size"]
    assert rows[4][3:] == ["-0.200", "**outside the base's CI**"]
    assert rows[3][3:] == ["n/a", "n/a"]  # no margin on either side


def test_report_shows_each_source_and_marks_the_cross_source_one():
    def source(auc, trained, subjects, positives, why=None):
        return {"trained_on": trained, "within_channel_roc_auc": auc,
                "within_channel_roc_auc_ci_low": auc and auc - 0.1,
                "within_channel_roc_auc_ci_high": auc and auc + 0.1, "no_roc_auc": why,
                "subjects": subjects, "positive_subjects": positives}
    evaluation = {**CONFOUNDED, "sources": {"by_source": {
        "covid19-cough": source(0.66, True, 120, 40),
        "coswara": source(0.51, False, 80, 20),
        "local": source(None, True, 4, 0, "only negative clips, no ROC-AUC")}},
        "source_leakage": {"negative": {"roc_auc": 0.9, "roc_auc_ci_low": 0.85,
                                        "roc_auc_ci_high": 0.95}}}
    markdown = report.confound_section(evaluation)
    rows = table_rows(markdown)
    assert ["covid19-cough", "0.660", "[0.560, 0.760]", "120", "40", "yes"] in rows
    assert ["coswara (**cross-source**)", "0.510", "[0.410, 0.610]", "80", "20",
            "no (held out: test only)"] in rows
    assert ["local", "n/a", "only negative clips, no ROC-AUC", "4", "0", "yes"] in rows
    assert ["source leakage within negative (0.5 = none)", "0.900", "[0.850, 0.950]"] in rows
    assert "a held-out source counts like any other" in markdown  # how the headline combines
    # A report from before evaluate measured per source has no such table.
    assert "cross-source" not in report.confound_section(CONFOUNDED)
