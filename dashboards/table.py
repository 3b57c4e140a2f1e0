"""Server-side filter, sort and paging of the sample table (AG Grid's infinite row model).

A 10,000-sample run is 2.8 MB of table rows; sending only the visible page keeps the browser free
to draw the plots. The grid asks for one block of rows at a time (``getRowsRequest``: the first
and last row wanted, its filter model and sort model); ``apply_view`` filters and sorts the run's
rows as the grid's header says and ``block`` cuts out the rows asked for. The CSV export applies
the same filter and sort to every row, so it holds exactly what the user is looking at, all pages
included.

Filter models are AG Grid's (https://www.ag-grid.com/javascript-data-grid/filter-api/):
``{column: {"filterType": "text"|"number", "type": ..., "filter": value, "filterTo": value}}``,
or two conditions joined by ``"operator": "AND"|"OR"`` under ``"conditions"``. The filter types
the grid's menus offer are ``TEXT_FILTERS`` and ``NUMBER_FILTERS`` (wbcv.dashboards.app sets them
in the column definitions). As AG Grid's own filters do by default: text matches ignore case and
the negated text filters keep missing values; number comparisons leave missing values out and
``inRange`` excludes its ends. A condition that
cannot be read (unknown column or type, a value that is not a number) filters nothing. Sort models
are ``[{"colId": column, "sort": "asc"|"desc"}, ...]``; missing values sort last either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import polars as pl

#: The text filters the grid offers (and this module reads).
TEXT_FILTERS: Final[tuple[str, ...]] = (
    "contains",
    "notContains",
    "equals",
    "notEqual",
    "startsWith",
    "endsWith",
    "blank",
    "notBlank",
)
#: The number filters the grid offers (and this module reads).
NUMBER_FILTERS: Final[tuple[str, ...]] = (
    "equals",
    "notEqual",
    "lessThan",
    "lessThanOrEqual",
    "greaterThan",
    "greaterThanOrEqual",
    "inRange",
    "blank",
    "notBlank",
)


def _blank(col: str, dtype: pl.DataType) -> pl.Expr:
    expr = pl.col(col)
    if dtype == pl.String:
        return expr.is_null() | (expr == "")
    return expr.is_null() | expr.is_nan() if dtype.is_float() else expr.is_null()


def _text_condition(col: str, kind: str, value: Any) -> pl.Expr | None:
    if value is None:
        return None
    text = pl.col(col).cast(pl.String).str.to_lowercase()
    needle = str(value).lower()
    conditions = {
        "contains": lambda: text.str.contains(needle, literal=True),
        "notContains": lambda: ~text.str.contains(needle, literal=True),
        "equals": lambda: text == needle,
        "notEqual": lambda: text != needle,
        "startsWith": lambda: text.str.starts_with(needle),
        "endsWith": lambda: text.str.ends_with(needle),
    }
    make = conditions.get(kind)
    if make is None:
        return None
    expr = make()
    # AG Grid's text filter keeps missing values for the negated conditions
    return expr.fill_null(True) if kind in ("notContains", "notEqual") else expr


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _number_condition(col: str, kind: str, value: Any, value_to: Any) -> pl.Expr | None:
    x = _number(value)
    if x is None:
        return None
    expr = pl.col(col)
    if kind == "inRange":
        y = _number(value_to)
        if y is None:
            return None
        low, high = min(x, y), max(x, y)
        return (expr > low) & (expr < high)
    conditions = {
        "equals": lambda: expr == x,
        "notEqual": lambda: expr != x,
        "lessThan": lambda: expr < x,
        "lessThanOrEqual": lambda: expr <= x,
        "greaterThan": lambda: expr > x,
        "greaterThanOrEqual": lambda: expr >= x,
    }
    make = conditions.get(kind)
    return make() if make is not None else None


def _condition(col: str, model: Mapping[str, Any], schema: pl.Schema) -> pl.Expr | None:
    """One column's filter model as a polars condition; ``None`` when it cannot be read."""
    parts = model.get("conditions")
    if isinstance(parts, list):
        exprs = [_condition(col, p, schema) for p in parts if isinstance(p, Mapping)]
        readable = [e for e in exprs if e is not None]
        if not readable:
            return None
        combined = readable[0]
        for e in readable[1:]:
            combined = (combined | e) if model.get("operator") == "OR" else (combined & e)
        return combined
    kind = model.get("type")
    dtype = schema[col]
    if kind == "blank":
        return _blank(col, dtype)
    if kind == "notBlank":
        return ~_blank(col, dtype)
    if model.get("filterType") == "number":
        if not dtype.is_numeric() or kind not in NUMBER_FILTERS:
            return None
        return _number_condition(col, str(kind), model.get("filter"), model.get("filterTo"))
    if kind not in TEXT_FILTERS:
        return None
    return _text_condition(col, str(kind), model.get("filter"))


def apply_view(
    frame: pl.DataFrame,
    filter_model: Mapping[str, Any] | None,
    sort_model: Sequence[Mapping[str, Any]] | None,
) -> pl.DataFrame:
    """The rows the grid shows, in its order (before paging)."""
    for col, model in (filter_model or {}).items():
        if col in frame.columns and isinstance(model, Mapping):
            cond = _condition(col, model, frame.schema)
            if cond is not None:
                frame = frame.filter(cond.fill_null(False))
    sort = [s for s in (sort_model or []) if s.get("colId") in frame.columns and s.get("sort") in ("asc", "desc")]
    if sort:
        frame = frame.sort(
            [str(s["colId"]) for s in sort], descending=[s["sort"] == "desc" for s in sort], nulls_last=True
        )
    return frame


def block(frame: pl.DataFrame, start_row: int | None, end_row: int | None) -> pl.DataFrame:
    """The rows ``start_row`` (inclusive) to ``end_row`` (exclusive) the grid asks for; fewer past the end."""
    start = max(start_row or 0, 0)
    end = frame.height if end_row is None else max(end_row, start)
    return frame.slice(start, end - start)
