"""Outliers in the method comparison: the generalized ESD many-outlier procedure (Rosner 1983).

CLSI EP09c recommends testing the differences between the candidate and the comparative method
(absolute, or relative to the comparative value) for outliers by generalized ESD; outliers are
listed with their statistics and never removed silently (the caller decides and states what it does).

Procedure, for at most r outliers among n values at significance α:
for i = 1..r, with x̄ and s (n − 1 divisor) of the values still in the set, remove the value with
the largest |x − x̄| and record R_i = max |x − x̄| / s; the critical value is
λ_i = (n − i)·t_{p, n−i−1} / √((n − i − 1 + t²_{p, n−i−1})(n − i + 1)), p = 1 − α / (2(n − i + 1)).
The number of outliers is the largest i with R_i > λ_i (0 if none): the first i removed values.

Sources: Rosner B., Technometrics 25:165–172 (1983); NIST/SEMATECH e-Handbook of Statistical
Methods §1.3.5.17.3 "Generalized ESD Test for Outliers"; CLSI EP09c (2018).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from scipy import stats

__all__ = [
    "EsdResult",
    "EsdStep",
    "comparison_differences",
    "esd_critical_value",
    "generalized_esd",
    "max_outliers_for_share",
]

#: Fewest values the procedure is run on (Rosner's approximation of λ_i is checked from n = 15 on;
#: NIST: "reasonably accurate" for n ≥ 15).
MIN_VALUES: Final[int] = 15


@dataclass(frozen=True)
class EsdStep:
    i: int
    index: int  # position in the input of the value removed at this step
    value: float
    r: float  # R_i
    critical: float  # λ_i


@dataclass(frozen=True)
class EsdResult:
    n: int
    max_outliers: int
    alpha: float
    steps: tuple[EsdStep, ...]
    n_outliers: int

    @property
    def outliers(self) -> tuple[EsdStep, ...]:
        """The removed values that are declared outliers (the first n_outliers steps)."""
        return self.steps[: self.n_outliers]


def esd_critical_value(n: int, i: int, alpha: float) -> float:
    """λ_i = (n − i)·t_{p,ν} / √((ν + t²_{p,ν})(n − i + 1)), ν = n − i − 1, p = 1 − α/(2(n − i + 1)).

    Source: Rosner (1983), eq. for the approximate percentage points; NIST e-Handbook §1.3.5.17.3.
    """
    nu = n - i - 1
    p = 1 - alpha / (2 * (n - i + 1))
    t = float(stats.t.ppf(p, nu))
    return (n - i) * t / math.sqrt((nu + t * t) * (n - i + 1))


def max_outliers_for_share(n: int, share: float) -> int:
    """The most outliers tested for when at most ``share`` of n values may be outliers: ⌊share·n⌋, at least 1."""
    if not 0 < share < 0.5:
        raise ValueError(f"the outlier share must lie in (0, 0.5), got {share!r}")
    return max(1, math.floor(share * n))


def generalized_esd(values: object, max_outliers: int, alpha: float = 0.05) -> EsdResult:
    """Rosner's generalized ESD test (module docstring). Ties for the largest deviation: the first
    in input order is removed. A step whose remaining values have no spread (s = 0) ends the
    procedure (R_i undefined), and later steps are not computed.
    """
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"values must be one-dimensional, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("values hold NaN or infinite numbers")
    n = x.size
    if n < MIN_VALUES:
        raise ValueError(f"generalized ESD needs at least {MIN_VALUES} values, got {n}")
    if not (isinstance(max_outliers, int) and 1 <= max_outliers <= (n - 3)):
        raise ValueError(f"max_outliers must be a whole number in 1..n−3 = 1..{n - 3}, got {max_outliers!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    remaining = np.arange(n)
    steps: list[EsdStep] = []
    for i in range(1, max_outliers + 1):
        v = x[remaining]
        s = float(v.std(ddof=1))
        if s == 0.0:
            break
        dev = np.abs(v - v.mean())
        j = int(np.argmax(dev))
        steps.append(EsdStep(i, int(remaining[j]), float(v[j]), float(dev[j]) / s, esd_critical_value(n, i, alpha)))
        remaining = np.delete(remaining, j)
    n_out = max((st.i for st in steps if st.r > st.critical), default=0)
    return EsdResult(n=n, max_outliers=max_outliers, alpha=alpha, steps=tuple(steps), n_outliers=n_out)


def comparison_differences(
    candidate: object, comparative: object, kind: Literal["absolute", "relative"] = "absolute"
) -> np.ndarray:
    """Differences of the method comparison: y − x (absolute) or 100·(y − x)/x (relative, %).

    A relative difference with x = 0 is undefined (NaN); the caller excludes such pairs with a reason.
    Source: CLSI EP09c (2018), outlier screening on absolute or relative differences.
    """
    y = np.asarray(candidate, dtype=float)
    x = np.asarray(comparative, dtype=float)
    if y.shape != x.shape or y.ndim != 1:
        raise ValueError(f"candidate and comparative must be 1-D of equal length, got {y.shape} and {x.shape}")
    if kind == "absolute":
        return y - x
    if kind == "relative":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(x != 0, 100.0 * (y - x) / np.where(x != 0, x, 1.0), np.nan)
    raise ValueError(f"kind must be 'absolute' or 'relative', got {kind!r}")
