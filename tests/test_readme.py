"""README's first screen tells a newcomer who it is for, that the default data is synthetic,
that no model is a diagnostic, what it costs, and the two commands; the targets it names
exist."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_SCREEN = 40  # lines


def test_first_screen_says_what_a_newcomer_must_know_and_the_two_commands():
    screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:FIRST_SCREEN])
    assert "make repro   # create .venv, install, run the whole pipeline on the embedded sample" \
        in screen
    assert "make test    # create .venv, install, run the test suite" in screen
    for fact in ("is for", "SYNTHETIC sample", "No model here is a diagnostic", "GB of disk",
                 "minutes"):
        assert fact in screen, fact


def test_every_make_target_the_readme_names_exists():
    listed = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    targets = {line.split()[0] for line in listed.splitlines() if line.strip()}
    named = set(re.findall(r"`make (\w[\w-]*)", (ROOT / "README.md").read_text()))
    assert named and named <= targets, named - targets
