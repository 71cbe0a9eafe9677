"""coughlab.atomic: outputs appear whole or not at all, and a killed run's leftovers go away."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coughlab.atomic import atomic_dir, atomic_file, atomic_write_text

SRC = Path(__file__).resolve().parents[1] / "src"


def run_child(tmp_path: Path, body: str) -> subprocess.Popen:
    """A Python child that opens atomic outputs in tmp_path, then runs `body`."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from coughlab.atomic import atomic_dir, atomic_file
        root = Path({str(tmp_path)!r})
        with atomic_dir(root / "combined") as tmp:
            (tmp / "manifest.csv").write_text("half")
            with atomic_file(root / "features.npz") as fh:
                fh.write(b"half")
                print("ready", flush=True)
    """) + textwrap.indent(textwrap.dedent(body), " " * 8)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def killed_halfway(tmp_path: Path) -> list[str]:
    child = run_child(tmp_path, "os.kill(os.getpid(), signal.SIGKILL)")
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    left = leftovers(tmp_path)
    assert len(left) == 2 and all(f".{os.getpid()}-" not in n for n in left), left
    return left


def test_a_later_run_removes_what_a_killed_run_left(tmp_path):
    killed_halfway(tmp_path)
    with atomic_dir(tmp_path / "combined") as tmp:
        (tmp / "manifest.csv").write_text("whole")
    with atomic_file(tmp_path / "features.npz") as fh:
        fh.write(b"whole")
    assert leftovers(tmp_path) == []
    assert (tmp_path / "combined" / "manifest.csv").read_text() == "whole"


def test_a_running_process_keeps_its_temporary_outputs(tmp_path):
    child = run_child(tmp_path, "sys.stdin.readline()")
    try:
        assert child.stdout.readline().strip() == "ready"
        theirs = leftovers(tmp_path)
        atomic_write_text(tmp_path / "features.npz", "mine")
        with atomic_dir(tmp_path / "combined") as tmp:
            (tmp / "manifest.csv").write_text("mine")
        assert leftovers(tmp_path) == theirs  # a parallel run's work in progress is left alone
    finally:
        child.kill()
        child.wait(timeout=60)
    atomic_write_text(tmp_path / "features.npz", "again")
    with atomic_dir(tmp_path / "combined"):
        pass
    assert leftovers(tmp_path) == []


def test_only_leftovers_of_the_same_output_are_touched(tmp_path):
    killed_halfway(tmp_path)
    atomic_write_text(tmp_path / "other.txt", "x")
    assert len(leftovers(tmp_path)) == 2


def dead_pid() -> int:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    return dead.pid


@pytest.mark.parametrize("pid", [dead_pid, lambda: 2**64], ids=["killed-run", "huge-pid"])
def test_an_output_moved_aside_by_a_killed_run_is_put_back(tmp_path, pid):
    """Also under a PID no process can have (os.kill raises OverflowError for it)."""
    aside = tmp_path / f".combined.old-{pid()}"
    aside.mkdir()
    (aside / "manifest.csv").write_text("previous")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "combined"):
            raise RuntimeError("this run fails too")
    assert (tmp_path / "combined" / "manifest.csv").read_text() == "previous"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("pid", ["0", str(2**31), str(2**64), "9" * 200])
def test_a_leftover_whose_pid_no_process_can_have_is_removed_not_a_crash(tmp_path, pid):
    """os.kill(2**64, 0) raises OverflowError, not ProcessLookupError: such a name (copied
    from elsewhere, or made up) once crashed every later run of the stage."""
    (tmp_path / f".combined.{pid}-x1.tmp").mkdir()
    (tmp_path / f".features.npz.{pid}-x2.tmp").write_bytes(b"half")
    with atomic_dir(tmp_path / "combined") as tmp:
        (tmp / "manifest.csv").write_text("whole")
    atomic_write_text(tmp_path / "features.npz", "whole")
    assert leftovers(tmp_path) == []


