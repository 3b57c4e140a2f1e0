"""Server-side filter, sort and paging of the sample table (DataTable ``*_action="custom"``).

A 10,000-sample run is 2.8 MB of table rows; sending only the visible page keeps the browser free
to draw the plots. The CSV export applies the same filter and sort to every row, so it holds
exactly what the user is looking at, all pages included.

Filter expressions are DataTable's: ``{column} OPERATOR value`` joined by `` && ``; operators
``= != < <= > >= contains datestartswith`` and their word forms (``eq ne lt le gt ge``), each
optionally prefixed with ``i`` or ``s`` (case-insensitive / sensitive), plus ``is blank`` and
``is not blank``. A part that cannot be read filters nothing (the table shows it as invalid).
"""

from __future__ import annotations

import re
from typing import Any, Final

import polars as pl

_PART: Final[re.Pattern[str]] = re.compile(
    r"^\s*\{(?P<col>[^}]+)\}\s+(?P<op>[is]?(?:=|!=|<=|>=|<|>|eq|ne|lt|le|gt|ge|contains|datestartswith))\s+(?P<value>.+?)\s*$"
)
_UNARY: Final[re.Pattern[str]] = re.compile(r"^\s*\{(?P<col>[^}]+)\}\s+is\s+(?P<neg>not\s+)?blank\s*$")
_WORDS: Final[dict[str, str]] = {"eq": "=", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def _value(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        return text[1:-1]
    return text


def _condition(part: str, schema: pl.Schema) -> pl.Expr | None:
    m = _UNARY.match(part)
    if m and m["col"] in schema:
        blank = pl.col(m["col"]).is_null() | (pl.col(m["col"]).cast(pl.String) == "")
        return ~blank if m["neg"] else blank
    m = _PART.match(part)
    if not m or m["col"] not in schema:
        return None
    col, op, raw = m["col"], m["op"], _value(m["value"])
    insensitive = op.startswith("i")
    op = _WORDS.get(op.lstrip("is"), op.lstrip("is")) if op not in ("s=", "i=") else "="
    dtype = schema[col]
    if op in ("contains", "datestartswith"):
        text = pl.col(col).cast(pl.String)
        if insensitive:
            return text.str.to_lowercase().str.contains(raw.lower(), literal=True)
        if op == "datestartswith":
            return text.str.starts_with(raw)
        return text.str.contains(raw, literal=True)
    value: Any = raw
    if dtype.is_numeric():
        try:
            value = float(raw)
        except ValueError:
            return None
    elif dtype == pl.Boolean:
        value = raw.lower() == "true"
    expr = pl.col(col)
    if insensitive and isinstance(value, str):
        expr, value = expr.str.to_lowercase(), value.lower()
    return {
        "=": expr == value,
        "!=": expr != value,
        "<": expr < value,
        "<=": expr <= value,
        ">": expr > value,
        ">=": expr >= value,
    }[op]


def apply_view(frame: pl.DataFrame, filter_query: str | None, sort_by: list[dict[str, str]] | None) -> pl.DataFrame:
    """The rows the table shows, in its order (before paging)."""
    for part in (filter_query or "").split(" && "):
        if part.strip():
            cond = _condition(part, frame.schema)
            if cond is not None:
                frame = frame.filter(cond.fill_null(False))
    sort = [s for s in (sort_by or []) if s.get("column_id") in frame.columns]
    if sort:
        frame = frame.sort(
            [s["column_id"] for s in sort], descending=[s.get("direction") == "desc" for s in sort], nulls_last=True
        )
    return frame


def page(frame: pl.DataFrame, page_current: int | None, page_size: int) -> tuple[pl.DataFrame, int]:
    """One page of rows and the number of pages (at least 1)."""
    n_pages = max(1, -(-frame.height // page_size))
    current = min(max(page_current or 0, 0), n_pages - 1)
    return frame.slice(current * page_size, page_size), n_pages
