"""Samples per case-mix stratum achieved against the plan (``plan.strata`` of the protocol).

Where the stratum comes from: the batch manifest's optional ``stratum`` field
(``wbcv.inference.slideset``), carried by the inference run into counts.parquet (the ``stratum``
column of ``wbcv.base.tables.SAMPLE_FIELDS``). The manifest, not the reference: the manifest is the
file the laboratory writes when it chooses the samples, while the reference is the analyzer's own
export, which should reach wbcv unedited. A results run (`wbcv import-results`) has no manifest: its
comparisons report the strata as not recorded, as do inference runs made before the column existed.

Achieved, for a stratum: the fewest of its samples compared on any one measurand (rows of
comparison.parquet, so after every exclusion), because the plan's sample size is per measurand after
exclusions. A stratum is met when achieved ≥ planned. Samples with no stratum are one line of their own
(planned: none); a stratum the plan does not name is listed with no planned number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import polars as pl

NO_STRATUM: Final[str] = "(no stratum)"


@dataclass(frozen=True)
class StratumAchieved:
    name: str
    planned: int | None  # None: the plan names no such stratum
    achieved: int  # fewest samples of the stratum compared on any one measurand
    samples: int  # samples of the stratum compared on at least one measurand

    @property
    def met(self) -> bool | None:
        """achieved ≥ planned; None when nothing was planned for it."""
        return None if self.planned is None else self.achieved >= self.planned


def strata_achieved(
    counts: pl.DataFrame, comparison: pl.DataFrame, planned: dict[str, int]
) -> list[StratumAchieved] | None:
    """Each stratum's samples compared against the plan (module docstring); None when the counts record
    no stratum (no ``stratum`` column, or every value null). Order: the plan's strata, then the others
    by name, then the samples without a stratum."""
    if "stratum" not in counts.columns or counts["stratum"].null_count() == counts.height:
        return None
    of_sample = counts.select("sample_id", pl.col("stratum").fill_null(NO_STRATUM)).unique("sample_id")
    rows = comparison.select("sample_id", "measurand").join(of_sample, on="sample_id", how="left")
    rows = rows.with_columns(pl.col("stratum").fill_null(NO_STRATUM))
    measurands = rows["measurand"].unique().to_list()
    present = set(of_sample["stratum"].to_list())
    others = sorted(present - set(planned) - {NO_STRATUM})
    names = [*planned, *others, *([NO_STRATUM] if NO_STRATUM in present else [])]
    out = []
    for name in names:
        mine = rows.filter(pl.col("stratum") == name)
        per_measurand = [mine.filter(pl.col("measurand") == m)["sample_id"].n_unique() for m in measurands]
        out.append(
            StratumAchieved(
                name=name,
                planned=planned.get(name),
                achieved=min(per_measurand, default=0),
                samples=mine["sample_id"].n_unique(),
            )
        )
    return out
