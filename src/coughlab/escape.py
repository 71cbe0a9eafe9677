"""Text from outside (request lines, commit subjects, data files) escaped where it lands.

Each output has its own dangerous characters: a console runs escape sequences, a spreadsheet
runs a cell that starts like a formula, Markdown turns text into headings, links, HTML and
table rows. Each function here makes text inert for one of them and leaves ordinary text as
it was.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pandas as pd


def printable(text: str) -> str:
    """`text` for a console line: control and other unprintable characters as Python escapes
    (`\\x1b`, `\\n`, `\\u2028`), so no escape sequence reaches the terminal."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP's list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def csv_cell(value):
    """A CSV cell no spreadsheet runs: text starting like a formula gets a leading single
    quote (what a spreadsheet itself shows as text), and so does text already starting with
    one, so that `csv_text` gives back exactly what was written. Non-text is left alone."""
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, QUOTE)):
        return QUOTE + value
    return value


def csv_text(value):
    """The value `csv_cell` was given."""
    return value[1:] if isinstance(value, str) and value.startswith(QUOTE) else value


def write_csv(table: pd.DataFrame, path: Path | str) -> None:
    """`table` as CSV (no index) with every text cell a `csv_cell`. A lone CR inside a value
    would end its row for every reader (the csv module quotes only fields that hold the line
    terminator, \\n): a table holding one is written with every cell quoted."""
    safe = table.apply(lambda column: column.map(csv_cell) if is_text(column) else column)
    has_cr = any(safe[c].map(lambda v: isinstance(v, str) and "\r" in v).any()
                 for c in safe.columns if is_text(safe[c]))
    safe.to_csv(path, index=False, quoting=csv.QUOTE_ALL if has_cr else csv.QUOTE_MINIMAL)


def read_csv_cells(path: Path | str) -> pd.DataFrame:
    """A CSV `write_csv` wrote, as the strings it was given (every column read as text)."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return table.apply(lambda column: column.map(csv_text))


def is_text(column: pd.Series) -> bool:
    return pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)


# What makes inline Markdown (GitHub's, tables and strikethrough included) more than text:
# escapes, code, emphasis, links and images, HTML and entities, table cells, strikethrough.
MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]<>&|~])")


def markdown_text(text: str) -> str:
    """`text` as inline Markdown that renders as itself, on one line: never a heading, link,
    image, HTML, emphasis or table cell of its own (newlines and control characters shown
    as escapes)."""
    return MARKDOWN_INLINE.sub(r"\\\1", printable(text))


def markdown_code(text: str, in_table: bool = True) -> str:
    """`text` as a Markdown code span, on one line: its fence longer than any run of
    backticks in it; in a table, `|` escaped (GitHub's tables split on it even in code)."""
    content = printable(text)
    if in_table:
        content = content.replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", content)), default=0) + 1)
    pad = " " if content[:1] in ("`", " ") or content[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{content}{pad}{fence}"
