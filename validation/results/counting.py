"""Observations of an export -> the per-sample counts table of an inference run.

Every reader produces observations (``wbcv.base.tables.OBSERVATION_SCHEMA`` without ``target``):
per sample, an export class name with a count, a percentage, or the total number of cells
counted. This module maps the names (``wbcv.validation.results.mapping``) and makes, per sample:

* **counts** (the sample has count observations): k_c = the sum of the counts of the names mapped
  to class c; n_unclassified = those mapped to ``unclassified``; cells of names mapped to
  ``excluded`` or not mapped go to n_skipped and ``import_excluded.parquet`` with the reason. A
  total, when given, must equal the sum of all counts or of the white cells (classes and
  unclassified), else the sample is excluded with both numbers.
* **percentages** (no count observations): each percentage p of the total T counted becomes
  k = round(p x T / 100) cells (T from the file, else ``total_cells`` of the command line); without
  T the sample is excluded ("percentages without the number of cells counted"). The percentages of
  all classes (excluded and unmapped ones included) must sum to 100 +- PERCENT_SUM_TOLERANCE
  (``wbcv.validation.reference``), else the sample is excluded.

Then, as an inference run's counts (``inference/runner.py``): n_files = every cell the export
reports for the sample, n_skipped = cells of excluded or unmapped classes and cells the reader
excluded (a per-cell row without a verified class, a duplicate), n_cells = n_files - n_skipped,
n_classified = sum of k_c, fraction_c = k_c / n_classified (null without classified cells),
unclassified_fraction = n_unclassified / n_cells, model_id = the analyzer's label.

A sample excluded as a whole has no counts row; it is in ``import_excluded.parquet`` with its reason
(``export_class`` null), and the comparison says so (``wbcv.validation.study``). A class written
twice for one sample (two rows, two OBX with the same code) excludes the sample: which one is
right cannot be known.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import polars as pl

from wbcv.base.tables import COUNT_COLUMNS, IMPORT_EXCLUDED_SCHEMA, OBSERVATION_SCHEMA, SAMPLE_FIELDS
from wbcv.base.taxonomy import CELL_CLASSES, UNCLASSIFIED
from wbcv.validation.reference import PERCENT_SUM_TOLERANCE
from wbcv.validation.results.mapping import EXCLUDED, TOTAL, UNMAPPED, ClassMapping

#: A count must be a whole number to within this (exports write 12 or 12.0).
WHOLE_TOLERANCE: Final[float] = 1e-9

COUNT_SCHEMA: Final[dict[str, pl.DataType]] = {
    "sample_id": pl.String(),
    "slide_dir": pl.String(),
    **{n: pl.Int64() for n in ("n_files", "n_skipped", "n_cells", "n_classified", "n_unclassified")},
    **{f"k_{c}": pl.Int64() for c in CELL_CLASSES},
    **{f"fraction_{c}": pl.Float64() for c in CELL_CLASSES},
    "unclassified_fraction": pl.Float64(),
    **SAMPLE_FIELDS,
    "model_id": pl.String(),
    "domain_score": pl.Float64(),  # null: the operating-domain check is of wbcv's model, not an analyzer's export
}


@dataclass
class Collected:
    """What a reader hands over: observations and the rows it excluded, each with its reason."""

    observations: list[dict[str, Any]] = field(default_factory=list)  # OBSERVATION_SCHEMA minus target
    excluded: list[dict[str, Any]] = field(default_factory=list)  # IMPORT_EXCLUDED_SCHEMA
    samples: list[str] = field(default_factory=list)  # sample ids in file order (first appearance)

    def observe(self, sample_id: str, location: str, export_class: str, kind: str, value: float) -> None:
        self.sample(sample_id)
        self.observations.append(
            {"sample_id": sample_id, "location": location, "export_class": export_class, "kind": kind, "value": value}
        )

    def exclude(self, sample_id: str | None, location: str, export_class: str | None, n: int | None, why: str) -> None:
        self.excluded.append(
            {"sample_id": sample_id, "location": location, "export_class": export_class, "n_cells": n, "reason": why}
        )

    def sample(self, sample_id: str) -> None:
        if sample_id not in self._seen:
            self._seen.add(sample_id)
            self.samples.append(sample_id)

    _seen: set[str] = field(default_factory=set, init=False, repr=False)


class RowExclusions:
    """Where the reference reader's row loop (``wbcv.validation.reference.fitted_rows``) puts a row
    that does not fit the header: into ``Collected`` with its reason."""

    def __init__(self, collected: Collected) -> None:
        self.collected = collected

    def add(self, row: dict[str, Any]) -> None:
        self.collected.exclude(row["sample_id"], f"row {row['source_row']}", None, None, row["reason"])


@dataclass(frozen=True)
class Counted:
    counts: pl.DataFrame  # COUNT_COLUMNS
    observations: pl.DataFrame  # OBSERVATION_SCHEMA
    excluded: pl.DataFrame  # IMPORT_EXCLUDED_SCHEMA
    counted_from: dict[str, str]  # sample_id -> "counts" or "percentages"
    unmapped: dict[str, int]  # export class name -> cells


def count_samples(collected: Collected, mapping: ClassMapping, model_id: str, total_cells: int | None) -> Counted:
    """The counts table of the samples in ``collected`` (see the module docstring)."""
    by_sample: dict[str, list[dict[str, Any]]] = defaultdict(list)
    observations: list[dict[str, Any]] = []
    for o in collected.observations:
        target = TOTAL if o["kind"] == TOTAL else mapping.target(o["export_class"])[0]
        row = {**o, "target": target}
        observations.append(row)
        by_sample[o["sample_id"]].append(row)
    excluded = list(collected.excluded)
    rows: list[dict[str, Any]] = []
    counted_from: dict[str, str] = {}
    unmapped: dict[str, int] = defaultdict(int)
    left_out_cells: dict[str, int] = defaultdict(int)  # cells the reader excluded (a per-cell row without a class)
    for e in collected.excluded:
        if e["sample_id"] is not None and e["n_cells"]:
            left_out_cells[e["sample_id"]] += e["n_cells"]
    for sid in collected.samples:
        obs = by_sample.get(sid, [])
        sample = _count_one(sid, obs, mapping, total_cells)
        excluded += sample.excluded
        if sample.row is None:
            continue
        extra = left_out_cells.get(sid, 0)
        sample.row["n_files"] += extra
        sample.row["n_skipped"] += extra
        rows.append({**sample.row, "model_id": model_id})
        counted_from[sid] = sample.counted_from
        for name, n in sample.unmapped.items():
            unmapped[name] += n
    counts = pl.DataFrame(rows, schema=COUNT_SCHEMA) if rows else pl.DataFrame(schema=COUNT_SCHEMA)
    return Counted(
        counts=counts.select(COUNT_COLUMNS),
        observations=pl.DataFrame(observations, schema=OBSERVATION_SCHEMA),
        excluded=pl.DataFrame(excluded, schema=IMPORT_EXCLUDED_SCHEMA),
        counted_from=counted_from,
        unmapped=dict(sorted(unmapped.items())),
    )


@dataclass
class _Sample:
    row: dict[str, Any] | None
    excluded: list[dict[str, Any]]
    counted_from: str = ""
    unmapped: dict[str, int] = field(default_factory=dict)


def _whole_sample(sid: str, obs: list[dict[str, Any]], reason: str) -> _Sample:
    where = _locations(o["location"] for o in obs)
    return _Sample(
        None, [{"sample_id": sid, "location": where, "export_class": None, "n_cells": None, "reason": reason}]
    )


def _locations(locations: Iterable[str], limit: int = 3) -> str:
    seen = list(dict.fromkeys(locations))
    return "; ".join(seen[:limit]) + (f"; … ({len(seen)} places)" if len(seen) > limit else "")


def _count_one(sid: str, obs: list[dict[str, Any]], mapping: ClassMapping, total_cells: int | None) -> _Sample:
    totals = {o["value"] for o in obs if o["target"] == TOTAL}
    if len(totals) > 1:
        return _whole_sample(sid, obs, f"two different totals of cells counted: {', '.join(map(_num, sorted(totals)))}")
    total = next(iter(totals)) if totals else None
    parts = [o for o in obs if o["target"] != TOTAL]
    counts = [o for o in parts if o["kind"] == "count"]
    kind = "count" if counts else "percent"
    used = counts if counts else parts
    names = defaultdict(list)
    for o in used:
        names[o["export_class"]].append(o["location"])
    repeated = {n: locs for n, locs in names.items() if len(locs) > 1}
    if repeated:
        name, locs = next(iter(repeated.items()))
        return _whole_sample(sid, obs, f"class {name!r} reported {len(locs)} times ({_locations(locs)})")
    notes = [
        _exclusion(sid, o, None, "percentage not used: the sample's counts are used")
        for o in parts
        if o["kind"] == "percent" and counts
    ]
    if kind == "count":
        cells, problem = _from_counts(used, total)
    else:
        cells, problem = _from_percentages(used, total if total is not None else total_cells)
    if problem:
        return _whole_sample(sid, obs, problem)
    sample = _tally(sid, used, cells, mapping)
    sample.excluded = notes + sample.excluded
    sample.counted_from = "counts" if kind == "count" else "percentages"
    return sample


def _num(x: float) -> str:
    return f"{x:g}"


def _from_counts(used: list[dict[str, Any]], total: float | None) -> tuple[list[int], str | None]:
    """Cells per observation from counts; a problem when a count is not a whole number or the
    total contradicts them."""
    for o in used:
        if abs(o["value"] - round(o["value"])) > WHOLE_TOLERANCE:
            return (
                [],
                f"count {_num(o['value'])} of class {o['export_class']!r} ({o['location']}) is not a whole number",
            )
    cells = [round(o["value"]) for o in used]
    if total is not None:
        white = sum(n for n, o in zip(cells, used, strict=True) if o["target"] not in (EXCLUDED, UNMAPPED))
        if total not in (sum(cells), white):
            return cells, (
                f"the counts sum to {sum(cells)} ({white} white cells) but the total of cells counted is {_num(total)}"
            )
    return cells, None


def _from_percentages(used: list[dict[str, Any]], total: float | None) -> tuple[list[int], str | None]:
    if not used:
        return [], "no class counts or percentages"
    if total is None:
        return [], (
            "percentages without the number of cells counted: give it in the file (a total) or with --total-cells"
        )
    if total <= 0 or abs(total - round(total)) > WHOLE_TOLERANCE:
        return [], f"the total of cells counted is {_num(total)}; expected a whole number above 0"
    s = sum(o["value"] for o in used)
    if abs(s - 100) > PERCENT_SUM_TOLERANCE:
        return [], f"the percentages sum to {_num(s)}, expected 100 +- {PERCENT_SUM_TOLERANCE:g}"
    return [round(o["value"] * total / 100) for o in used], None


def _exclusion(sid: str, o: dict[str, Any], n: int | None, reason: str) -> dict[str, Any]:
    return {
        "sample_id": sid,
        "location": o["location"],
        "export_class": o["export_class"],
        "n_cells": n,
        "reason": reason,
    }


def _tally(sid: str, used: list[dict[str, Any]], cells: list[int], mapping: ClassMapping) -> _Sample:
    k = dict.fromkeys(CELL_CLASSES, 0)
    unclassified = skipped = 0
    excluded: list[dict[str, Any]] = []
    unmapped: dict[str, int] = defaultdict(int)
    for o, n in zip(used, cells, strict=True):
        target, reason = mapping.target(o["export_class"])
        if target in k:
            k[target] += n
        elif target == UNCLASSIFIED:
            unclassified += n
        elif n:  # an excluded class with no cells loses nothing and is not listed
            skipped += n
            excluded.append(_exclusion(sid, o, n, reason or target))
            if target == UNMAPPED:
                unmapped[o["export_class"]] += n
    classified = sum(k.values())
    n_cells = classified + unclassified
    row: dict[str, Any] = {
        "sample_id": sid,
        "slide_dir": None,
        "n_files": n_cells + skipped,
        "n_skipped": skipped,
        "n_cells": n_cells,
        "n_classified": classified,
        "n_unclassified": unclassified,
        **{f"k_{c}": k[c] for c in CELL_CLASSES},
        **{f"fraction_{c}": (k[c] / classified if classified else None) for c in CELL_CLASSES},
        "unclassified_fraction": unclassified / n_cells if n_cells else None,
        **dict.fromkeys(SAMPLE_FIELDS),
    }
    return _Sample(row, excluded, unmapped=dict(unmapped))
