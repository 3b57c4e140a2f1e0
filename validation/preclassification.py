"""Pre-classification against verification: how often the technologist changed the analyzer's class.

From a per-cell export (``cells.parquet`` of a results run: every cell with the analyzer's
pre-classified class and the technologist's verified class, both mapped to wbcv's categories by
``wbcv.validation.results.mapping``), over the cells that have both:

* the agreement matrix, rows the verified category (the truth here), columns the pre-classified
  one; categories: the five classes, then ``unclassified``, ``excluded`` and ``unmapped`` where
  they occur;
* overall agreement (share of cells whose category the technologist kept) and the
  **reclassification rate**: share of cells whose exported class name the technologist changed
  (compared as written, case-insensitively); a change between names of one category (``Band`` to
  ``Segmented neutrophil``) is a reclassification but keeps the category;
* per class: sensitivity (verified c, pre-classified c), PPV (pre-classified c, verified c) and
  specificity (``wbcv.validation.cell_metrics``), each with its Wilson interval at the protocol's
  confidence;
* Cohen's kappa, unweighted, linear and quadratic (``cell_metrics.weighted_kappa``), each with its
  Wald interval from the large-sample standard error of Fleiss, Cohen & Everitt 1969
  (``cell_metrics.kappa_interval``);
* per pre-classified category, what the technologist reclassified its cells to;
* per sample, the pre-classified minus the verified differential, in percentage points of the
  classified cells (``k_c / n_classified`` of each), and the cells changed.

ICSH 2019 (Kratz et al., Int J Lab Hematol 41:437) asks for exactly these figures; published
values: 82-89 % pre-classification agreement (DM96), weighted kappa 0.96 (DI-60).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import polars as pl

from wbcv.base.taxonomy import CELL_CLASSES, UNCLASSIFIED
from wbcv.validation.cell_metrics import (
    kappa_interval,
    ppv,
    sensitivity,
    specificity,
    weighted_kappa,
    wilson_interval,
)

CATEGORY_ORDER: Final[tuple[str, ...]] = (*CELL_CLASSES, UNCLASSIFIED, "excluded", "unmapped")


def _proportion(k: int, n: int, confidence: float, estimate: float | None = None) -> dict[str, Any]:
    """k of n with its Wilson interval; estimate and interval null when n = 0 (nothing to divide by)."""
    low, high = wilson_interval(k, n, confidence)
    value = (k / n if estimate is None else estimate) if n else None
    return {"k": k, "n": n, "estimate": value, "ci": [low, high] if n else None}


KAPPAS: Final[tuple[tuple[str, str], ...]] = (
    ("kappa", "none"),
    ("kappa_linear", "linear"),
    ("kappa_quadratic", "quadratic"),
)


def _finite(interval: tuple[float, float]) -> list[float] | None:
    """An interval as JSON: null when undefined (NaN: kappa undefined, all cells in one category)."""
    return list(interval) if all(np.isfinite(interval)) else None


def agreement_matrix(pairs: pl.DataFrame) -> tuple[list[str], np.ndarray]:
    """(categories, matrix): rows verified, columns pre-classified, over CATEGORY_ORDER's
    categories that occur on either side."""
    seen = set(pairs["verified_target"]) | set(pairs["preclassified_target"])
    categories = [c for c in CATEGORY_ORDER if c in seen]
    index = {c: i for i, c in enumerate(categories)}
    m = np.zeros((len(categories), len(categories)), dtype=np.int64)
    rows = pairs["verified_target"].replace_strict(index, return_dtype=pl.Int64).to_numpy()
    cols = pairs["preclassified_target"].replace_strict(index, return_dtype=pl.Int64).to_numpy()
    np.add.at(m, (rows, cols), 1)
    return categories, m


def _per_class(categories: list[str], m: np.ndarray, confidence: float) -> list[dict[str, Any]]:
    # cell_metrics' matrices are K x (K+1) (a last column of abstentions): here no cell abstains
    padded = np.hstack([m, np.zeros((m.shape[0], 1), dtype=m.dtype)])
    sens, pos, spec = sensitivity(padded), ppv(padded), specificity(padded)
    n, verified, predicted = int(m.sum()), m.sum(axis=1), m.sum(axis=0)
    out = []
    for i, c in enumerate(categories):
        tp = int(m[i, i])
        negatives = n - int(verified[i])
        tn = negatives - (int(predicted[i]) - tp)
        out.append(
            {
                "category": c,
                "verified": int(verified[i]),
                "preclassified": int(predicted[i]),
                "sensitivity": _proportion(tp, int(verified[i]), confidence, float(sens[i])),
                "ppv": _proportion(tp, int(predicted[i]), confidence, float(pos[i])),
                "specificity": _proportion(tn, negatives, confidence, float(spec[i])),
            }
        )
    return out


def _reclassified_to(categories: list[str], m: np.ndarray) -> dict[str, dict[str, int]]:
    """Per pre-classified category, the verified categories its cells went to (changes only)."""
    return {
        pre: {ver: int(m[i, j]) for i, ver in enumerate(categories) if i != j and m[i, j]}
        for j, pre in enumerate(categories)
        if m[:, j].sum() - m[j, j]
    }


def _differentials(pairs: pl.DataFrame) -> list[dict[str, Any]]:
    """Per sample: pre-classified minus verified differential (percentage points), cells changed."""
    out = []
    for (sid,), g in pairs.group_by("sample_id", maintain_order=True):
        row: dict[str, Any] = {"sample_id": sid, "n_cells": g.height}
        row["n_changed"] = int(g["changed"].sum())
        pre, ver = g["preclassified_target"], g["verified_target"]
        n_pre, n_ver = int(pre.is_in(CELL_CLASSES).sum()), int(ver.is_in(CELL_CLASSES).sum())
        for c in CELL_CLASSES:
            if n_pre and n_ver:
                row[c] = 100.0 * (int((pre == c).sum()) / n_pre - int((ver == c).sum()) / n_ver)
            else:
                row[c] = None
        out.append(row)
    return out


def preclassification_statistics(cells: pl.DataFrame, confidence: float) -> dict[str, Any]:
    """Every figure of the module docstring, as plain JSON values (statistics.json)."""
    pairs = cells.filter(pl.col("preclassified").is_not_null() & pl.col("verified").is_not_null())
    pairs = pairs.with_columns(
        changed=pl.col("preclassified").str.to_lowercase().str.strip_chars()
        != pl.col("verified").str.to_lowercase().str.strip_chars()
    )
    n = pairs.height
    if n == 0:
        return {"not_computed": "no cell has both a pre-classified and a verified class", "n_cells": cells.height}
    categories, m = agreement_matrix(pairs)
    agreeing = int(np.trace(m))
    return {
        "n_cells": n,
        "n_cells_without_both": cells.height - n,
        "confidence": confidence,
        "categories": categories,
        "matrix": m.tolist(),  # rows verified, columns pre-classified
        "agreement": _proportion(agreeing, n, confidence),
        "reclassification_rate": _proportion(int(pairs["changed"].sum()), n, confidence),
        "kappa": weighted_kappa(m, "none"),
        "kappa_linear": weighted_kappa(m, "linear"),
        "kappa_quadratic": weighted_kappa(m, "quadratic"),
        # Wald intervals with the large-sample SE of Fleiss, Cohen & Everitt 1969 (cell_metrics.kappa_interval)
        **{f"{key}_ci": _finite(kappa_interval(m, w, confidence)) for key, w in KAPPAS},
        "per_class": _per_class(categories, m, confidence),
        "reclassified_to": _reclassified_to(categories, m),
        "per_sample": _differentials(pairs),
    }
