"""Text from outside (request lines, commit subjects, data files) escaped where it lands.

Each output has its own dangerous characters: a console runs escape sequences, a spreadsheet
runs a cell that starts like a formula, Markdown turns text into headings, links, HTML and
table rows. Each function here makes text inert for one of them and leaves ordinary text as
it was.
"""
from __future__ import annotations


def printable(text: str) -> str:
    """`text` for a console line: control and other unprintable characters as Python escapes
    (`\\x1b`, `\\n`, `\\u2028`), so no escape sequence reaches the terminal."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
