"""Server-side filter, sort and paging of the dashboard's sample table (DataTable's filter syntax)."""

from __future__ import annotations

import polars as pl
import pytest

from wbcv.dashboards.table import apply_view, page

FRAME = pl.DataFrame(
    {
        "sample_id": ["S1", "S2", "S3", "s4"],
        "error_pct": [-12.5, 3.0, None, 20.0],
        "within_limit": [False, True, True, False],
        "excluded_reason": [None, None, "reference flag(s) X", ""],
    }
)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["S1", "S2", "S3", "s4"]),
        ('{sample_id} contains "S"', ["S1", "S2", "S3"]),
        ("{sample_id} icontains s", ["S1", "S2", "S3", "s4"]),
        ("{sample_id} scontains S2", ["S2"]),
        ("{sample_id} = S3", ["S3"]),
        ("{error_pct} > 0", ["S2", "s4"]),
        ("{error_pct} ge 3 && {within_limit} = false", ["s4"]),
        ("{error_pct} < 0", ["S1"]),
        ("{within_limit} eq true", ["S2", "S3"]),
        ("{excluded_reason} is blank", ["S1", "S2", "s4"]),
        ("{excluded_reason} is not blank", ["S3"]),
        ("{error_pct} > abc", ["S1", "S2", "S3", "s4"]),  # unreadable part: filters nothing
        ("{no_such_column} = 1", ["S1", "S2", "S3", "s4"]),
    ],
)
def test_filter(query, expected):
    assert apply_view(FRAME, query, None)["sample_id"].to_list() == expected


def test_sort_keeps_missing_values_last_and_pages_cover_every_row():
    desc = apply_view(FRAME, "", [{"column_id": "error_pct", "direction": "desc"}])
    assert desc["sample_id"].to_list() == ["s4", "S2", "S1", "S3"]
    asc = apply_view(FRAME, "", [{"column_id": "error_pct", "direction": "asc"}])
    assert asc["sample_id"].to_list() == ["S1", "S2", "s4", "S3"]
    rows, n = page(asc, 1, 3)
    assert n == 2 and rows["sample_id"].to_list() == ["S3"]
    assert page(asc, 99, 3)[0]["sample_id"].to_list() == ["S3"]  # past the end: the last page
    assert page(FRAME.clear(), 0, 3)[1] == 1
