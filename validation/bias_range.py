"""Bias over the measuring range: bias by concentration interval and regression-based limits of agreement.

Two questions that one constant bias ± 1.96 SD cannot answer: does the bias change with the
concentration (CLSI EP09c: bias estimated within concentration intervals), and do the differences
spread more at high values (Bland & Altman 1999, section 3.2: limits of agreement that follow the
level)? Pure functions on arrays; the caller (``wbcv.validation.verdict``) chooses the intervals
from the protocol (cut points per measurand) or, by default, the tertiles of the reference values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import stats

__all__ = [
    "IntervalBias",
    "MeanDifference",
    "RegressionLimits",
    "bias_by_interval",
    "mean_difference",
    "regression_limits",
    "tertile_cuts",
]

#: √(π/2): the mean of |e| for e ~ N(0, σ²) is σ·√(2/π), so σ = √(π/2)·E|e| (Bland & Altman 1999, §3.2).
SQRT_PI_OVER_2: Final[float] = math.sqrt(math.pi / 2)


def _values(a: object, name: str) -> np.ndarray:
    x = np.asarray(a, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds NaN or infinite numbers")
    return x


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")


@dataclass(frozen=True)
class MeanDifference:
    n: int
    mean: float
    sd: float | None  # n − 1 divisor; None for n = 1
    lower: float | None  # None when n < 2 (no spread to estimate)
    upper: float | None
    confidence: float


def mean_difference(differences: object, confidence: float = 0.95) -> MeanDifference:
    """Mean difference (bias) with its Student-t confidence interval.

    bias = d̄ = Σd / n; s = √(Σ(d − d̄)² / (n − 1)); CI = d̄ ± t_{1−α/2, n−1} · s / √n, α = 1 − confidence.
    Sources: Student (1908); Bland & Altman (1986) Lancet i:307, §"precision of the estimated limits";
    CLSI EP09c (2018) bias with its CI. Undefined values: n = 0 raises ValueError; n = 1 gives the
    mean with sd and CI None (no spread can be estimated), as R's t.test refuses n = 1; identical
    differences give sd 0 and the CI [d, d] exactly (their floating-point mean can miss d in the last bit).
    """
    d = _values(differences, "differences")
    _check_confidence(confidence)
    n = d.size
    if n == 0:
        raise ValueError("no differences: the mean difference of an empty set is undefined")
    mean = float(d.mean())
    if n == 1:
        return MeanDifference(1, mean, None, None, None, confidence)
    if np.ptp(d) == 0:
        value = float(d[0])
        return MeanDifference(n, value, 0.0, value, value, confidence)
    sd = float(d.std(ddof=1))
    half = float(stats.t.ppf(1 - (1 - confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return MeanDifference(n, mean, sd, mean - half, mean + half, confidence)


def tertile_cuts(reference: object) -> tuple[float, float]:
    """The two cut points that split the reference values into thirds: the 1/3 and 2/3 sample quantiles
    (linear interpolation, Hyndman & Fan 1996 type 7, numpy's and R's default). Needs 3 values."""
    x = _values(reference, "reference")
    if x.size < 3:
        raise ValueError(f"tertiles need at least 3 values, got {x.size}")
    q1, q2 = np.quantile(x, [1 / 3, 2 / 3])
    return float(q1), float(q2)


@dataclass(frozen=True)
class IntervalBias:
    low: float | None  # None: open below (−∞)
    high: float | None  # None: open above (+∞); an interval is low <= x < high
    absolute: MeanDifference | None  # None when the interval holds no sample
    percent: MeanDifference | None  # mean of the relative errors (%), None when none is defined


def bias_by_interval(
    reference: object, differences: object, errors_pct: object, cuts: object, confidence: float = 0.95
) -> tuple[IntervalBias, ...]:
    """Bias (mean difference, :func:`mean_difference`) within concentration intervals of the reference.

    The cut points c_1 < … < c_k give the k + 1 intervals (−∞, c_1), [c_1, c_2), …, [c_k, ∞) of the
    reference value x; each sample counts in exactly one. Per interval: the mean absolute difference
    (test − reference) and the mean relative error (%) with t-intervals. ``errors_pct`` may hold NaN
    where the relative error is undefined (reference 0): those samples count in the absolute bias only.
    Source: CLSI EP09c (2018), bias over the measuring interval estimated in concentration ranges.
    """
    x = _values(reference, "reference")
    d = _values(differences, "differences")
    e = np.asarray(errors_pct, dtype=float)
    c = _values(cuts, "cuts")
    if not (x.shape == d.shape == e.shape):
        raise ValueError(f"reference, differences and errors must have equal length, got {x.size}, {d.size}, {e.size}")
    if c.size == 0 or np.any(np.diff(c) <= 0):
        raise ValueError(f"cut points must be one or more strictly increasing numbers, got {c.tolist()}")
    which = np.searchsorted(c, x, side="right")  # 0 .. k: x < c_1 -> 0, c_1 <= x < c_2 -> 1, ...
    out = []
    for i in range(c.size + 1):
        inside = which == i
        pct = e[inside & np.isfinite(e)]
        out.append(
            IntervalBias(
                low=None if i == 0 else float(c[i - 1]),
                high=None if i == c.size else float(c[i]),
                absolute=mean_difference(d[inside], confidence) if inside.any() else None,
                percent=mean_difference(pct, confidence) if pct.size else None,
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class RegressionLimits:
    """D̂(A) = b0 + b1·A; limits D̂(A) ± z·√(π/2)·(c0 + c1·A)."""

    n: int
    bias_intercept: float  # b0
    bias_slope: float  # b1
    spread_intercept: float  # c0 (of |residual| on A)
    spread_slope: float  # c1
    z: float

    def at(self, level: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bias, lower limit, upper limit) at the pair means ``level``."""
        a = np.asarray(level, dtype=float)
        bias = self.bias_intercept + self.bias_slope * a
        half = self.z * SQRT_PI_OVER_2 * (self.spread_intercept + self.spread_slope * a)
        return bias, bias - half, bias + half


