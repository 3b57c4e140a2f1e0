"""Cell-level classification metrics against expert labels, with ``unclassified`` as an outcome.

Conventions (shared by every function here):

* ``y_true`` holds class indices 0..K-1 (``CELL_CLASSES`` order); ``y_pred`` holds class indices or
  ``UNCLASSIFIED`` (-1). An unclassified cell is never correct: it counts as a miss of its true
  class (lowering sensitivity) and as a prediction of no class (not lowering any PPV).
* The confusion matrix has K rows (true classes) and K+1 columns (predicted classes, then
  unclassified).

Every metric that scikit-learn has is scikit-learn's definition, with ``unclassified`` mapped as a
prediction of no class: per-class figures are ``sklearn.metrics`` with ``labels=range(K)`` (an
unclassified cell is then a false negative of its true class and a false positive of none), and
a per-class ratio whose denominator is zero is 0, scikit-learn's ``zero_division=0`` rule (never
NaN, and never silently left out of an average: a class with cells that is never predicted has
PPV 0 and F1 0 and pulls macro-F1 down). The averages use scikit-learn's label sets: balanced
accuracy the classes in the expert labels, macro-F1 the classes in the labels or the predictions.
tests/test_cell_metrics.py checks each metric against ``sklearn.metrics`` on random label vectors
with never-predicted and never-present classes and unclassified cells.
References: scikit-learn user guide, "Metrics and scoring" (sklearn.metrics, version 1.9);
Sokolova M, Lapalme G, Inf Process Manag 45 (2009) 427-437 (macro-averaged measures).
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


def _ratio_or_zero(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator element-wise, 0 where the denominator is 0 (``zero_division=0``)."""
    out = np.zeros(np.shape(numerator), dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=np.asarray(denominator) > 0)
    return out


def _true_positives(cm: np.ndarray) -> np.ndarray:
    return np.diag(cm[:, :-1])


def _true_counts(cm: np.ndarray) -> np.ndarray:
    """n_i: cells whose expert label is class i (TP_i + FN_i; FN_i includes its unclassified cells)."""
    return cm.sum(axis=1)


def _predicted_counts(cm: np.ndarray) -> np.ndarray:
    """P_i: cells the model called class i (TP_i + FP_i; unclassified cells are called nothing)."""
    return cm[:, :-1].sum(axis=0)


def sensitivity(cm: np.ndarray) -> np.ndarray:
    """Recall per class, TP_i / n_i, unclassified cells of class i counting as misses; 0 where
    n_i = 0. = sklearn ``recall_score(y_true, y_pred, labels=range(K), average=None, zero_division=0)``."""
    return _ratio_or_zero(_true_positives(cm), _true_counts(cm))


def ppv(cm: np.ndarray) -> np.ndarray:
    """Positive predictive value (precision) per class, TP_i / P_i; 0 where the class was never
    predicted (P_i = 0). = sklearn ``precision_score(..., labels=range(K), average=None, zero_division=0)``."""
    return _ratio_or_zero(_true_positives(cm), _predicted_counts(cm))


def f1(cm: np.ndarray) -> np.ndarray:
    """F1 per class, 2 TP_i / (2 TP_i + FP_i + FN_i) = 2 TP_i / (n_i + P_i), the harmonic mean of PPV
    and sensitivity where both are positive; 0 where n_i + P_i = 0, and 0 when TP_i = 0 (so a class
    with cells that is never predicted scores 0, not "undefined").
    = sklearn ``f1_score(..., labels=range(K), average=None, zero_division=0)`` (scikit-learn >= 1.3)."""
    return _ratio_or_zero(2 * _true_positives(cm), _true_counts(cm) + _predicted_counts(cm))


def accuracy(cm: np.ndarray) -> float:
    """Correct / all cells, unclassified counted as errors."""
    return float(np.trace(cm[:, :-1]) / cm.sum())


