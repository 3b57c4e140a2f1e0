"""Server-side filter, sort and paging of the dashboard's sample table (AG Grid's filter and sort models)."""

from __future__ import annotations

import polars as pl
import pytest

from wbcv.dashboards.app import TABLE_NUMBERS, samples_view
from wbcv.dashboards.data import TABLE_COLUMNS
from wbcv.dashboards.table import NUMBER_FILTERS, TEXT_FILTERS, apply_view, block

FRAME = pl.DataFrame(
    {
        "sample_id": ["S1", "S2", "S3", "s4"],
        "error_pct": [-12.5, 3.0, None, 20.0],
        "within_limit": [False, True, True, False],
        "excluded_reason": [None, None, "reference flag(s) X", ""],
    }
)


def text(kind: str, value: str | None = None) -> dict:
    return {"filterType": "text", "type": kind, **({"filter": value} if value is not None else {})}


def number(kind: str, value: float | str | None = None, value_to: float | None = None) -> dict:
    model = {"filterType": "number", "type": kind, "filter": value}
    return model | ({"filterTo": value_to} if value_to is not None else {})


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ({}, ["S1", "S2", "S3", "s4"]),
        (None, ["S1", "S2", "S3", "s4"]),
        ({"sample_id": text("contains", "s")}, ["S1", "S2", "S3", "s4"]),  # case ignored, as AG Grid does
        ({"sample_id": text("notContains", "S2")}, ["S1", "S3", "s4"]),
        ({"sample_id": text("equals", "s3")}, ["S3"]),
        ({"sample_id": text("notEqual", "s3")}, ["S1", "S2", "s4"]),
        ({"sample_id": text("startsWith", "s")}, ["S1", "S2", "S3", "s4"]),
        ({"sample_id": text("endsWith", "4")}, ["s4"]),
        ({"error_pct": number("greaterThan", 0)}, ["S2", "s4"]),
        ({"error_pct": number("greaterThanOrEqual", 3)}, ["S2", "s4"]),
        ({"error_pct": number("lessThan", 0)}, ["S1"]),
        ({"error_pct": number("lessThanOrEqual", 3)}, ["S1", "S2"]),
        ({"error_pct": number("equals", 3)}, ["S2"]),
        ({"error_pct": number("notEqual", 3)}, ["S1", "s4"]),  # missing values left out
        ({"error_pct": number("inRange", 20, -12.5)}, ["S2"]),  # ends excluded, either order
        ({"error_pct": number("blank")}, ["S3"]),
        ({"error_pct": number("notBlank")}, ["S1", "S2", "s4"]),
        # booleans are matched as the text the grid shows
        ({"within_limit": text("equals", "false")}, ["S1", "s4"]),
        ({"within_limit": text("equals", "true"), "error_pct": number("greaterThan", 0)}, ["S2"]),
        ({"excluded_reason": text("blank")}, ["S1", "S2", "s4"]),
        ({"excluded_reason": text("notBlank")}, ["S3"]),
        ({"excluded_reason": text("notContains", "flag")}, ["S1", "S2", "s4"]),  # missing values kept
        # two conditions on one column
        (
            {
                "error_pct": {
                    "filterType": "number",
                    "operator": "OR",
                    "conditions": [number("lessThan", 0), number("greaterThan", 10)],
                }
            },
            ["S1", "s4"],
        ),
        (
            {
                "sample_id": {
                    "filterType": "text",
                    "operator": "AND",
                    "conditions": [text("startsWith", "s"), text("notEqual", "S2")],
                }
            },
            ["S1", "S3", "s4"],
        ),
        # what cannot be read filters nothing
        ({"error_pct": number("greaterThan", "abc")}, ["S1", "S2", "S3", "s4"]),
        ({"error_pct": number("inRange", 1)}, ["S1", "S2", "S3", "s4"]),
        ({"error_pct": number("greaterThan", None)}, ["S1", "S2", "S3", "s4"]),
        ({"sample_id": number("greaterThan", 1)}, ["S1", "S2", "S3", "s4"]),  # a number filter on text
        ({"sample_id": text("regex", "S.")}, ["S1", "S2", "S3", "s4"]),
        ({"no_such_column": text("equals", "1")}, ["S1", "S2", "S3", "s4"]),
        ({"sample_id": "S1"}, ["S1", "S2", "S3", "s4"]),
    ],
)
def test_filter(model, expected):
    assert apply_view(FRAME, model, None)["sample_id"].to_list() == expected


def test_sort_keeps_missing_values_last_and_blocks_cover_every_row():
    desc = apply_view(FRAME, None, [{"colId": "error_pct", "sort": "desc"}])
    assert desc["sample_id"].to_list() == ["s4", "S2", "S1", "S3"]
    asc = apply_view(FRAME, {}, [{"colId": "error_pct", "sort": "asc"}])
    assert asc["sample_id"].to_list() == ["S1", "S2", "s4", "S3"]
    two = apply_view(FRAME, {}, [{"colId": "within_limit", "sort": "asc"}, {"colId": "sample_id", "sort": "desc"}])
    assert two["sample_id"].to_list() == ["s4", "S1", "S3", "S2"]
    # unknown columns and directions are ignored
    assert apply_view(FRAME, {}, [{"colId": "nope", "sort": "asc"}, {"colId": "sample_id", "sort": None}]).equals(FRAME)
    assert block(asc, 0, 3)["sample_id"].to_list() == ["S1", "S2", "s4"]
    assert block(asc, 3, 6)["sample_id"].to_list() == ["S3"]  # the last block is short
    assert block(asc, 9, 12).is_empty()
    assert block(asc, None, None).equals(asc)


def test_the_grid_offers_only_the_filters_the_server_reads():
    grid = samples_view()[-1]
    columns = {c["field"]: c for c in grid.columnDefs}
    assert list(columns) == list(TABLE_COLUMNS)
    for name, c in columns.items():
        numeric = name in TABLE_NUMBERS
        assert c["filter"] == ("agNumberColumnFilter" if numeric else "agTextColumnFilter")
        assert c["filterParams"]["filterOptions"] == list(NUMBER_FILTERS if numeric else TEXT_FILTERS)
    assert grid.rowModelType == "infinite"
    options = grid.dashGridOptions
    assert options["pagination"] and options["cacheBlockSize"] == options["paginationPageSize"]