def regression_limits(means: object, differences: object, coverage: float = 0.95) -> RegressionLimits:
    """Regression-based limits of agreement (Bland & Altman 1999, Stat Methods Med Res 8:135, §3.2).

    1. Regress the differences D on the pair means A by least squares: D̂ = b0 + b1·A.
    2. Regress the absolute residuals |R| = |D − D̂| on A: |R|^ = c0 + c1·A. For normal residuals
       E|R| = σ·√(2/π), so the SD at A is √(π/2)·(c0 + c1·A).
    3. Limits: b0 + b1·A ± z·√(π/2)·(c0 + c1·A), z = Φ⁻¹((1 + coverage)/2) (1.96 for 95 %; Bland &
       Altman's 2.46 = 1.96·√(π/2)).
    Undefined: fewer than 3 pairs, or no spread in A, raises ValueError. Where c0 + c1·A < 0 (a
    fitted spread below zero, possible outside the data) the limits cross; they are drawn over the
    observed means only.
    """
    a = _values(means, "means")
    d = _values(differences, "differences")
    if a.shape != d.shape:
        raise ValueError(f"means and differences must have equal length, got {a.size} and {d.size}")
    if a.size < 3:
        raise ValueError(f"regression-based limits need at least 3 pairs, got {a.size}")
    if np.ptp(a) == 0:
        raise ValueError("the pair means have no spread: the differences cannot be regressed on them")
    _check_confidence(coverage)
    b1, b0 = np.polyfit(a, d, 1)
    c1, c0 = np.polyfit(a, np.abs(d - (b0 + b1 * a)), 1)
    z = float(stats.norm.ppf((1 + coverage) / 2))
    return RegressionLimits(int(a.size), float(b0), float(b1), float(c0), float(c1), z)
