"""Progress bars in a pipe are whole lines (CI logs, `dvc repro > log`); a terminal keeps tqdm's
bar."""
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def run_bar(items: int, stderr, extra: str = "") -> subprocess.Popen:
    code = ("import time\nfrom coughlab.progress import progress_bar\n"
            f"for _ in progress_bar(range({items}), desc='work', unit='clip'{extra}):\n"
            "    time.sleep(0.002)\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-c", code], stderr=stderr, env=env)


def piped(items: int, extra: str = "") -> str:
    process = run_bar(items, subprocess.PIPE, extra)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return err.decode()


def test_a_bar_into_a_pipe_prints_lines_not_carriage_returns():
    out = piped(5, ", mininterval=0")
    assert "\r" not in out and "\x1b[" not in out
    lines = out.splitlines()
    assert len(lines) >= 2, out  # the start and at least one redraw, each its own line
    assert lines[0].startswith("work:   0%") and lines[-1].startswith("work: 100%")
    assert all("5/5" in line for line in lines[-1:]) and all(line.strip() for line in lines)


def test_a_fast_bar_into_a_pipe_prints_only_its_start_and_end():
    lines = piped(200).splitlines()  # well inside PIPE_INTERVAL_S: no periodic line
    assert [line.split("|")[0] for line in lines] == ["work:   0%", "work: 100%"], lines


def test_a_terminal_keeps_the_redrawn_bar():
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = run_bar(5, terminal, ", mininterval=0")
    os.close(terminal)
    out = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(controller)
    assert process.wait(timeout=60) == 0
    assert b"\r" in out and b"5/5" in out


def test_every_bar_in_the_code_goes_through_progress_bar():
    direct = [str(path.relative_to(ROOT)) for path in sorted(SRC.rglob("*.py"))
              if path.name != "progress.py"
              and re.search(r"^\s*(from tqdm\b|import tqdm)", path.read_text(), re.M)]
    assert direct == [], f"use coughlab.progress.progress_bar instead of tqdm in {direct}"
