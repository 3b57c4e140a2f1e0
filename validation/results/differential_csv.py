"""Per-sample differential table (CSV): one row per sample, one column per export class.

Columns (names case-insensitive; comma, semicolon or tab separated; UTF-8 or cp1252):

* ``sample_id`` (required): must match the reference's sample numbers;
* one column per class the analyzer reports, named as the export names it (``Neutrophils``,
  ``Band neutrophils``, ``Smudge`` ...; mapped by ``wbcv.validation.results.mapping``): a count of
  cells, or a percentage when the name ends in ``%`` or ``(%)`` (``NEUT%``, ``Lymphocytes (%)``);
* optional ``total`` (or ``total cells``, ``cells counted``: any name the mapping maps to
  ``total``): the number of cells counted, needed for percentages (else ``--total-cells``);
* optional ``stage``: ``preclassified`` or ``verified``. A sample with a verified row is counted
  from it; its pre-classified row is listed as not used. Without the column every row counts.

A value must be a number (decimal comma with ``;`` separators); an empty cell, ``----`` or text is
an error naming the row and column. A row that does not fit the header (short or long) is excluded
with the reason (the reference reader's rule); so is a row without a sample id.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from wbcv.base.errors import WbcvError, clipped, shown
from wbcv.validation.reference import fitted_rows
from wbcv.validation.results.counting import Collected, RowExclusions
from wbcv.validation.results.mapping import TOTAL, ClassMapping, normalise
from wbcv.validation.results.textfile import open_csv

STAGES: Final[tuple[str, ...]] = ("preclassified", "verified")
_PERCENT = re.compile(r"(\s*%|\s*\(\s*%\s*\))\s*$")
_RESERVED: Final[tuple[str, ...]] = ("sample_id", "sample id", "stage")


def _number(path: Path, r: int, column: str, text: str, decimal_comma: bool) -> float:
    t = text.strip()
    if decimal_comma:
        t = t.replace(",", ".")
    try:
        value = float(t)
    except ValueError:
        value = float("nan")
    if not value == value or value in (float("inf"), float("-inf")) or value < 0:  # NaN, inf, negative
        raise WbcvError(
            f"{path} row {r}, column {shown(column)}: {shown(text)} is not a count or percentage; expected a "
            "number of at least 0 (an empty cell is not read as 0: write 0)"
        )
    return value


def read_differential_csv(path: Path, mapping: ClassMapping, collected: Collected) -> str:
    """Read the table into ``collected``; returns the encoding."""
    with open_csv(path) as src:
        lower = [normalise(h) for h in src.header]
        if "sample id" not in lower:
            raise WbcvError(
                f"{path} row {src.header_row}: no 'sample_id' column; expected sample_id and one column per class"
            )
        sid_i = lower.index("sample id")
        stage_i = lower.index("stage") if "stage" in lower else None
        value_columns = [(i, h) for i, h in enumerate(src.header) if h and normalise(h) not in _RESERVED]
        if not value_columns:
            raise WbcvError(f"{path} row {src.header_row}: no class columns; expected one column per class")
        decimal_comma = src.separator == ";"
        chosen: dict[str, tuple[int, str]] = {}
        rows: list[tuple[int, list[str], str, str]] = []
        for r, row, sid in fitted_rows(src.rows, src.header, sid_i, RowExclusions(collected)):
            if not sid:
                collected.exclude(None, f"row {r}", None, None, "no sample id")
                continue
            stage = _stage(path, r, row[stage_i]) if stage_i is not None else ""
            rows.append((r, row, sid, stage))
            _choose(collected, chosen, sid, r, stage)
        for r, row, sid, stage in rows:
            if chosen.get(sid, (None,))[0] != r:
                continue
            where = f"row {r}" + (f" ({stage})" if stage else "")
            for i, column in value_columns:
                value = _number(path, r, column, row[i], decimal_comma)
                kind = "percent" if _PERCENT.search(column) else "count"
                name = _PERCENT.sub("", column).strip()
                if mapping.target(name)[0] == TOTAL:
                    kind = TOTAL
                collected.observe(sid, where, name, kind, value)
        return src.encoding


def _stage(path: Path, r: int, text: str) -> str:
    stage = text.strip().lower().replace("-", "").replace(" ", "")
    if stage not in STAGES:
        raise WbcvError(f"{path} row {r}, column 'stage': {shown(clipped(text))}; expected preclassified or verified")
    return stage


def _choose(collected: Collected, chosen: dict[str, tuple[int, str]], sid: str, r: int, stage: str) -> None:
    """Keep one row per sample: the verified one when there is one; the other is listed as not used."""
    previous = chosen.get(sid)
    if previous is None:
        chosen[sid] = (r, stage)
        return
    if previous[0] < 0 or previous[1] == stage:
        if previous[0] >= 0:
            collected.exclude(sid, f"row {previous[0]}", None, None, "sample repeated with the same stage; not used")
        collected.exclude(sid, f"row {r}", None, None, "sample repeated with the same stage; not used")
        chosen[sid] = (-1, stage)  # which row is right cannot be known: neither is used
        return
    keep, drop = ((r, stage), previous) if stage == "verified" else (previous, (r, stage))
    chosen[sid] = keep
    collected.exclude(sid, f"row {drop[0]}", None, None, f"{drop[1]} row not used: the sample's verified row is used")