def balanced_accuracy(cm: np.ndarray) -> float:
    """Mean sensitivity over the classes present in the expert labels (n_i > 0), unclassified cells
    counting as misses; NaN with no cells. = sklearn ``balanced_accuracy_score(y_true, y_pred)``
    (Brodersen et al., ICPR 2010), which drops classes absent from y_true, unclassified among them."""
    present = _true_counts(cm) > 0
    return float(sensitivity(cm)[present].mean()) if present.any() else float("nan")


def selective_accuracy(cm: np.ndarray) -> float:
    """Correct / committed cells: accuracy on the cells the model did classify; NaN if none."""
    committed = cm[:, :-1].sum()
    return float(np.trace(cm[:, :-1]) / committed) if committed else float("nan")


def unclassified_rate(cm: np.ndarray) -> float:
    return float(cm[:, -1].sum() / cm.sum())


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 (``f1``, zero_division=0) over the classes that occur in
    the expert labels or the predictions (n_i + P_i > 0): a class with cells that is never predicted
    counts with F1 = 0, and so does a class predicted but absent from the labels; a class neither
    labelled nor predicted is left out. NaN with no cells. = sklearn ``f1_score(y_true, y_pred,
    labels=<those classes>, average="macro", zero_division=0)``, i.e. sklearn's default label set
    (every label seen in y_true or y_pred) less ``unclassified``, which is an outcome, not a class."""
    occurring = (_true_counts(cm) + _predicted_counts(cm)) > 0
    return float(f1(cm)[occurring].mean()) if occurring.any() else float("nan")


def cohen_kappa(cm: np.ndarray) -> float:
    """Cohen's kappa over K+1 categories (the classes and unclassified), kappa = (p_o - p_e) / (1 - p_e),
    p_o = observed agreement, p_e = sum_k (row_k / n)(col_k / n) (Cohen 1960); NaN when p_e = 1.
    The expert never says "unclassified", so every abstention is a disagreement.
    = sklearn ``cohen_kappa_score(y_true, y_pred, labels=[*range(K), UNCLASSIFIED])``; note that
    ``labels=range(K)`` would instead drop the unclassified cells from kappa."""
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


# --- pre-classification against verification (ICSH 2019; per-cell analyzer exports) ------------------


def specificity(cm: np.ndarray) -> np.ndarray:
    """Specificity per class i (one class against the rest), TN_i / (TN_i + FP_i), where
    TN_i + FP_i = N - n_i (cells of other true classes) and FP_i = P_i - TP_i; 0 where no cell is
    of another class (``zero_division=0``, as the rest of this module). Works on the K x (K+1)
    matrix (an unclassified cell is a negative prediction for every class) and on a square one.
    = sklearn ``recall_score(y_true != i, y_pred != i)`` for each i (the negative class's recall)."""
    n = cm.sum()
    negatives = n - _true_counts(cm)
    false_positives = _predicted_counts(cm) - _true_positives(cm)
    return _ratio_or_zero(negatives - false_positives, negatives)


def weighted_kappa(cm: np.ndarray, weights: str) -> float:
    """Cohen's weighted kappa of a square agreement matrix (rows: one rater, columns: the other),
    kappa_w = 1 - sum(w_ij O_ij) / sum(w_ij E_ij), E_ij = row_i col_j / N (Cohen 1968, Psychol Bull
    70:213), with disagreement weights w_ij = |i - j| ("linear") or (i - j)^2 ("quadratic") by the
    categories' order in the matrix; "none" gives the unweighted kappa. NaN when sum(w E) = 0 (all
    cells in one category). = sklearn ``cohen_kappa_score(a, b, labels=<the categories>,
    weights=...)``. The weights make sense only for ordered categories: for cell classes the order
    is CELL_CLASSES' and the unweighted kappa is the primary figure."""
    o = np.asarray(cm, dtype=np.float64)
    if o.ndim != 2 or o.shape[0] != o.shape[1]:
        raise ValueError(f"weighted_kappa needs a square matrix, got shape {o.shape}")
    idx = np.arange(o.shape[0])
    diff = np.abs(idx[:, None] - idx[None, :]).astype(np.float64)
    w = {"none": (diff > 0).astype(np.float64), "linear": diff, "quadratic": diff**2}.get(weights)
    if w is None:
        raise ValueError(f"weights must be none, linear or quadratic, got {weights!r}")
    n = o.sum()
    expected = np.outer(o.sum(axis=1), o.sum(axis=0)) / n if n else np.zeros_like(o)
    denominator = float((w * expected).sum())
    return 1.0 - float((w * o).sum()) / denominator if denominator > 0 else float("nan")


def wilson_interval(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (Wilson 1927, JASA 22:209; Newcombe 1998, Stat Med
    17:857, method 3), through ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``;
    (NaN, NaN) when n = 0."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _agreement_weights(k: int, weights: str) -> np.ndarray:
    """Agreement weights 1 - d_ij / max d of weighted_kappa's disagreement weights d (identity for
    "none"; vcd's "Equal-Spacing" for linear, "Fleiss-Cohen" for quadratic): they give the same kappa."""
    idx = np.arange(k)
    diff = np.abs(idx[:, None] - idx[None, :]).astype(np.float64)
    if weights == "none":
        return np.eye(k)
    d = {"linear": diff, "quadratic": diff**2}.get(weights)
    if d is None:
        raise ValueError(f"weights must be none, linear or quadratic, got {weights!r}")
    return 1.0 - d / d.max() if k > 1 else np.ones((1, 1))


def kappa_standard_error(cm: np.ndarray, weights: str) -> float:
    """Large-sample standard error of Cohen's (weighted) kappa, not assuming kappa = 0 (for intervals).

    With p_ij = O_ij / n, margins p_i. and p_.j, agreement weights w_ij (1 on the diagonal),
    wbar_i. = sum_j w_ij p_.j, wbar_.j = sum_i w_ij p_i., p_e = sum w_ij p_i. p_.j and kappa_w:

        Var = [ sum_ij p_ij (w_ij - (wbar_i. + wbar_.j)(1 - kappa_w))^2 - (kappa_w - p_e (1 - kappa_w))^2 ]
              / (n (1 - p_e)^2)

    Source: Fleiss J.L., Cohen J., Everitt B.S. (1969), Large sample standard errors of kappa and
    weighted kappa, Psychol Bull 72:323-327, eq. 13 (the unweighted case with w = identity, eq. 9 there);
    the same formula as R's vcd::Kappa ``ASE``. NaN when n = 0 or p_e = 1 (kappa undefined).
    """
    o = np.asarray(cm, dtype=np.float64)
    if o.ndim != 2 or o.shape[0] != o.shape[1]:
        raise ValueError(f"kappa_standard_error needs a square matrix, got shape {o.shape}")
    n = o.sum()
    if n == 0:
        return float("nan")
    w = _agreement_weights(o.shape[0], weights)
    p = o / n
    rows, cols = p.sum(axis=1), p.sum(axis=0)
    pe = float(rows @ w @ cols)
    if pe >= 1.0:
        return float("nan")
    kw = (float((w * p).sum()) - pe) / (1.0 - pe)
    wbar_row, wbar_col = w @ cols, rows @ w
    inner = w - (wbar_row[:, None] + wbar_col[None, :]) * (1.0 - kw)
    var = (float((p * inner**2).sum()) - (kw - pe * (1.0 - kw)) ** 2) / (n * (1.0 - pe) ** 2)
    return float(np.sqrt(max(var, 0.0)))


def kappa_interval(cm: np.ndarray, weights: str, confidence: float) -> tuple[float, float]:
    """Wald interval kappa_w -/+ z_(1+confidence)/2 x ``kappa_standard_error`` (Fleiss, Cohen & Everitt
    1969), clipped to kappa's range [-1, 1] as vcd's ``confint.Kappa`` does (``max(-1, ...)``,
    ``min(1, ...)``); (NaN, NaN) when kappa is undefined."""
    from scipy.stats import norm

    kw, se = weighted_kappa(cm, weights), kappa_standard_error(cm, weights)
    if not (np.isfinite(kw) and np.isfinite(se)):
        return float("nan"), float("nan")
    z = float(norm.ppf(0.5 + confidence / 2))
    return max(-1.0, kw - z * se), min(1.0, kw + z * se)
