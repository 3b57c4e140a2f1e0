"""Per-cell table (CSV): one row per cell the analyzer saved, with its pre-classified and verified class.

Columns (names case-insensitive; comma, semicolon or tab separated; UTF-8 or cp1252):

* ``sample_id`` (required);
* ``cell_id`` or ``image_path`` (at least one): names the cell; a second row with the same name in
  the same sample is excluded as a duplicate;
* ``preclassified`` (or ``preclassified_class``): the analyzer's own class;
* ``verified`` (or ``verified_class``): the class the technologist confirmed or changed to.

Counting: when the table has a verified column, every cell is counted by its verified class
(``counted_from: verified``) and a cell without one is excluded with that reason (counting it by its
pre-classification would mix the two); without the column, by the pre-classified class
(``counted_from: preclassified``). Per sample, the cells of each counted class become one count
observation; the cells themselves go to ``cells.parquet`` for the pre-classification statistics
(``wbcv.validation.cell_metrics``).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Final

from wbcv.base.errors import WbcvError
from wbcv.validation.reference import fitted_rows
from wbcv.validation.results.counting import Collected, RowExclusions
from wbcv.validation.results.mapping import ClassMapping, normalise
from wbcv.validation.results.textfile import open_csv

ID_COLUMNS: Final[tuple[str, ...]] = ("cell id", "image path")
PRECLASSIFIED: Final[tuple[str, ...]] = ("preclassified", "preclassified class")
VERIFIED: Final[tuple[str, ...]] = ("verified", "verified class")


def _column(lower: list[str], names: tuple[str, ...]) -> int | None:
    return next((lower.index(n) for n in names if n in lower), None)


def read_cell_table(path: Path, mapping: ClassMapping, collected: Collected) -> tuple[str, list[dict[str, Any]], str]:
    """Read the table into ``collected``; returns (encoding, the cells as CELL_SCHEMA rows,
    'verified' or 'preclassified': which class was counted)."""
    with open_csv(path) as src:
        lower = [normalise(h) for h in src.header]
        sid_i = _column(lower, ("sample id",))
        id_i = _column(lower, ID_COLUMNS)
        pre_i, ver_i = _column(lower, PRECLASSIFIED), _column(lower, VERIFIED)
        if sid_i is None or id_i is None or (pre_i is None and ver_i is None):
            raise WbcvError(
                f"{path} row {src.header_row}: columns {', '.join(map(repr, src.header))}; expected sample_id, "
                "cell_id or image_path, and preclassified and/or verified"
            )
        counted_from = "verified" if ver_i is not None else "preclassified"
        cells: list[dict[str, Any]] = []
        seen: dict[tuple[str, str], int] = {}
        rows_of: dict[tuple[str, str], list[int]] = defaultdict(list)
        for r, row, sid in fitted_rows(src.rows, src.header, sid_i, RowExclusions(collected)):
            cell_id = row[id_i].strip()
            pre = row[pre_i].strip() if pre_i is not None else ""
            ver = row[ver_i].strip() if ver_i is not None else ""
            reason = _problem(sid, cell_id, pre, ver, counted_from, seen.get((sid, cell_id)))
            if reason:
                collected.exclude(sid or None, f"row {r}", (ver or pre) or None, 1, reason)
                continue
            seen[(sid, cell_id)] = r
            counted = ver if counted_from == "verified" else pre
            rows_of[(sid, counted)].append(r)
            collected.sample(sid)
            cells.append(_cell(mapping, sid, cell_id, r, pre, ver, counted))
        for (sid, name), rows in rows_of.items():
            shown_rows = ", ".join(map(str, rows[:3])) + (", …" if len(rows) > 3 else "")
            collected.observe(
                sid, f"{len(rows)} cell{'s' * (len(rows) > 1)} (rows {shown_rows})", name, "count", len(rows)
            )
        return src.encoding, cells, counted_from


def _problem(sid: str, cell_id: str, pre: str, ver: str, counted_from: str, earlier: int | None) -> str | None:
    if not sid:
        return "no sample id"
    if not cell_id:
        return "no cell id or image path"
    if earlier is not None:
        return f"same cell as row {earlier} (sample {sid!r}, cell {cell_id!r}); counted once"
    if counted_from == "verified" and not ver:
        return (
            "no verified class; the table has verified classes, so counting this cell by its pre-classification "
            "would mix the two"
        )
    if counted_from == "preclassified" and not pre:
        return "no pre-classified class"
    return None


def _cell(mapping: ClassMapping, sid: str, cell_id: str, r: int, pre: str, ver: str, counted: str) -> dict[str, Any]:
    return {
        "sample_id": sid,
        "cell_id": cell_id,
        "source_row": r,
        "preclassified": pre or None,
        "verified": ver or None,
        "preclassified_target": mapping.target(pre)[0] if pre else None,
        "verified_target": mapping.target(ver)[0] if ver else None,
        "counted_target": mapping.target(counted)[0],
    }
