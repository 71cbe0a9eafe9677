"""`make plots`: DVC's plot page renders with no network (DVC's own loads Vega from a CDN and
stays blank offline). Needs Debian's chromium, as tests/test_browser.py does."""
import os
from pathlib import Path

import pytest
import yaml
from test_report import ROOT, project_plots_repo  # noqa: F401 - the fixture

from coughlab import plots

CHROMIUM = Path("/usr/bin/chromium")


def test_the_page_loads_nothing_from_elsewhere(project_plots_repo):  # noqa: F811
    page = plots.render(project_plots_repo, ["main"], project_plots_repo / "build" / "plots")
    text = page.read_text()
    assert "<script src" not in text and "cdn.jsdelivr" not in text
    assert "window.vegaEmbed=" in text  # the pinned bundle, inlined


def test_a_dvc_failure_is_one_line(project_plots_repo):  # noqa: F811
    with pytest.raises(SystemExit, match=r"plots: `dvc plots diff no-such-rev` failed"):
        plots.main(["no-such-rev", "--repo", str(project_plots_repo)])


@pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                    reason=f"{CHROMIUM} not installed (`make install` installs it)")
def test_every_plot_renders_offline_in_a_browser(project_plots_repo):  # noqa: F811
    from playwright.sync_api import sync_playwright

    page_file = plots.render(project_plots_repo, ["main"], project_plots_repo / "build" / "plots")
    expected = len(yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page()
        requested, errors = [], []
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
            "file:") else (requested.append(route.request.url), route.abort())[-1])
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.goto(page_file.as_uri())
        page.wait_for_function(f"document.querySelectorAll('.vega-embed svg, .vega-embed "
                               f"canvas').length >= {expected}", timeout=60_000)
        drawn = page.evaluate("document.querySelectorAll('.vega-embed').length")
        browser.close()
    assert requested == [] and errors == []
    assert drawn == expected
