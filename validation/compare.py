"""Joining a run's per-sample counts to the reference and computing per-sample errors.

Modes (the protocol's ``count_mode``; README, "Domain facts"):

* **relative**: the differential of class c is f_c = k_c / n_classified. Predicted ``X%`` =
  100 f_c; predicted ``X#`` = f_c x reference WBC, so its relative error equals that of f_c.
* **volumetric**: the WBC total is estimated from the cells found on the slide,
  WBC = n_cells / imaged_volume_ul / 1000 (10^3/uL) or n_cells x calibration_factor, and
  ``X#`` = f_c x that estimate. n_cells counts every decoded cell, unclassified ones included
  (they are white cells the model would not name).

Per sample and measurand: error % = (predicted - reference) / reference x 100. With an absolute
limit A in the protocol the sample is within limits when |predicted - reference| <= max(L/100 x
reference, A), i.e. |error %| <= the effective limit max(L, 100 A / reference)
(``wbcv.validation.protocol.effective_limit_pct`` and ``within_limit``, which the verification
plot's limit lines use too); a reference of 0 then has the absolute criterion only, and without A
it is excluded with that reason.

The sampling floor of a sample (relative mode, class measurands): the probability that counting
n_classified cells alone keeps the error within the effective limit when the true fraction is the
reference's, and the central 95 % band of the error counting alone causes (``wbcv.validation.sampling``).

Nothing is dropped silently: every sample or value left out is in the excluded table with a reason,
one row per exclusion. A sample that is both in the run and in the reference but excluded as a
whole (no classified cells, too few, a reference flag) has one row per measurand, with the
sample's reason; a value excluded on its own (a mark, no result, below min_reference, ...) has
its row. Each of these rows carries what the value would have been (reference, predicted, error %,
classified cells) where that can be computed, so a reviewer can see the excluded samples where
they would have been without comparing again. Reference rows and samples with no counterpart
(reruns not used, samples only in the run or only in the reference) have one row with the
measurand left blank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import polars as pl

from wbcv.base.errors import WbcvError
from wbcv.base.tables import SMEAR_CONCENTRATIONS
from wbcv.validation import sampling
from wbcv.validation.examiner_check import within_counting_interval
from wbcv.validation.measurands import MEASURANDS, Measurand
from wbcv.validation.protocol import MeasurandRule, Protocol, effective_limit_pct, within_limit
from wbcv.validation.reference import MARKS, ReferenceData, implausibility

COMPARISON_SCHEMA: Final[dict[str, pl.DataType]] = {
    "sample_id": pl.String(),
    "measurand": pl.String(),
    "reference": pl.Float64(),
    "predicted": pl.Float64(),
    "error_pct": pl.Float64(),
    "difference": pl.Float64(),
    "limit_pct": pl.Float64(),  # effective relative limit for this sample
    "criterion": pl.String(),  # "relative" or "absolute" (which bound was wider)
    "within_limit": pl.Boolean(),
    "n_cells": pl.Int64(),
    "n_classified": pl.Int64(),
    "n_unclassified": pl.Int64(),
    "reference_fraction": pl.Float64(),
    "counting_coverage": pl.Float64(),  # sampling floor: P(within limit | perfect classifier)
    "counting_error_low_pct": pl.Float64(),  # central 95 % band of the error counting alone causes
    "counting_error_high_pct": pl.Float64(),
    "flags": pl.String(),
    "marks": pl.String(),
    "source_row": pl.Int64(),
    # a manual reference's counting interval (Clopper-Pearson, percent) and whether the value lies in it;
    # null for a reference without one (wbcv.validation.examiner_check)
    "reference_ci_low": pl.Float64(),
    "reference_ci_high": pl.Float64(),
    "within_reference_interval": pl.Boolean(),
}
EXCLUDED_SCHEMA: Final[dict[str, pl.DataType]] = {
    "sample_id": pl.String(),
    # null: a reference row or sample with no value to compare (see the module docstring)
    "measurand": pl.String(),
    "source_row": pl.Int64(),
    "reason": pl.String(),
    # what the value would have been, where it can be computed (null otherwise)
    "reference": pl.Float64(),
    "predicted": pl.Float64(),
    "error_pct": pl.Float64(),
    "n_classified": pl.Int64(),
}


#: The reason of a reference sample that the run has no counts for.
NOT_IN_RUN: Final[str] = "in the reference file but not in the run (no slide set)"


@dataclass(frozen=True)
class Comparison:
    table: pl.DataFrame  # COMPARISON_SCHEMA, included values only
    excluded: pl.DataFrame  # EXCLUDED_SCHEMA
    n_samples_run: int
    n_samples_reference: int


def select_measurements(ref: ReferenceData, rule: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Apply the rerun rule: one measurement per sample; the others are excluded with a reason.

    Returns the chosen measurements' keys (``sample_id``, ``source_row``, file order) and the
    excluded measurements (EXCLUDED_SCHEMA). Vectorised and on the key columns only: a reference
    of a million rows costs seconds and no copy of the table.
    """
    # Time order within a sample (rows without a time first), then file order.
    t = (
        ref.table.select("sample_id", "measured_at", "source_row")
        .sort(["sample_id", "measured_at", "source_row"], nulls_last=False)
        .with_columns(n=pl.len().over("sample_id"), pos=pl.int_range(pl.len()).over("sample_id"))
    )
    multi = t.filter(pl.col("n") > 1)
    if rule == "reject":
        keep = t.filter(pl.col("n") == 1)
        rows_text = multi.group_by("sample_id").agg(rows=pl.col("source_row").cast(pl.String).str.join(", "))
        excluded = multi.join(rows_text, on="sample_id", how="left", maintain_order="left").select(
            "sample_id",
            pl.lit(None, dtype=pl.String).alias("measurand"),
            "source_row",
            pl.format("measured {} times (rows {}); rerun rule 'reject'", pl.col("n"), pl.col("rows")).alias("reason"),
        )
    else:
        chosen_pos = pl.col("n") - 1 if rule == "last" else pl.lit(0)
        keep = t.filter(pl.col("pos") == chosen_pos)
        chosen_row = pl.col("source_row").filter(pl.col("pos") == chosen_pos).first().over("sample_id")
        excluded = (
            multi.with_columns(chosen=chosen_row)
            .filter(pl.col("source_row") != pl.col("chosen"))
            .select(
                "sample_id",
                pl.lit(None, dtype=pl.String).alias("measurand"),
                "source_row",
                pl.format("rerun: superseded by row {} (rerun rule '{}')", pl.col("chosen"), pl.lit(rule)).alias(
                    "reason"
                ),
            )
        )
    return keep.select("sample_id", "source_row").sort("source_row"), _as_excluded(excluded)


