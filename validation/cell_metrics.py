"""Cell-level classification metrics against expert labels, with ``unclassified`` as an outcome.

Conventions (shared by every function here):

* ``y_true`` holds class indices 0..K-1 (``CELL_CLASSES`` order); ``y_pred`` holds class indices or
  ``UNCLASSIFIED`` (-1). An unclassified cell is never correct: it counts as a miss of its true
  class (lowering sensitivity) and as a prediction of no class (not lowering any PPV).
* The confusion matrix has K rows (true classes) and K+1 columns (predicted classes, then
  unclassified).

Definitions follow scikit-learn's ``sklearn.metrics`` where one exists; the differences are the
handling of the abstention column, stated per function.
"""

from __future__ import annotations

from typing import Final

import numpy as np

UNCLASSIFIED: Final[int] = -1


def _check(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got {t.shape} and {p.shape}")
    if t.size and (t.min() < 0 or t.max() >= n_classes):
        raise ValueError(f"y_true must hold class indices 0..{n_classes - 1}")
    if p.size and (p.min() < UNCLASSIFIED or p.max() >= n_classes):
        raise ValueError(f"y_pred must hold class indices 0..{n_classes - 1} or {UNCLASSIFIED} (unclassified)")
    return t, p


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """C[i, j] = cells of true class i predicted as j; column K counts the unclassified ones."""
    t, p = _check(y_true, y_pred, n_classes)
    col = np.where(p == UNCLASSIFIED, n_classes, p)
    cm = np.zeros((n_classes, n_classes + 1), dtype=np.int64)
    np.add.at(cm, (t, col), 1)
    return cm


def sensitivity(cm: np.ndarray) -> np.ndarray:
    """Recall per class, TP_i / n_i (unclassified cells of class i count as misses); NaN if n_i = 0."""
    n = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.diag(cm[:, :-1]) / n, np.nan)


def ppv(cm: np.ndarray) -> np.ndarray:
    """Positive predictive value per class, TP_i / (cells predicted as i); NaN if none were."""
    predicted = cm[:, :-1].sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(predicted > 0, np.diag(cm[:, :-1]) / predicted, np.nan)


def f1(cm: np.ndarray) -> np.ndarray:
    """Harmonic mean of PPV and sensitivity per class; 0 where both are 0, NaN where undefined."""
    s, p = sensitivity(cm), ppv(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 2 * s * p / (s + p)
    return np.where((s == 0) & (p == 0), 0.0, out)


def accuracy(cm: np.ndarray) -> float:
    """Correct / all cells, unclassified counted as errors."""
    return float(np.trace(cm[:, :-1]) / cm.sum())


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean sensitivity over the classes present (sklearn's balanced_accuracy_score, with
    unclassified cells as misses)."""
    s = sensitivity(cm)
    return float(s[~np.isnan(s)].mean())


def selective_accuracy(cm: np.ndarray) -> float:
    """Correct / committed cells: accuracy on the cells the model did classify; NaN if none."""
    committed = cm[:, :-1].sum()
    return float(np.trace(cm[:, :-1]) / committed) if committed else float("nan")


def unclassified_rate(cm: np.ndarray) -> float:
    return float(cm[:, -1].sum() / cm.sum())


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 over the classes present in y_true."""
    scores = f1(cm)[cm.sum(axis=1) > 0]
    scores = scores[~np.isnan(scores)]
    return float(scores.mean()) if scores.size else float("nan")


def cohen_kappa(cm: np.ndarray) -> float:
    """Cohen's kappa over K+1 categories (the classes and unclassified), kappa = (p_o - p_e) / (1 - p_e),
    p_o = observed agreement, p_e = sum_k (row_k / n)(col_k / n) (Cohen 1960; sklearn's
    cohen_kappa_score with unweighted agreement). The expert never says "unclassified", so every
    abstention is a disagreement."""
    n = cm.sum()
    square = np.zeros((cm.shape[1], cm.shape[1]))
    square[: cm.shape[0], :] = cm
    p_o = np.trace(square) / n
    p_e = float((square.sum(axis=1) / n) @ (square.sum(axis=0) / n))
    return float((p_o - p_e) / (1 - p_e)) if p_e < 1 else float("nan")


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE (Guo et al., ICML 2017): sum over equal-width confidence bins of
    (n_b / n) * |accuracy_b - mean confidence_b|, over the committed cells passed in."""
    conf, ok = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    if conf.size == 0:
        return float("nan")
    bins = np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(ok[m].mean() - conf[m].mean())
    return float(ece)
