"""What each make target installs: the browser only for the tests (issue 25 point 4: Ubuntu has
no `chromium` deb, so `make deploy-lambda` stopped before deploying, for a browser it never
uses)."""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NO_BROWSER = "/nonexistent/chromium"  # as on a laptop without Debian's chromium


def dry_run(target: str) -> str:
    """`make -n target` on a machine without the browser; the venv counts as installed."""
    result = subprocess.run(["make", "--no-print-directory", "-n", target, "STAMP=/dev/null",
                             "VENV=.venv", f"CHROMIUM={NO_BROWSER}"],
                            cwd=ROOT, capture_output=True, text=True, check=True)
    return result.stdout


@pytest.mark.parametrize("target", ["install", "repro", "deploy-lambda", "rollback-lambda",
                                    "serve", "report"])
def test_targets_other_than_test_never_install_the_browser(target):
    assert "chromium" not in dry_run(target)


def test_make_test_installs_the_browser_when_it_is_missing():
    assert "apt-get install -y -q chromium" in dry_run("test")