def _flag_reason(flags: list[str], protocol: Protocol) -> str | None:
    if not flags or protocol.exclude_flags == "none":
        return None
    hit = flags if protocol.exclude_flags == "any" else [f for f in flags if f in protocol.exclude_flags]
    return f"reference flag(s) {', '.join(hit)}" if hit else None


def check_reference_columns(ref: ReferenceData, protocol: Protocol) -> None:
    """Refuse (WbcvError) a reference that lacks a quantity the protocol needs, naming each."""
    missing = [m for m in protocol.measurands if m not in ref.quantities and m != "WBC"]
    needs_wbc = protocol.count_mode == "relative" and any(
        MEASURANDS[m].kind == "count" and MEASURANDS[m].cell_class is not None for m in protocol.measurands
    )
    if needs_wbc and "WBC" not in ref.quantities:
        missing.append("WBC (needed to turn fractions into counts in relative mode)")
    if "WBC" in protocol.measurands and "WBC" not in ref.quantities:
        missing.append("WBC")
    if protocol.immature_granulocytes == "with_neutrophils":
        for m in protocol.measurands:
            if MEASURANDS[m].cell_class == "neutrophil":
                ig = "IG#" if MEASURANDS[m].kind == "count" else "IG%"
                if ig not in ref.quantities:
                    missing.append(f"{ig} (class_mapping.immature_granulocytes: with_neutrophils)")
    if missing:
        raise WbcvError(
            f"{ref.path}: the protocol {protocol.path.name} needs column(s) the reference does not have: "
            f"{', '.join(missing)}"
        )


