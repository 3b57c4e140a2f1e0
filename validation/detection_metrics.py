"""Object-detection and counting metrics for the smear-field stage (``wbcv segment``).

Boxes are (x0, y0, x1, y1) in pixels, x0 < x1 and y0 < y1, continuous coordinates (a box's area is
(x1 - x0)(y1 - y0)).

* **IoU** (intersection over union, Jaccard index of the two boxes): |A ∩ B| / |A ∪ B|, in [0, 1].
* **Matching**: the PASCAL VOC rule (Everingham et al., IJCV 88 (2010) 303-338, section 4.2):
  predictions in order of descending score each take the unmatched true box of highest IoU, if that
  IoU is at least the threshold (0.5); a true box is matched at most once, further predictions of it
  are false positives. Ties in score keep the given order (a stable sort).
* **Recall** = TP / (number of true boxes), **precision** = TP / (number of predicted boxes); a ratio
  whose denominator is zero is NaN here (undefined, reported as such, never 0 or 1: a split
  without any true box has no recall), unlike scikit-learn's ``zero_division`` (these figures are
  summed over fields before dividing, so the zero case means "no boxes at all").
* **Relative count error** of a field: |predicted - true| / true; undefined (NaN) when true = 0,
  and such fields are left out of the relative summary and counted (``n_undefined``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Box = tuple[float, float, float, float]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of boxes given as (N, 4) arrays of x0, y0, x1, y1."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    if np.any(a[:, 2:] <= a[:, :2]) or np.any(b[:, 2:] <= b[:, :2]):
        raise ValueError("every box needs x0 < x1 and y0 < y1")
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def match_boxes(pred: Sequence[Box], scores: Sequence[float], truth: Sequence[Box], iou_min: float = 0.5) -> int:
    """Number of true positives under the PASCAL VOC greedy rule (see the module docstring)."""
    if len(pred) != len(scores):
        raise ValueError(f"{len(pred)} boxes but {len(scores)} scores")
    if not pred or not truth:
        return 0
    iou = box_iou(np.asarray(pred), np.asarray(truth))
    taken = np.zeros(len(truth), bool)
    tp = 0
    for i in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        cand = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou_min:
            taken[j] = True
            tp += 1
    return tp


@dataclass(frozen=True)
class DetectionScore:
    n_true: int
    n_pred: int
    tp: int

    @property
    def recall(self) -> float:
        return self.tp / self.n_true if self.n_true else float("nan")

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else float("nan")


def detection_score(
    fields: Sequence[tuple[Sequence[Box], Sequence[float], Sequence[Box]]], iou_min: float = 0.5
) -> DetectionScore:
    """Recall and precision summed over fields: each field is (predicted boxes, their scores, true boxes)."""
    n_true = sum(len(t) for _, _, t in fields)
    n_pred = sum(len(p) for p, _, _ in fields)
    tp = sum(match_boxes(p, s, t, iou_min) for p, s, t in fields)
    return DetectionScore(n_true, n_pred, tp)


@dataclass(frozen=True)
class CountErrorSummary:
    n_fields: int  # fields with a defined relative error (true count > 0)
    n_undefined: int  # fields with a true count of 0 (relative error undefined)
    median: float  # of |pred - true| / true; NaN when no field is defined
    p90: float  # 90th percentile (linear interpolation, numpy's default, R type 7)
    mean_signed: float  # mean of (pred - true) / true: the bias


def count_errors(predicted: Sequence[int], true: Sequence[int]) -> CountErrorSummary:
    """Median and 90th percentile of the per-field relative count error |pred - true| / true."""
    p = np.asarray(predicted, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 1:
        raise ValueError(f"predicted and true must be 1-D of equal length, got {p.shape} and {t.shape}")
    if np.any(t < 0) or np.any(p < 0):
        raise ValueError("counts must be non-negative")
    ok = t > 0
    rel = (p[ok] - t[ok]) / t[ok]
    if rel.size == 0:
        nan = float("nan")
        return CountErrorSummary(0, int((~ok).sum()), nan, nan, nan)
    a = np.abs(rel)
    return CountErrorSummary(
        int(ok.sum()), int((~ok).sum()), float(np.median(a)), float(np.quantile(a, 0.9)), float(rel.mean())
    )
