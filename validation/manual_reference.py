"""The manual differential as the reference (CLSI H20): examiners' cell counts, pooled per sample.

A CSV with ``sample_id``, ``examiner``, optional ``slide``, and one count column per class counted
(``Neutrophils``, ``Band neutrophils``, ``Lymphocytes``, ``Blasts``, ``Smudge cells`` ...), one row
per examiner (and slide). H20's design is 400 cells per sample: 200 by each of two examiners on two
slides. ``wbcv compare --reference`` recognises the file by its ``examiner`` column
(``wbcv.validation.reference.read_reference``).

Per sample, every row is pooled: k_c = the sum of the examiners' counts of the names the default
class mapping (``wbcv.validation.results.mapping``) maps to class c, n = the cells of the five
classes. The reference ``X%`` = 100 k_c / n: the differential among the five classes, the same
denominator as wbcv's (and an imported analyzer's) fraction k_c / n_classified. Cells of other
white cells (blasts, immature granulocytes: mapped to ``unclassified``) are counted in
``cells_outside_five`` and not in n; non-white cells (smudge cells, erythroblasts: ``excluded``) in
``cells_excluded``. A column the mapping does not know is an error naming it: a reference is
not read with guessed classes.

The counting error of each reference value is its **Clopper–Pearson** interval at 95 % for k_c of n
(``wbcv.validation.agreement.clopper_pearson``, Clopper and Pearson 1934: exact, conservative),
in ``<X%> ci_low`` and ``<X%> ci_high`` (percent), not Rümke's table (which H20 reproduces and
which differs slightly). The table also holds ``examiners`` (how many distinct examiners counted the
sample) and ``cells_counted`` (n); fewer than two examiners is allowed and visible there.

The between-examiner check (``wbcv.validation.examiner_check``: Fisher's exact test per class, flag
at p < 0.05): with exactly two examiners, ``<X%> examiners_p`` holds the p of their two counts
(each pooled over the examiner's slides) and ``between_examiners`` names the classes flagged
(empty: none); with another number of examiners the p values are null and ``between_examiners``
says why the check was not made.

Rows: a row that does not fit the header is excluded with the reason (the reference reader's rule);
a row without a sample id or examiner is excluded; a count that is not a whole number >= 0 is an
error naming the row and column; a sample with no cell of the five classes is excluded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import polars as pl

from wbcv.base.errors import WbcvError, clipped, shown
from wbcv.base.taxonomy import CELL_CLASSES, UNCLASSIFIED
from wbcv.validation.agreement import clopper_pearson
from wbcv.validation.examiner_check import examiner_difference_p, examiners_differ
from wbcv.validation.measurands import SYSMEX_CODE
from wbcv.validation.reference import EXCLUDED_SCHEMA, ReferenceData, fitted_rows, table_schema
from wbcv.validation.results.mapping import EXCLUDED, TOTAL, UNMAPPED, default_mapping, normalise

FORMAT: Final[str] = "manual-differential"
#: The confidence of the counting interval stored with each reference value.
COUNTING_CONFIDENCE: Final[float] = 0.95
PERCENTS: Final[dict[str, str]] = {c: f"{SYSMEX_CODE[c]}%" for c in CELL_CLASSES}
_RESERVED: Final[tuple[str, ...]] = ("sample id", "examiner", "slide")


class _Excluded:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)


def _count(path: Path, r: int, column: str, text: str) -> int:
    t = text.strip()
    try:
        value = float(t)
    except ValueError:
        value = -1.0
    if value < 0 or value != int(value):
        raise WbcvError(
            f"{path} row {r}, column {shown(column)}: {shown(text)} is not a cell count; expected a whole number "
            "of at least 0 (an empty cell is not read as 0: write 0)"
        )
    return int(value)


def _class_columns(path: Path, header: list[str], h: int) -> list[tuple[int, str, str]]:
    """(index, column, target) of every class column (a total column too, target 'total'); an
    unknown class name is an error."""
    mapping = default_mapping()
    columns, unknown = [], []
    for i, name in enumerate(header):
        if not name or normalise(name) in _RESERVED:
            continue
        target = mapping.target(name)[0]
        if target == UNMAPPED:
            unknown.append(name)
        columns.append((i, name, target))
    if unknown:
        raise WbcvError(
            f"{path} row {h}: column(s) {clipped(', '.join(map(repr, unknown)), 200)} are not cell classes wbcv knows; "
            "expected sample_id, examiner, slide and counts per class (Neutrophils, Lymphocytes, Monocytes, "
            "Eosinophils, Basophils, Band neutrophils, Blasts, Smudge cells ...)"
        )
    return columns


def read_manual_differential(
    path: Path, encoding: str, header_row: list[str], h: int, rows: Iterator[tuple[int, list[str]]], sep: str
) -> ReferenceData:
    """The pooled manual differential (module docstring) as a reference table."""
    del sep  # counts are whole numbers: no decimal separator to choose
    header = [c.strip() for c in header_row]
    lower = [normalise(c) for c in header]
    sid_i, ex_i = lower.index("sample id"), lower.index("examiner")
    columns = _class_columns(path, header, h)
    excluded = _Excluded()
    pooled: dict[str, dict[str, Any]] = {}
    for r, row, sid in fitted_rows(rows, header, sid_i, excluded):
        examiner = row[ex_i].strip()
        if not sid or not examiner:
            excluded.add({"source_row": r, "sample_id": sid or None, "reason": "no sample id or no examiner"})
            continue
        counts = [(name, target, _count(path, r, name, row[i])) for i, name, target in columns]
        total = [n for _, target, n in counts if target == TOTAL]
        counted = sum(n for _, target, n in counts if target != TOTAL)
        if total and total[0] != counted:
            raise WbcvError(f"{path} row {r}: the total is {total[0]} but the class counts sum to {counted}")
        p = pooled.setdefault(
            sid, {"row": r, "examiners": defaultdict(lambda: defaultdict(int)), "k": defaultdict(int)}
        )
        for _, target, n in counts:
            p["k"][target] += n
            p["examiners"][examiner][target] += n
    records = [rec for sid, p in pooled.items() if (rec := _record(sid, p, excluded)) is not None]
    quantities = list(PERCENTS.values())
    extra = {
        **{f"{q} {end}": pl.Float64() for q in quantities for end in ("ci_low", "ci_high")},
        "cells_counted": pl.Int64(),
        "cells_outside_five": pl.Int64(),
        "cells_excluded": pl.Int64(),
        "examiners": pl.Int64(),
        **{f"{q} examiners_p": pl.Float64() for q in quantities},
        "between_examiners": pl.String(),
    }
    table = pl.DataFrame(records, schema={**table_schema(quantities), **extra})
    excluded_table = pl.DataFrame(excluded.rows, schema=EXCLUDED_SCHEMA).sort("source_row")
    if table.height == 0:
        raise WbcvError(f"{path}: no sample with cells of the five classes counted")
    return ReferenceData(path, FORMAT, encoding, table, excluded_table, tuple(quantities))


def _record(sid: str, p: dict[str, Any], excluded: _Excluded) -> dict[str, Any] | None:
    k = p["k"]
    n = sum(k[c] for c in CELL_CLASSES)
    if n == 0:
        excluded.add({"source_row": p["row"], "sample_id": sid, "reason": "no cell of the five classes counted"})
        return None
    rec: dict[str, Any] = {
        "sample_id": sid,
        "measured_at": None,
        "analyzer_id": f"manual differential, {len(p['examiners'])} examiner(s)",
        "source_row": p["row"],
        "flags": [],
        "cells_counted": n,
        "cells_outside_five": k[UNCLASSIFIED],
        "cells_excluded": k[EXCLUDED],
        "examiners": len(p["examiners"]),
    }
    for c, q in PERCENTS.items():
        ci = clopper_pearson(k[c], n, COUNTING_CONFIDENCE)
        rec |= {q: 100.0 * k[c] / n, f"{q} status": "ok", f"{q} marks": ""}
        rec |= {f"{q} ci_low": 100.0 * ci.lower, f"{q} ci_high": 100.0 * ci.upper}
    return rec | _between_examiners(p["examiners"])


def _between_examiners(by_examiner: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The H20 between-examiner check of one sample (module docstring): p per class, classes flagged."""
    out: dict[str, Any] = {f"{q} examiners_p": None for q in PERCENTS.values()}
    if len(by_examiner) != 2:
        return out | {"between_examiners": f"not checked: {len(by_examiner)} examiner(s), the check needs two"}
    (a, ka), (b, kb) = sorted(by_examiner.items())
    na, nb = (sum(k[c] for c in CELL_CLASSES) for k in (ka, kb))
    flagged = []
    for c, q in PERCENTS.items():
        p = examiner_difference_p(ka[c], na, kb[c], nb)
        out[f"{q} examiners_p"] = p
        if examiners_differ(p):
            flagged.append(f"{q} ({a} {100 * ka[c] / na:.1f} %, {b} {100 * kb[c] / nb:.1f} %, p {p:.2g})")
    if na == 0 or nb == 0:
        return out | {"between_examiners": "not checked: an examiner counted no cell of the five classes"}
    return out | {"between_examiners": "; ".join(flagged)}