def compare(counts: pl.DataFrame, ref: ReferenceData, protocol: Protocol) -> Comparison:
    """The comparison table and the excluded list for every measurand of the protocol."""
    check_reference_columns(ref, protocol)
    chosen, reruns = select_measurements(ref, protocol.rerun_rule)
    run_ids = counts["sample_id"]
    # Samples whose only rows the reference parser left out (short rows ...) are listed there with
    # the reason; they are not also "missing from the reference".
    parser_ids = ref.excluded["sample_id"] if "sample_id" in ref.excluded.columns else pl.Series([], dtype=pl.String)
    accounted = pl.concat([chosen["sample_id"], reruns["sample_id"], parser_ids.cast(pl.String)]).drop_nulls()
    not_in_reference = (
        counts.select("sample_id")
        .filter(~pl.col("sample_id").is_in(accounted.implode()))
        .unique()
        .sort("sample_id")
        .select(
            "sample_id",
            pl.lit(None, dtype=pl.String).alias("measurand"),
            pl.lit(None, dtype=pl.Int64).alias("source_row"),
            pl.lit("in the run but not in the reference file").alias("reason"),
        )
    )
    not_in_run = chosen.filter(~pl.col("sample_id").is_in(run_ids.implode())).select(
        "sample_id",
        pl.lit(None, dtype=pl.String).alias("measurand"),
        "source_row",
        pl.lit(NOT_IN_RUN).alias("reason"),
    )
    in_run = chosen.filter(pl.col("sample_id").is_in(run_ids.implode()))["source_row"]
    ref_by_id = {
        r["sample_id"]: r for r in ref.table.filter(pl.col("source_row").is_in(in_run.implode())).iter_rows(named=True)
    }
    run_by_id = {r["sample_id"]: r for r in counts.iter_rows(named=True)}
    excluded: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []

    for sid, c in run_by_id.items():
        r = ref_by_id.get(sid)
        if r is None:
            continue
        cells_reason = _cells_reason(c, protocol)
        reference_reason = _reference_reason(r, protocol)
        wbc_pred = _volumetric_wbc(c) if protocol.count_mode == "volumetric" else None
        for name, rule in protocol.measurands.items():
            row, reason = _one_value(name, rule, c, r, protocol, wbc_pred)
            # red cells and platelets are counted in the fields, not among the classified white cells
            sample_reason = reference_reason if MEASURANDS[name].smear_object else cells_reason or reference_reason
            if sample_reason or reason:
                would_be = {k: row[k] for k in ("reference", "predicted", "error_pct", "n_classified")}
                excluded.append(
                    {
                        "sample_id": sid,
                        "measurand": name,
                        "source_row": r["source_row"],
                        "reason": sample_reason or reason,
                    }
                    | would_be
                )
            else:
                rows.append({"sample_id": sid, "measurand": name, **row})
    table = pl.DataFrame(rows, schema=COMPARISON_SCHEMA) if rows else pl.DataFrame(schema=COMPARISON_SCHEMA)
    ex = pl.concat(
        [
            reruns,
            _as_excluded(not_in_reference),
            _as_excluded(not_in_run),
            pl.DataFrame(excluded, schema=EXCLUDED_SCHEMA),
        ]
    )
    return Comparison(table, ex, len(run_by_id), ref.table["sample_id"].n_unique())


