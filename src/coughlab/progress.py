"""Progress bars that read well wherever they are written.

On a terminal: tqdm's bar, redrawn in place. Into a pipe or a file (CI logs, `dvc repro > log`)
a redrawn bar is one line of many thousand characters joined by carriage returns, so there the
same bar prints a plain line at the start, every PIPE_INTERVAL_S seconds and at the end.
Every bar in coughlab is made by `progress_bar`, with tqdm's arguments.
"""
from __future__ import annotations

import re
import sys
from typing import IO

from tqdm import tqdm

PIPE_INTERVAL_S = 10.0
# What tqdm writes to redraw in place: carriage returns, newlines and cursor-up escapes.
_REDRAW = re.compile(r"[\r\n]|\x1b\[A")


class _Lines:
    """A file that turns tqdm's in-place redraws into one line per redraw (a repeat of the
    previous line, as tqdm's final redraw of a bar that did not move, is left out)."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> int:
        for part in _REDRAW.split(text):
            if (part := part.rstrip()) and part != self.last:
                self.stream.write(part + "\n")
                self.last = part
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def progress_bar(iterable=None, *, file: IO[str] | None = None, **kwargs) -> tqdm:
    """tqdm(iterable, **kwargs) on a terminal; periodic whole lines anywhere else; nothing at
    all for no work (a bar of 0 items, such as `confirm: 0pair`, says nothing useful)."""
    total = kwargs.get("total", len(iterable) if hasattr(iterable, "__len__") else None)
    if total == 0:
        kwargs["disable"] = True
    stream = sys.stderr if file is None else file
    if is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.setdefault("mininterval", PIPE_INTERVAL_S)
    kwargs.setdefault("ascii", True)  # log viewers need not decode tqdm's block characters
    return tqdm(iterable, file=_Lines(stream), **kwargs)
