"""Outlier screening of a method comparison (CLSI EP09c): generalized ESD on each measurand's differences.

For one measurand's compared samples: the differences (absolute: test − reference; relative: the
error %, 100·(test − reference)/reference) are tested with Rosner's generalized ESD
(``wbcv.validation.outliers``) for at most ⌊max_share · n⌋ outliers (at least 1). Samples whose
relative difference is undefined (reference 0) are not tested and are listed with that reason.
Outliers are listed, never dropped here: the verdict (``wbcv.validation.verdict``) decides, from
the protocol's ``outliers.verdict``, whether the acceptance is judged with or without them, and
states both when it is without.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from wbcv.base.records import OutlierRule
from wbcv.validation.outliers import MIN_VALUES, generalized_esd, max_outliers_for_share

__all__ = ["ListedOutlier", "OutlierScreen", "screen_outliers", "without_outliers"]


@dataclass(frozen=True)
class ListedOutlier:
    sample_id: str
    reference: float
    predicted: float
    difference: float  # on the tested scale (absolute or %)
    step: int  # the ESD step that removed it
    r: float  # R_i
    critical: float  # λ_i


@dataclass(frozen=True)
class OutlierScreen:
    method: str
    differences: str  # absolute | relative
    alpha: float
    max_share: float
    n_tested: int
    max_outliers: int | None  # None: not tested
    outliers: tuple[ListedOutlier, ...]
    not_tested: tuple[tuple[str, str], ...]  # (sample_id, reason) of samples left out of the test
    not_computed: str | None  # why the test was not run (too few samples), else None

    @property
    def outlier_ids(self) -> frozenset[str]:
        return frozenset(o.sample_id for o in self.outliers)


def screen_outliers(rows: pl.DataFrame, rule: OutlierRule) -> OutlierScreen:
    """Generalized ESD on one measurand's rows of the comparison table (sample_id, reference,
    predicted, error_pct); the absolute difference is predicted − reference."""
    column = "_tested"
    rows = rows.with_columns(
        (pl.col("predicted") - pl.col("reference") if rule.differences == "absolute" else pl.col("error_pct"))
        .cast(pl.Float64)
        .alias(column)
    )
    defined = rows.filter(pl.col(column).is_not_null() & pl.col(column).is_finite())
    not_tested = tuple(
        (str(s), f"relative difference undefined (reference {r:g})")
        for s, r in rows.filter(~pl.col("sample_id").is_in(defined["sample_id"].implode()))
        .select("sample_id", "reference")
        .iter_rows()
    )
    common: dict[str, Any] = {
        "method": rule.method,
        "differences": rule.differences,
        "alpha": rule.alpha,
        "max_share": rule.max_share,
        "n_tested": defined.height,
        "not_tested": not_tested,
    }
    if defined.height < MIN_VALUES:
        why = f"generalized ESD needs at least {MIN_VALUES} samples, {defined.height} had a defined difference"
        return OutlierScreen(**common, max_outliers=None, outliers=(), not_computed=why)
    r = max_outliers_for_share(defined.height, rule.max_share)
    values = defined[column].to_numpy().astype(float)
    result = generalized_esd(values, min(r, defined.height - 3), rule.alpha)
    ids, ref, pred = (defined[c].to_numpy() for c in ("sample_id", "reference", "predicted"))
    listed = tuple(
        ListedOutlier(str(ids[s.index]), float(ref[s.index]), float(pred[s.index]), s.value, s.i, s.r, s.critical)
        for s in result.outliers
    )
    return OutlierScreen(**common, max_outliers=result.max_outliers, outliers=listed, not_computed=None)


def without_outliers(rows: pl.DataFrame, screen: OutlierScreen) -> pl.DataFrame:
    """The rows that are not listed outliers."""
    return rows.filter(~pl.col("sample_id").is_in(sorted(screen.outlier_ids)))