def _cells_reason(c: dict[str, Any], protocol: Protocol) -> str | None:
    """Why the white-cell measurands of a sample are excluded (too few classified cells); None when not."""
    if c["n_classified"] == 0:
        return f"no classified cells on the slide ({c['n_cells']} decoded, all unclassified or skipped)"
    if c["n_classified"] < protocol.min_cells:
        return f"{c['n_classified']} classified cells, below the protocol's min_cells {protocol.min_cells}"
    return None


def _reference_reason(r: dict[str, Any], protocol: Protocol) -> str | None:
    """Why every measurand of a sample is excluded by its reference row (implausible, flagged); None when not."""
    why = implausibility(r)
    if why:
        return f"implausible reference values (row {r['source_row']}): {why}"
    return _flag_reason(r["flags"], protocol)


def _as_excluded(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (some of EXCLUDED_SCHEMA's columns) with the others null, in EXCLUDED_SCHEMA."""
    return frame.select(
        [
            pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype=dtype).alias(name)
            for name, dtype in EXCLUDED_SCHEMA.items()
        ]
    )


def _volumetric_wbc(c: dict[str, Any]) -> float | None:
    if c.get("imaged_volume_ul"):
        return c["n_cells"] / c["imaged_volume_ul"] / 1000.0
    if c.get("calibration_factor"):
        return c["n_cells"] * c["calibration_factor"]
    return None


def _reference_value(name: str, r: dict[str, Any], protocol: Protocol) -> tuple[float | None, str | None, str]:
    """(value, reason it cannot be used, marks) of one reference quantity, IG mapping applied.

    The value is None only when there is no result; a marked value is returned with its reason.
    """
    status, marks = r[f"{name} status"], r[f"{name} marks"] or ""
    if status != "ok":
        return None, f"reference {name}: {status}", marks
    bad = [m for m in marks if m in protocol.exclude_marks]
    reason = f"reference {name} marked {''.join(bad)} ({', '.join(MARKS[m] for m in bad)})" if bad else None
    value = r[name]
    m = MEASURANDS.get(name)
    if m is not None and m.cell_class == "neutrophil" and protocol.immature_granulocytes == "with_neutrophils":
        ig = "IG#" if m.kind == "count" else "IG%"
        ig_value, ig_reason, _ = _reference_value(ig, r, protocol)
        if ig_reason and not reason:
            reason = f"{ig_reason} (IG counted with neutrophils)"
        value = None if ig_value is None else value + ig_value
    return value, reason, marks


def _predicted(
    name: str, c: dict[str, Any], r: dict[str, Any], protocol: Protocol, wbc_pred: float | None
) -> tuple[float | None, float | None, str | None]:
    """(predicted value, the reference's WBC in relative count mode, why the value cannot be used)."""
    m = MEASURANDS[name]
    if m.smear_object is not None:
        return _smear_concentration(m, c)
    fraction = c[f"fraction_{m.cell_class}"] if m.cell_class else None
    if m.cell_class is not None and fraction is None:
        return None, None, None  # no classified cells: the sample's own reason says so
    if fraction is not None and m.kind == "percent":
        return 100.0 * fraction, None, None
    if fraction is not None and protocol.count_mode == "relative":
        wbc_ref, wbc_reason, _ = _reference_value("WBC", r, protocol)
        why = f"{wbc_reason}; needed to turn the fraction into a count" if wbc_reason else None
        return (None if wbc_ref is None else fraction * wbc_ref), wbc_ref, why
    if wbc_pred is None:
        what = "the volumetric WBC count" if m.cell_class is None else "the volumetric count"
        return None, None, f"no imaged_volume_ul or calibration_factor in the manifest for {what}"
    return (wbc_pred if fraction is None else fraction * wbc_pred), None, None


def _smear_concentration(m: Measurand, c: dict[str, Any]) -> tuple[float | None, None, str | None]:
    """RBC or PLT from the smear fields: the counts table's concentration column (``wbcv segment``,
    ``segment.SMEAR_CONCENTRATIONS``), null when it could not be computed."""
    column = SMEAR_CONCENTRATIONS[m.name]
    value = c.get(column)
    if value is None:
        why = (
            f"no {column} in the counts: {m.name} needs a batch made by wbcv segment from fields whose "
            "manifest gives um_per_px or field_area_um2, and smear_thickness_um"
        )
        return None, None, why
    return float(value), None, None


def _one_value(
    name: str,
    rule: MeasurandRule,
    c: dict[str, Any],
    r: dict[str, Any],
    protocol: Protocol,
    wbc_pred: float | None,
) -> tuple[dict[str, Any], str | None]:
    """The comparison row of one measurand of a sample, and why the value is excluded (None: it
    is compared). An excluded value's row holds what could be computed: reference, predicted,
    error % and the classified cells, None where they cannot be."""
    m = MEASURANDS[name]
    ref_value, reason, marks = _reference_value(name, r, protocol)
    if reason is None and ref_value is not None and ref_value < protocol.min_reference.get(name, 0.0):
        reason = f"reference {name} {ref_value:g} below the protocol's min_reference {protocol.min_reference[name]:g}"
    predicted, wbc_ref, why = _predicted(name, c, r, protocol, wbc_pred)
    reason = reason or why
    if ref_value == 0 and rule.absolute_limit is None:
        reason = reason or "reference is 0: the relative error is undefined and the protocol gives no absolute_limit"
    error_pct = None
    if predicted is not None and ref_value is not None and ref_value != 0:
        error_pct = 100.0 * (predicted - ref_value) / ref_value
    if reason is not None or predicted is None or ref_value is None:
        would_be = {"reference": ref_value, "predicted": predicted, "error_pct": error_pct}
        return would_be | {"n_classified": c["n_classified"]}, reason
    difference = predicted - ref_value
    if ref_value == 0:
        assert rule.absolute_limit is not None  # without one the value was excluded above
        limit_pct, criterion = None, "absolute"
        within = abs(difference) <= rule.absolute_limit
    else:
        assert error_pct is not None
        limit_pct = float(effective_limit_pct(rule, ref_value))
        criterion = "absolute" if limit_pct > rule.allowable_error_pct else "relative"
        within = bool(within_limit(rule, error_pct, ref_value))
    ref_fraction = ref_value / 100.0 if m.kind == "percent" else None
    if m.kind == "count" and wbc_ref is not None:
        ref_fraction = ref_value / wbc_ref if wbc_ref > 0 else None
    floor = band_low = band_high = None
    if ref_fraction is not None and protocol.count_mode == "relative" and 0 < ref_fraction <= 1:
        band_low, band_high = sampling.counting_error_interval(int(c["n_classified"]), ref_fraction)
        if limit_pct is not None:
            floor = sampling.counting_coverage(int(c["n_classified"]), ref_fraction, limit_pct)
    return {
        "reference": ref_value,
        "predicted": predicted,
        "error_pct": error_pct,
        "difference": difference,
        "limit_pct": limit_pct,
        "criterion": criterion,
        "within_limit": within,
        "n_cells": c["n_cells"],
        "n_classified": c["n_classified"],
        "n_unclassified": c["n_unclassified"],
        "reference_fraction": ref_fraction,
        "counting_coverage": floor,
        "counting_error_low_pct": band_low,
        "counting_error_high_pct": band_high,
        "flags": ", ".join(r["flags"]) or None,
        "marks": marks or None,
        "source_row": r["source_row"],
        **_counting_interval(name, predicted, r),
    }, None


def _counting_interval(name: str, predicted: float, r: dict[str, Any]) -> dict[str, Any]:
    """The reference's counting interval of this measurand (a manual differential's) and whether
    the predicted value lies in it; nulls when the reference has none."""
    low, high = r.get(f"{name} ci_low"), r.get(f"{name} ci_high")
    return {
        "reference_ci_low": low,
        "reference_ci_high": high,
        "within_reference_interval": within_counting_interval(predicted, low, high),
    }
