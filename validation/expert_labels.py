"""A run's cells against their expert labels: the one confusion matrix of the report and the dashboard.

The matrix follows ``wbcv.validation.cell_metrics``: rows are the expert's classes
(``CELL_CLASSES``), columns the predicted classes and then ``unclassified``. Cells labelled outside
the five classes (immature granulocytes, debris ...) have no row; they are counted by label in
``outside_classes`` instead of being dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.validation import cell_metrics


@dataclass(frozen=True)
class LabelledCells:
    confusion: np.ndarray | None  # None when no label is one of the five classes
    outside_classes: dict[str, int]  # expert label outside CELL_CLASSES -> cells, by label

    @property
    def n_outside(self) -> int:
        return sum(self.outside_classes.values())


def labelled_cells(predictions: pl.DataFrame) -> LabelledCells | None:
    """From a run's predictions (columns ``expert_label``, ``predicted_class``); None when no cell
    carries an expert label."""
    labelled = predictions.filter(pl.col("expert_label").is_not_null())
    if labelled.is_empty():
        return None
    known = labelled.filter(pl.col("expert_label").is_in(CELL_CLASSES))
    outside = labelled.filter(~pl.col("expert_label").is_in(CELL_CLASSES)).group_by("expert_label").len()
    confusion = None
    if known.height:
        index = {c: i for i, c in enumerate(CELL_CLASSES)}
        y_true = np.array([index[c] for c in known["expert_label"]], dtype=np.int64)
        # every outcome that is not a class is the unclassified column
        y_pred = np.array(
            [index.get(str(c), cell_metrics.UNCLASSIFIED) for c in known["predicted_class"]], dtype=np.int64
        )
        confusion = cell_metrics.confusion_matrix(y_true, y_pred, len(CELL_CLASSES))
    return LabelledCells(
        confusion=confusion,
        outside_classes={str(k): int(v) for k, v in outside.sort("expert_label").iter_rows()},
    )
