"""Method-comparison regression: ordinary least squares, Deming, weighted Deming, Passing–Bablok.

Conventions shared by every function here:

* ``x`` holds the reference (comparative) method, ``y`` the test (candidate) method, one pair per
  sample. The fitted line is ``y = intercept + slope · x``.
* The bias at a medical decision level X_c is ``intercept + (slope − 1) · X_c`` (CLSI EP09c, and
  ``calcBias`` of the R package mcr); :meth:`RegressionResult.bias_at` returns it with the CI that
  mcr defines for the method (analytical for OLS, jackknife for Deming, none for Passing–Bablok).
* ``alpha`` gives 100·(1 − alpha) % two-sided confidence intervals.
* Every function reproduces mcr 1.3.3.1 (``mcreg``; Manuilova, Schuetzenmeister, Model, Roche 2011–2014),
  checked against mcr's published reference cases in ``tests/test_regression_mcr.py``. Where mcr
  departs from the original papers, the docstring says so; the mcr choice is the default.

Invalid input (length mismatch, fewer than 3 pairs, NaN or infinite values, values outside the
method's domain, no spread in x or y) raises ``ValueError`` naming the argument and the index.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
from scipy import stats

from wbcv.validation.pairwise_slopes import PairwiseSlopes, mcr_diff

__all__ = [
    "LARGE_N",
    "BiasAtLevel",
    "DemingResult",
    "LinearityTest",
    "OLSResult",
    "PassingBablokResult",
    "RegressionResult",
    "cusum_linearity",
    "deming",
    "ols",
    "paired_arrays",
    "passing_bablok",
    "weighted_deming",
]

Domain = Literal["any", "nonnegative", "positive"]
Algorithm = Literal["auto", "exact", "large"]

#: Above this many pairs, ``algorithm="auto"`` computes Passing–Bablok without storing the
#: n(n − 1)/2 pairwise slopes and the weighted-Deming jackknife without n refits (see
#: :func:`passing_bablok` and :func:`weighted_deming`). At 2,000 pairs the quadratic Passing–Bablok
#: holds about 2 million slopes (~0.2 GB at its peak); 6,000 pairs took 1.35 GiB.
LARGE_N: Final[int] = 2_000


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def paired_arrays(
    x: object, y: object, *, names: tuple[str, str] = ("x", "y"), min_n: int = 3, domain: Domain = "any"
) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as 1-D float arrays of equal length, or ``ValueError`` saying what is wrong."""
    arrays = []
    for value, name in zip((x, y), names, strict=True):
        try:
            a = np.asarray(value, dtype=float)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be a sequence of numbers: {exc}") from None
        if a.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
        arrays.append(a)
    a, b = arrays
    if a.size != b.size:
        raise ValueError(f"{names[0]} and {names[1]} must have the same length, got {a.size} and {b.size}")
    if a.size < min_n:
        raise ValueError(f"at least {min_n} pairs are needed, got {a.size}")
    for arr, name in zip(arrays, names, strict=True):
        _check_finite(arr, name)
        _check_domain(arr, name, domain)
    return a, b


def _check_finite(a: np.ndarray, name: str) -> None:
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name}[{i}] is {a[i]}: NaN and infinite values are not allowed "
            f"({bad.size} such value(s); exclude those samples with a stated reason first)"
        )


def _check_domain(a: np.ndarray, name: str, domain: Domain) -> None:
    if domain == "positive":
        bad = np.flatnonzero(a <= 0)
        need = "positive values (> 0)"
    elif domain == "nonnegative":
        bad = np.flatnonzero(a < 0)
        need = "non-negative values (>= 0)"
    else:
        return
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] is {a[i]}: this method needs {need} ({bad.size} value(s) outside)")


def _check_spread(a: np.ndarray, name: str) -> None:
    if np.ptp(a) == 0:
        raise ValueError(f"all values of {name} are equal ({a[0]}); a regression line is undefined")


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in ("auto", "exact", "large"):
        raise ValueError(f"algorithm must be 'auto', 'exact' or 'large', got {algorithm!r}")


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, int | float) and 0 < alpha < 1):
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")


def _levels(levels: float | Sequence[float] | np.ndarray) -> np.ndarray:
    lv = np.atleast_1d(np.asarray(levels, dtype=float))
    if lv.ndim != 1 or lv.size == 0:
        raise ValueError(f"levels must be a number or a non-empty 1-D sequence, got shape {lv.shape}")
    _check_finite(lv, "levels")
    return lv


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BiasAtLevel:
    """Bias of the test method at one decision level, ``intercept + (slope − 1) · level``.

    ``se``, ``lower`` and ``upper`` are NaN where the method defines no CI (Passing–Bablok).
    """

    level: float
    bias: float
    se: float
    lower: float
    upper: float

    @property
    def bias_pct(self) -> float:
        """Proportional bias, 100 · bias / level (mcr ``calcBias(type="proportional")``); NaN at level 0."""
        return 100.0 * self.bias / self.level if self.level != 0 else math.nan

    @property
    def lower_pct(self) -> float:
        """Lower CI limit as % of the level (limits swap for a negative level); NaN at level 0."""
        return self._pct(self.lower if self.level > 0 else self.upper)

    @property
    def upper_pct(self) -> float:
        """Upper CI limit as % of the level (limits swap for a negative level); NaN at level 0."""
        return self._pct(self.upper if self.level > 0 else self.lower)

    def _pct(self, value: float) -> float:
        return 100.0 * value / self.level if self.level != 0 else math.nan


@dataclass(frozen=True)
class RegressionResult:
    """Fields shared by every method-comparison regression (the role of mcr's ``MCResult``).

    ``conventions`` lists, in words, every choice that another tool might make differently.
    Standard errors are NaN where the method has none (Passing–Bablok).
    """

    method: str
    n: int
    alpha: float
    intercept: float
    slope: float
    intercept_se: float
    slope_se: float
    intercept_ci: tuple[float, float]
    slope_ci: tuple[float, float]
    ci_method: str
    conventions: tuple[str, ...]

    def bias_at(
        self, levels: float | Sequence[float] | np.ndarray, alpha: float | None = None
    ) -> tuple[BiasAtLevel, ...]:
        """Bias at each level, point estimates only: used by Passing–Bablok, for which neither P&B nor
        mcr define an analytical CI of the bias (``se``, ``lower``, ``upper`` are NaN)."""
        lv = _levels(levels)
        bias = self.intercept + (self.slope - 1.0) * lv
        nan = math.nan
        return tuple(BiasAtLevel(float(level), float(b), nan, nan, nan) for level, b in zip(lv, bias, strict=True))


@dataclass(frozen=True)
class OLSResult(RegressionResult):
    """Ordinary least squares with analytical (t-based) CIs."""

    x_mean: float
    residual_sd: float
    sxx: float

    def bias_at(
        self, levels: float | Sequence[float] | np.ndarray, alpha: float | None = None
    ) -> tuple[BiasAtLevel, ...]:
        """Bias with the analytical CI of the fitted value (mcr ``MCResultAnalytical.calcResponse``).

        SE(X_c) = s · sqrt(1/n + (X_c − x̄)² / Sxx), CI = bias ± t(1 − alpha/2, n − 2) · SE.
        (mcr writes the same variance as se_b0² + se_b1² · X_c (X_c − 2 x̄); this form avoids the
        cancellation.) The bias CI is the response CI shifted by −X_c.
        """
        a = self.alpha if alpha is None else alpha
        _check_alpha(a)
        lv = _levels(levels)
        bias = self.intercept + (self.slope - 1.0) * lv
        se = self.residual_sd * np.sqrt(1.0 / self.n + (lv - self.x_mean) ** 2 / self.sxx)
        t = float(stats.t.ppf(1 - a / 2, self.n - 2))
        return _bias_rows(lv, bias, se, t)


@dataclass(frozen=True)
class DemingResult(RegressionResult):
    """Deming or weighted Deming regression with jackknife CIs (Linnet 1990/1993, mcr).

    ``jackknife_intercepts[i]`` / ``jackknife_slopes[i]`` are the estimates without pair i.
    ``iterations`` and ``converged`` describe the weighted algorithm on the full data (1 and True
    for unweighted Deming); ``jackknife_not_converged`` counts leave-one-out fits that stopped at
    ``iter_max``. ``algorithm``: how the leave-one-out fits were made, ``"exact"`` (refits for weighted
    Deming, downdated sums for Deming) or ``"large"`` (weighted Deming at large n; :func:`weighted_deming`).
    """

    error_ratio: float
    weighted: bool
    iterations: int
    converged: bool
    jackknife_not_converged: int
    jackknife_intercepts: tuple[float, ...]
    jackknife_slopes: tuple[float, ...]
    algorithm: str

    def bias_at(
        self, levels: float | Sequence[float] | np.ndarray, alpha: float | None = None
    ) -> tuple[BiasAtLevel, ...]:
        """Bias with its jackknife CI (mcr ``MCResultJackknife.calcResponse``).

        For each level the leave-one-out biases B_(−i) = b0_(−i) + (b1_(−i) − 1) X_c give pseudo-values
        P_i = n·B − (n − 1)·B_(−i); SE = sd(P) / sqrt(n) and CI = B ± t(1 − alpha/2, n − 2) · SE,
        centred on the full-data bias B (not on the mean of the pseudo-values), as mcr does.
        """
        a = self.alpha if alpha is None else alpha
        _check_alpha(a)
        lv = _levels(levels)
        bias = self.intercept + (self.slope - 1.0) * lv
        b0j = np.asarray(self.jackknife_intercepts)[:, None]
        b1j = np.asarray(self.jackknife_slopes)[:, None]
        se = _jackknife_se(bias[None, :], b0j + (b1j - 1.0) * lv[None, :])
        t = float(stats.t.ppf(1 - a / 2, self.n - 2))
        return _bias_rows(lv, bias, se, t)


@dataclass(frozen=True)
class LinearityTest:
    """CUSUM test for linearity of Passing & Bablok (1983).

    ``cusum`` is the running sum of residual scores along the line (for plotting);
    ``statistic`` is max |cusum| / sqrt(n_negative + 1); linearity is rejected when it exceeds
    ``critical_value``, the (1 − alpha) quantile of the Kolmogorov distribution (1.358 for
    alpha = 0.05; P&B tabulate 1.36). ``p_value`` is the asymptotic Kolmogorov tail probability.
    """

    max_cusum: float
    cusum: tuple[float, ...]
    n_positive: int
    n_negative: int
    statistic: float
    critical_value: float
    p_value: float
    alpha: float
    rejected: bool


@dataclass(frozen=True)
class PassingBablokResult(RegressionResult):
    """Passing–Bablok regression with the analytical order-statistic CIs, plus the CUSUM test.

    ``n_slopes`` counts the defined pairwise slopes (including those equal to −1, which mcr keeps
    with half weight, see :func:`passing_bablok`), ``shift_k`` the slopes below −1 (above +1 for a
    negative correlation), ``n_minus_one`` the slopes exactly −1 (+1), ``positive_correlation``
    the sign of Kendall's tau that chose between the two, ``algorithm`` ``"exact"`` (all slopes
    sorted) or ``"large"`` (order statistics selected without storing them; :func:`passing_bablok`).
    """

    n_slopes: int
    shift_k: int
    n_minus_one: int
    positive_correlation: bool
    even_median: str
    algorithm: str
    linearity: LinearityTest


def _bias_rows(lv: np.ndarray, bias: np.ndarray, se: np.ndarray, t: float) -> tuple[BiasAtLevel, ...]:
    return tuple(
        BiasAtLevel(float(level), float(b), float(s), float(b - t * s), float(b + t * s))
        for level, b, s in zip(lv, bias, se, strict=True)
    )


# --------------------------------------------------------------------------------------------
# ordinary least squares
# --------------------------------------------------------------------------------------------


def ols(x: object, y: object, alpha: float = 0.05) -> OLSResult:
    """Ordinary least-squares regression of y on x with analytical t-based CIs.

    b1 = Sxy / Sxx, b0 = ȳ − b1 x̄, s² = Σ (y − b0 − b1 x)² / (n − 2),
    SE(b1) = s / sqrt(Sxx), SE(b0) = SE(b1) · sqrt(Σx² / n), CI = b ± t(1 − alpha/2, n − 2) · SE.

    Source: Neter, Wasserman & Kutner, *Applied Linear Statistical Models* (1985), as in mcr
    ``mc.linreg`` + ``mc.analytical.ci`` (method ``"LinReg"``, CI ``"analytical"``). OLS assumes x is
    free of error, which a reference analyzer is not (EP09-A2 accepted it only for r ≥ 0.975; CLSI
    EP09c prefers Deming or Passing–Bablok); it is here for comparison and for mcr parity.
    """
    _check_alpha(alpha)
    x, y = paired_arrays(x, y)
    _check_spread(x, "x")
    n = x.size
    xm, ym = x.mean(), y.mean()
    dx = x - xm
    sxx = float(dx @ dx)
    b1 = float(dx @ (y - ym)) / sxx
    b0 = float(ym - b1 * xm)
    resid = y - b0 - b1 * x
    s = math.sqrt(float(resid @ resid) / (n - 2))
    se_b1 = s / math.sqrt(sxx)
    se_b0 = se_b1 * math.sqrt(float(x @ x) / n)
    t = float(stats.t.ppf(1 - alpha / 2, n - 2))
    return OLSResult(
        method="OLS",
        n=n,
        alpha=alpha,
        intercept=b0,
        slope=b1,
        intercept_se=se_b0,
        slope_se=se_b1,
        intercept_ci=(b0 - t * se_b0, b0 + t * se_b0),
        slope_ci=(b1 - t * se_b1, b1 + t * se_b1),
        ci_method="analytical",
        conventions=("t quantile with n - 2 degrees of freedom (mcr)",),
        x_mean=float(xm),
        residual_sd=s,
        sxx=sxx,
    )


# --------------------------------------------------------------------------------------------
# Deming and weighted Deming
# --------------------------------------------------------------------------------------------


def _deming_slope(u: float, q: float, p: float, lam: float) -> float:
    """Slope from the (weighted) sums of squares u = Sxx, q = Syy, p = Sxy and λ = σx²/σy².

    b1 = (λq − u + sqrt((u − λq)² + 4λp²)) / (2λp), written as 2p / (u − λq + sqrt(...)) when
    λq − u < 0 so that neither form subtracts nearly equal numbers.
    """
    if p == 0:
        raise ValueError("x and y are uncorrelated (Sxy = 0): the Deming slope is undefined")
    root = math.sqrt((u - lam * q) ** 2 + 4 * lam * p * p)
    if lam * q - u >= 0:
        return (lam * q - u + root) / (2 * lam * p)
    return 2 * p / (u - lam * q + root)


def _deming_fit(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[float, float]:
    xm, ym = x.mean(), y.mean()
    dx, dy = x - xm, y - ym
    b1 = _deming_slope(float(dx @ dx), float(dy @ dy), float(dx @ dy), lam)
    return float(ym - b1 * xm), b1


def _deming_slopes(u: np.ndarray, q: np.ndarray, p: np.ndarray, lam: float) -> np.ndarray:
    """:func:`_deming_slope` elementwise (the same two forms, chosen per element)."""
    if np.any(p == 0):
        raise ValueError("x and y are uncorrelated (Sxy = 0) without some pair: the Deming slope is undefined")
    root = np.sqrt((u - lam * q) ** 2 + 4 * lam * p * p)
    a = lam * q - u
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a >= 0, (a + root) / (2 * lam * p), 2 * p / (root - a))


def _wdeming_step(x: np.ndarray, y: np.ndarray, lam: float, b0: float, b1: float) -> tuple[float, float]:
    """One reweighting of :func:`_wdeming_fit`: weights from the line (b0, b1), then weighted Deming."""
    d = y - (b0 + b1 * x)
    k = 1.0 + lam * b1 * b1
    xhat = x + lam * b1 * d / k
    yhat = y - d / k
    w = 1.0 / ((xhat + lam * yhat) / (1.0 + lam)) ** 2
    xw, yw = float(w @ x / w.sum()), float(w @ y / w.sum())
    dx, dy = x - xw, y - yw
    new_b1 = _deming_slope(float(w @ (dx * dx)), float(w @ (dy * dy)), float(w @ (dx * dy)), lam)
    return yw - new_b1 * xw, new_b1


def _wdeming_fit(
    x: np.ndarray, y: np.ndarray, lam: float, iter_max: int, threshold: float, convergence: str
) -> tuple[float, float, int, bool]:
    """Linnet's (1990) iteratively reweighted Deming fit for a constant CV, as mcr's C ``calc_Deming``.

    Start from unweighted Deming. Each step: d = y − (b0 + b1 x), x̂ = x + λ b1 d / (1 + λ b1²),
    ŷ = y − d / (1 + λ b1²), w = 1 / ((x̂ + λ ŷ) / (1 + λ))², then Deming on w-weighted means and
    sums of squares. Stop when |Δb1| < threshold and |Δb0| < threshold · s, with s = mean(y) for
    ``convergence="relative"`` and s = 1 for ``"absolute"`` (mcr), or after ``iter_max`` steps.
    The count returned is the number of refits.
    """
    b0, b1 = _deming_fit(x, y, lam)
    b0_tol = threshold * (float(y.mean()) if convergence == "relative" else 1.0)
    for i in range(iter_max):
        new_b0, new_b1 = _wdeming_step(x, y, lam, b0, b1)
        done = abs(b1 - new_b1) < threshold and abs(b0 - new_b0) < b0_tol
        b0, b1 = new_b0, new_b1
        if done:
            return b0, b1, i + 1, True
    return b0, b1, iter_max, False


def _jackknife_se(est: np.ndarray | float, jack: np.ndarray) -> np.ndarray:
    """Jackknife SE along axis 0: sd of the pseudo-values n·est − (n − 1)·jack, divided by sqrt(n)."""
    n = jack.shape[0]
    pseudo = n * np.asarray(est) - (n - 1) * jack
    return pseudo.std(axis=0, ddof=1) / math.sqrt(n)


def _without(a: np.ndarray, i: int) -> np.ndarray:
    return np.concatenate((a[:i], a[i + 1 :]))


def _deming_jackknife(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out Deming fits in O(n) from the sums (exact: the same fits as n refits).

    Without pair i: x̄_(−i) = x̄ − (x_i − x̄)/(n − 1), S_xx(−i) = S_xx − n/(n − 1) · (x_i − x̄)²,
    S_yy(−i) and S_xy(−i) alike (the downdating form of Welford's update; Chan, Golub & LeVeque,
    Am Stat 37:242–247, 1983), then the Deming slope of those sums. Where a sum of squares loses more
    than four digits to the subtraction (a point carrying nearly all of S_xx or S_yy), that fit is
    recomputed from the data instead.
    """
    n = x.size
    xm, ym = x.mean(), y.mean()
    dx, dy = x - xm, y - ym
    sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
    f = n / (n - 1)
    u, q, p = sxx - f * dx * dx, syy - f * dy * dy, sxy - f * dx * dy
    refit = np.flatnonzero((u < 1e-4 * sxx) | (q < 1e-4 * syy))
    for i in refit:  # at most a few: the points that hold nearly all of a sum of squares
        xi, yi = _without(x, int(i)), _without(y, int(i))
        if np.ptp(xi) == 0:
            raise ValueError(f"without pair {i} all x values are equal: the jackknife is undefined")
        ddx, ddy = xi - xi.mean(), yi - yi.mean()
        u[i], q[i], p[i] = ddx @ ddx, ddy @ ddy, ddx @ ddy
    b1 = _deming_slopes(u, q, p, lam)
    b0 = (ym - dy / (n - 1)) - b1 * (xm - dx / (n - 1))
    for i in refit:
        b0[i], b1[i] = _deming_fit(_without(x, int(i)), _without(y, int(i)), lam)
    return b0, b1


# Weighted-Deming jackknife at large n: order of the expansion of the weights, and the bound on the
# relative truncation error of the weighted sums above which a leave-one-out fit is done directly.
_TAYLOR_ORDER: Final[int] = 6
_TAYLOR_TOLERANCE: Final[float] = 1e-13
# Leave-one-out fixed points: stop when both coefficients move by less than this (relative).
_LOO_TOLERANCE: Final[float] = 1e-13
_LOO_ITER_MAX: Final[int] = 100


def _weight_line(b0: np.ndarray | float, b1: np.ndarray | float, lam: float) -> tuple[Any, Any, Any]:
    """(α, β, γ) with (x̂ + λŷ)/(1 + λ) = α x + β y + γ for the line (b0, b1) (the weights' base).

    With d = y − b0 − b1 x and g = λ(b1 − 1)/(1 + λ b1²): x̂ + λŷ = x + λy + g·d, so
    α = (1 − g b1)/(1 + λ), β = (λ + g)/(1 + λ), γ = −g b0/(1 + λ).
    """
    g = lam * (b1 - 1.0) / (1.0 + lam * b1 * b1)
    return (1.0 - g * b1) / (1.0 + lam), (lam + g) / (1.0 + lam), -g * b0 / (1.0 + lam)


def _monomials(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Exponents (m, 3) of every monomial in 3 variables of degree <= order, and the coefficient of
    each in Σ_k (k + 1)(−1)^k (a·z)^k, i.e. (k + 1)(−1)^k · k!/(e1! e2! e3!)."""
    exps, coefs = [], []
    for k in range(order + 1):
        for e1 in range(k + 1):
            for e2 in range(k - e1 + 1):
                e3 = k - e1 - e2
                exps.append((e1, e2, e3))
                multinomial = math.factorial(k) // (math.factorial(e1) * math.factorial(e2) * math.factorial(e3))
                coefs.append((k + 1) * (-1) ** k * multinomial)
    return np.array(exps), np.array(coefs, dtype=float)


def _powers(v: np.ndarray, exps: np.ndarray) -> np.ndarray:
    """v (m, 3) raised to every exponent row: (m, len(exps))."""
    p = [np.ones(v.shape[0]), v[:, 0], v[:, 1], v[:, 2]]
    cache: dict[tuple[int, int], np.ndarray] = {}

    def pw(c: int, e: int) -> np.ndarray:
        if e == 0:
            return p[0]
        if (c, e) not in cache:
            cache[(c, e)] = p[c + 1] ** e
        return cache[(c, e)]

    return np.column_stack([pw(0, e1) * pw(1, e2) * pw(2, e3) for e1, e2, e3 in exps])


def _wdeming_loo_direct(
    x: np.ndarray, y: np.ndarray, lam: float, b0: float, b1: float, scale: float
) -> tuple[float, float, bool]:
    """The weighted-Deming fixed point of (x, y), iterated from (b0, b1) to the tight tolerance."""
    for _ in range(_LOO_ITER_MAX):
        nb0, nb1 = _wdeming_step(x, y, lam, b0, b1)
        done = abs(nb1 - b1) <= _LOO_TOLERANCE * max(1.0, abs(nb1)) and abs(nb0 - b0) <= _LOO_TOLERANCE * scale
        b0, b1 = nb0, nb1
        if done:
            return b0, b1, True
    return b0, b1, False


def _wdeming_jackknife_large(
    x: np.ndarray, y: np.ndarray, lam: float, b0: float, b1: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Leave-one-out weighted-Deming fits without n refits: O(n) per iteration for all of them.

    Each leave-one-out fit is the fixed point of the reweighting step on the data without pair i,
    started from the full-data line θ = (b0, b1) and iterated until both coefficients move by less
    than 1e-13 (relative). A step needs the six weighted sums Σ_(j≠i) w_j(θ_i) m_j, m = (1, x, y,
    x², y², xy) (centred), with w_j = 1/c_j², c_j = α x_j + β y_j + γ (:func:`_weight_line`). With
    c*_j the value at the full-data line and r_j = (c_j − c*_j)/c*_j, 1/c_j² = (1/c*_j²) Σ_k (k + 1)(−r_j)^k,
    and r_j is linear in (Δα, Δβ, Δγ), so each sum is a polynomial in (Δα, Δβ, Δγ) whose coefficients
    are O(n) sums computed once (order 6, 84 monomials); the term j = i is subtracted exactly. The
    truncation error is bounded by 8 R⁷/(1 − R), R = max_j |r_j| (bounded from the largest |x|/c*,
    |y|/c*, 1/c*); a fit whose bound exceeds 1e-13 is iterated on its data directly instead.

    Sources: Linnet (1990) for the fit; the expansion is plain Taylor series of 1/c².
    """
    n = x.size
    scale = abs(float(y.mean())) or 1.0
    a_c, b_c, g_c = _weight_line(b0, b1, lam)
    c = a_c * x + b_c * y + g_c
    w = 1.0 / (c * c)
    xc, yc = float(w @ x / w.sum()), float(w @ y / w.sum())
    xt, yt = x - xc, y - yc
    m = np.column_stack([np.ones(n), xt, yt, xt * xt, yt * yt, xt * yt])
    zeta = np.column_stack([xt / c, yt / c, 1.0 / c])
    zmax = np.abs(zeta).max(axis=0)
    exps, coefs = _monomials(_TAYLOR_ORDER)
    chunk = 16384
    wm = w[:, None] * m
    tensor = np.zeros((6, exps.shape[0]))
    for s in range(0, n, chunk):
        tensor += wm[s : s + chunk].T @ _powers(zeta[s : s + chunk], exps)
    tensor *= coefs[None, :]
    gp_c = g_c + a_c * xc + b_c * yc  # c = α xt + β yt + γ' with γ' = γ + α xc + β yc

    b0j, b1j = np.full(n, float(b0)), np.full(n, float(b1))
    done = np.zeros(n, dtype=bool)
    for _ in range(_LOO_ITER_MAX):
        a, b, g = _weight_line(b0j, b1j, lam)
        delta = np.column_stack([a - a_c, b - b_c, g + a * xc + b * yc - gp_c])
        sums = np.empty((n, 6))
        for s in range(0, n, chunk):
            sums[s : s + chunk] = _powers(delta[s : s + chunk], exps) @ tensor.T
        own = a * x + b * y + g
        sums -= m / (own * own)[:, None]
        wsum = sums[:, 0]
        mx, my = sums[:, 1] / wsum, sums[:, 2] / wsum
        u = sums[:, 3] - wsum * mx * mx
        q = sums[:, 4] - wsum * my * my
        p = sums[:, 5] - wsum * mx * my
        nb1 = _deming_slopes(u, q, p, lam)
        nb0 = (my + yc) - nb1 * (mx + xc)
        done = (np.abs(nb1 - b1j) <= _LOO_TOLERANCE * np.maximum(1.0, np.abs(nb1))) & (
            np.abs(nb0 - b0j) <= _LOO_TOLERANCE * scale
        )
        b0j, b1j = nb0, nb1
        if done.all():
            break
    a, b, g = _weight_line(b0j, b1j, lam)
    r = np.abs(np.column_stack([a - a_c, b - b_c, g + a * xc + b * yc - gp_c])) @ zmax
    with np.errstate(divide="ignore", over="ignore"):
        bound = np.where(r < 1, (_TAYLOR_ORDER + 2) * r ** (_TAYLOR_ORDER + 1) / (1 - r), np.inf)
    direct = np.flatnonzero((bound > _TAYLOR_TOLERANCE) | ~np.isfinite(b1j) | ~np.isfinite(b0j))
    done[direct] = True
    for i in direct:  # fits whose expansion is not accurate enough (small n, extreme points)
        b0j[i], b1j[i], done[i] = _wdeming_loo_direct(_without(x, int(i)), _without(y, int(i)), lam, b0, b1, scale)
    return b0j, b1j, int((~done).sum())


def _jackknife_result(
    x: np.ndarray,
    y: np.ndarray,
    alpha: float,
    error_ratio: float,
    weighted: bool,
    iter_max: int,
    threshold: float,
    convergence: str,
    algorithm: Algorithm,
) -> DemingResult:
    n = x.size
    large = weighted and (algorithm == "large" or (algorithm == "auto" and n > LARGE_N))
    not_converged = 0
    if weighted:
        b0, b1, iterations, converged = _wdeming_fit(x, y, error_ratio, iter_max, threshold, convergence)
        if large:
            b0j, b1j, not_converged = _wdeming_jackknife_large(x, y, error_ratio, b0, b1)
        else:
            b0j, b1j = np.empty(n), np.empty(n)
            for i in range(n):
                xi, yi = _without(x, i), _without(y, i)
                if np.ptp(xi) == 0:
                    raise ValueError(f"without pair {i} all x values are equal: the jackknife is undefined")
                b0j[i], b1j[i], _, ok = _wdeming_fit(xi, yi, error_ratio, iter_max, threshold, convergence)
                not_converged += not ok
    else:
        (b0, b1), iterations, converged = _deming_fit(x, y, error_ratio), 1, True
        b0j, b1j = _deming_jackknife(x, y, error_ratio)
    se_b0, se_b1 = (float(v) for v in _jackknife_se(np.array([b0, b1]), np.column_stack([b0j, b1j])))
    t = float(stats.t.ppf(1 - alpha / 2, n - 2))
    conventions = [
        "error_ratio = sigma_x^2 / sigma_y^2 (reference over test; mcr's error.ratio)",
        "jackknife CI centred on the full-data estimate, t quantile with n - 2 degrees of freedom (mcr "
        "mc.calcLinnetCI; Tukey's jackknife interval would use n - 1)",
    ]
    if weighted:
        scale = "mean(y)" if convergence == "relative" else "1 (absolute, as mcr)"
        conventions.append(
            f"weights 1 / ((x_hat + lambda y_hat) / (1 + lambda))^2; stop when |delta b1| < {threshold:g} and "
            f"|delta b0| < {threshold:g} * {scale}, or after {iter_max} iterations"
        )
        conventions.append(
            "leave-one-out fits: the reweighting fixed point without each pair, from the full-data line to "
            "1e-13 (relative), with the weighted sums expanded to order 6 around the full-data weights (large n)"
            if large
            else "leave-one-out fits: refitted from unweighted Deming with the same stopping rule (mcr)"
        )
    else:
        conventions.append("leave-one-out fits from the downdated sums of squares (exact; no refits)")
    return DemingResult(
        method="WDeming" if weighted else "Deming",
        n=n,
        alpha=alpha,
        intercept=b0,
        slope=b1,
        intercept_se=se_b0,
        slope_se=se_b1,
        intercept_ci=(b0 - t * se_b0, b0 + t * se_b0),
        slope_ci=(b1 - t * se_b1, b1 + t * se_b1),
        ci_method="jackknife",
        conventions=tuple(conventions),
        error_ratio=error_ratio,
        weighted=weighted,
        iterations=iterations,
        converged=converged,
        jackknife_not_converged=not_converged,
        jackknife_intercepts=tuple(float(v) for v in b0j),
        jackknife_slopes=tuple(float(v) for v in b1j),
        algorithm="large" if large else "exact",
    )


def _check_error_ratio(error_ratio: float) -> None:
    if not (isinstance(error_ratio, int | float) and math.isfinite(error_ratio) and error_ratio > 0):
        raise ValueError(f"error_ratio must be a positive finite number (sigma_x^2 / sigma_y^2), got {error_ratio!r}")


def deming(
    x: object, y: object, error_ratio: float = 1.0, alpha: float = 0.05, *, algorithm: Algorithm = "auto"
) -> DemingResult:
    """Deming regression with jackknife (leave-one-out) CIs.

    With λ = ``error_ratio`` = σx² / σy² (variance of the reference method's error over the test
    method's; 1 means equal imprecision), u = Sxx, q = Syy, p = Sxy:
    b1 = (λq − u + sqrt((u − λq)² + 4λp²)) / (2λp), b0 = ȳ − b1 x̄.

    CIs (Linnet 1993, as mcr ``method.ci="jackknife"``): the fit without each pair i, pseudo-values
    P_i = n·b − (n − 1)·b_(−i), SE = sd(P) / sqrt(n), CI = b ± t(1 − alpha/2, n − 2) · SE.
    The n leave-one-out fits come from the downdated sums of squares in O(n) (:func:`_deming_jackknife`),
    the same fits as n refits (O(n²)) to rounding, at every n (``algorithm`` is accepted for a uniform
    signature and changes nothing here).
    Convention: mcr centres the CI on the full-data estimate b (not on mean(P)) and uses n − 2
    degrees of freedom, where Tukey's jackknife t interval uses n − 1. We follow mcr: the reference
    cases pin n − 2 (n − 1 would move the TD15 slope limit by 4.6e-5, relative).

    Sources: Deming (1943); Linnet K., Clin Chem 39:424–432 (1993); mcr ``mc.deming``,
    ``mc.calcLinnetCI``; CLSI EP09c (Deming regression).
    """
    _check_alpha(alpha)
    _check_error_ratio(error_ratio)
    _check_algorithm(algorithm)
    x, y = paired_arrays(x, y)
    _check_spread(x, "x")
    _check_spread(y, "y")
    return _jackknife_result(
        x,
        y,
        alpha,
        float(error_ratio),
        weighted=False,
        iter_max=1,
        threshold=0.0,
        convergence="absolute",
        algorithm=algorithm,
    )


def weighted_deming(
    x: object,
    y: object,
    error_ratio: float = 1.0,
    alpha: float = 0.05,
    *,
    iter_max: int = 30,
    threshold: float = 1e-6,
    convergence: Literal["relative", "absolute"] = "relative",
    algorithm: Algorithm = "auto",
) -> DemingResult:
    """Weighted Deming regression for a constant coefficient of variation, jackknife CIs.

    Linnet (1990): the error SDs are proportional to the true concentration, so each pair gets the
    weight 1 / c_i², with c_i = (x̂_i + λ ŷ_i) / (1 + λ) estimated from the current line (x̂, ŷ: the
    Deming estimates of the true values; λ = ``error_ratio`` = σx² / σy² as in :func:`deming`).
    Starting from unweighted Deming, the line is refitted with weighted means and sums of squares
    until |Δb1| < ``threshold`` and |Δb0| < ``threshold`` · mean(y), or ``iter_max`` refits have run
    (mcr's defaults: 1e-6 and 30); ``converged`` says which. The jackknife refits every
    leave-one-out subset the same way; CIs as in :func:`deming` (t with n − 2 df, centred on the
    full-data estimate).

    Convention (``convergence``): mcr compares |Δb0| with the absolute ``threshold``
    (``"absolute"``), so the number of refits depends on the unit of measurement: on mcr's case TD13
    (TD9 × 1e12) it takes 8 refits where TD9 takes 4, and lands 5e-7 (relative) away from the
    reference intercept, which matches the 4-refit answer. ``"relative"`` (default) scales the
    intercept tolerance by mean(y): unit-free, identical to mcr on TD9 and TD15, and reproduces the
    point estimates of all three reference cases to ~1e-12.

    Large n (``algorithm``): ``"exact"`` refits every leave-one-out subset as mcr does, O(n²) time
    (and each refit stops at ``threshold``, so at large n the pseudo-values, which multiply the
    leave-one-out change by n − 1, carry n − 1 times that stopping error); ``"large"`` solves every
    leave-one-out fit to its fixed point (1e-13, relative) in O(n) per iteration for all of them
    together, expanding the weights around the full-data line (:func:`_wdeming_jackknife_large`).
    ``"auto"`` (default) uses ``"large"`` above :data:`LARGE_N` = 2,000 pairs. The point estimates are
    the same for both. Tolerance: against refits run to convergence (``threshold`` 1e-14) the
    leave-one-out estimates agree to 1e-9 (relative), tested on random data.

    Needs positive x and y (mcr: "not available for non-positive values").

    Sources: Linnet K., Stat Med 9:1463–1473 (1990) and Clin Chem 39:424–432 (1993); mcr
    ``mc.wdemingConstCV`` (C ``calc_Deming``, mode 1); CLSI EP09c (weighted Deming).
    """
    _check_alpha(alpha)
    _check_error_ratio(error_ratio)
    if not (isinstance(iter_max, int) and iter_max >= 1):
        raise ValueError(f"iter_max must be a positive integer, got {iter_max!r}")
    if not (isinstance(threshold, int | float) and threshold >= 0):
        raise ValueError(f"threshold must be a non-negative number, got {threshold!r}")
    if convergence not in ("relative", "absolute"):
        raise ValueError(f"convergence must be 'relative' or 'absolute' (mcr), got {convergence!r}")
    _check_algorithm(algorithm)
    x, y = paired_arrays(x, y, domain="positive")
    _check_spread(x, "x")
    _check_spread(y, "y")
    return _jackknife_result(
        x,
        y,
        alpha,
        float(error_ratio),
        weighted=True,
        iter_max=iter_max,
        threshold=threshold,
        convergence=convergence,
        algorithm=algorithm,
    )


# --------------------------------------------------------------------------------------------
# Passing–Bablok
# --------------------------------------------------------------------------------------------


def _sorted_pairwise_angles(x: np.ndarray, y: np.ndarray, positive: bool) -> np.ndarray:
    """Sorted atan of every pairwise slope (y_j − y_i) / (x_j − x_i), i < j (the quadratic algorithm).

    Pairs with equal x and different y get +π/2 (−π/2 for a negative correlation), as in mcr and
    Passing & Bablok (1983); pairs equal in both x and y carry no slope and are dropped.
    """
    i, j = np.triu_indices(x.size, k=1)
    dx, dy = mcr_diff(x[j], x[i]), mcr_diff(y[j], y[i])
    del i, j
    vertical = dx == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ang = np.arctan(dy / np.where(vertical, 1.0, dx))
    ang[vertical] = math.pi / 2 if positive else -math.pi / 2
    ang = ang[~(vertical & (dy == 0))]
    ang.sort()
    return ang


_EVEN_MEDIAN = {"angle": "tan of the mean angle (mcr)", "slope": "mean of the two slopes (Passing & Bablok 1983)"}


def _order_stat(angle_at: Callable[[int], float], index2: int, even_median: str) -> float:
    """Slope at the doubled 1-based index ``index2``: odd → one order statistic, even → the mean of
    the two neighbours, taken on the angle scale (``"angle"``, mcr) or the slope scale (``"slope"``).
    ``angle_at(r)`` is the r-th smallest angle (1-based)."""
    half = (index2 + 1) // 2
    if index2 % 2 == 1:
        return math.tan(angle_at(half))
    lo, hi = angle_at(half), angle_at(half + 1)
    if even_median == "angle":
        return math.tan((lo + hi) / 2)
    return (math.tan(lo) + math.tan(hi)) / 2


def passing_bablok(
    x: object,
    y: object,
    alpha: float = 0.05,
    *,
    even_median: Literal["angle", "slope"] = "angle",
    algorithm: Algorithm = "auto",
) -> PassingBablokResult:
    """Passing–Bablok regression with the analytical CI and the CUSUM linearity test.

    Slope (Passing & Bablok 1983): S_ij = (y_j − y_i) / (x_j − x_i) over all pairs i < j; pairs with
    x_i = x_j and y_i ≠ y_j count as +∞, pairs equal in x and y are dropped; slopes of exactly −1
    carry no information about the sign and are discounted. With N the number of slopes other than
    −1 and K the number below −1, b1 is the median of the sorted slopes shifted by K:
    S_((N+1)/2 + K) for odd N, the mean of S_(N/2 + K) and S_(N/2 + K + 1) for even N.
    (For a negative Kendall tau the roles of −1/+1 swap and the shift is −K', K' = slopes above +1.)

    mcr keeps the slopes equal to −1 in the sorted array and doubles every index, which is the same
    shifted median. Equal x: mcr treats |x_j − x_i| < 1e-12 · mean(|x_i|, |x_j|) as equal (same for y).

    CI of the slope (P&B 1983, as mcr's analytical CI): C = z(1 − alpha/2) · sqrt(n (n − 1)(2n + 5) / 18)
    with n the number of pairs (samples); doubled lower/upper indices round(N_all − C + 2K + m) and
    round(N_all + C + 2K + m) (N_all: all slopes incl. the m equal to −1; R's round-half-even), each
    read as an order statistic or the mean of two, like the median. P&B round (N − C)/2 instead and
    never average; mcr's reading reproduces the reference results. A bound that falls outside the
    slopes is −∞ / +∞.

    Intercept: b0 = median(y − b1 x); CI: [median(y − b1_U x), median(y − b1_L x)] (P&B 1983, mcr).
    Medians of an even count average the two middle values.

    Convention that matters at 1e-6 (``even_median``): for an even count, mcr averages the two middle
    *angles* atan(S) and takes tan of the mean (``"angle"``, the default, matches mcr's reference
    cases); the paper averages the two *slopes* (``"slope"``). The same rule is used for the CI bounds.

    Large n (``algorithm``): ``"exact"`` sorts all n(n − 1)/2 slopes (memory O(n²): 1.35 GiB at
    n = 6,000); ``"large"`` selects the same order statistics from the implicit set of slopes in
    O(n log n) memory and O(n log² n) expected time (:class:`~wbcv.validation.pairwise_slopes.PairwiseSlopes`:
    slopes below a value counted as inversions, randomized narrowing, the last ≤ 1,000,000 listed
    and their angles computed as ``"exact"`` does). ``"auto"`` (default) uses ``"large"`` above
    :data:`LARGE_N` = 2,000 pairs. Tolerance: the two give the same order statistics (equal results)
    except for slopes within 1e-9 (relative) of each other or of −1 that floating point orders
    differently; the tests check equality on the mcr cases and on random data with ties, slopes of
    −1 and equal x, and a relative difference below 1e-12 on rounded decimal data. (mcr's own
    large-n method, ``PaBaLarge``, bins the slopes instead and is approximate.)

    Requires non-negative x and y (as mcr) and spread in both. The CUSUM test is
    :func:`cusum_linearity` on the fitted line. ``bias_at`` gives point estimates only: neither P&B nor
    mcr define an analytical CI for the bias of Passing–Bablok.

    Sources: Passing H., Bablok W., J Clin Chem Clin Biochem 21:709–720 (1983); mcr ``mc.paba``
    and C ``calcAngleMat``; CLSI EP09c (Passing–Bablok); for ``"large"`` the sources in
    :mod:`wbcv.validation.pairwise_slopes`.
    """
    _check_alpha(alpha)
    if even_median not in ("angle", "slope"):
        raise ValueError(f"even_median must be 'angle' (mcr) or 'slope' (Passing & Bablok 1983), got {even_median!r}")
    _check_algorithm(algorithm)
    x, y = paired_arrays(x, y, domain="nonnegative")
    _check_spread(x, "x")
    _check_spread(y, "y")
    n = x.size
    positive = bool(stats.kendalltau(x, y).statistic >= 0)
    quarter = math.pi / 4
    large = algorithm == "large" or (algorithm == "auto" and n > LARGE_N)
    angle_at: Callable[[int], float]
    if large:
        slopes = PairwiseSlopes(x, y, positive)
        n_all = slopes.n_all
        below, m = slopes.count_around(-1.0 if positive else 1.0)
        # positive: K = slopes below -1; negative: K' = slopes above +1 (the vertical ones are -pi/2)
        k = below if positive else slopes.n_finite - below - m
        angle_at = slopes.angle_at
    else:
        ang = _sorted_pairwise_angles(x, y, positive)
        n_all = ang.size
        if positive:
            k, m = int((ang < -quarter).sum()), int((ang == -quarter).sum())
        else:
            k, m = int((ang > quarter).sum()), int((ang == quarter).sum())

        def angle_at(rank: int) -> float:
            return float(ang[rank - 1])

    offset2 = 2 * k + m if positive else -(2 * k + m)
    median2 = n_all + offset2
    if not 1 <= median2 <= 2 * n_all - 1:
        raise ValueError("the shifted median falls outside the pairwise slopes: Passing–Bablok is undefined here")
    slope = _order_stat(angle_at, median2, even_median)

    c = stats.norm.ppf(1 - alpha / 2) * math.sqrt(n * (n - 1) * (2 * n + 5) / 18)
    lo2, hi2 = int(np.rint(n_all - c + offset2)), int(np.rint(n_all + c + offset2))
    slope_lo = -math.inf if lo2 < 2 * m + 1 else _order_stat(angle_at, lo2, even_median)
    slope_hi = math.inf if hi2 > 2 * n_all - 1 else _order_stat(angle_at, hi2, even_median)

    intercept = float(np.median(mcr_diff(y, slope * x)))
    icpt_lo = float(np.median(mcr_diff(y, slope_hi * x))) if math.isfinite(slope_hi) else -math.inf
    icpt_hi = float(np.median(mcr_diff(y, slope_lo * x))) if math.isfinite(slope_lo) else math.inf

    return PassingBablokResult(
        method="PassingBablok",
        n=n,
        alpha=alpha,
        intercept=intercept,
        slope=slope,
        intercept_se=math.nan,
        slope_se=math.nan,
        intercept_ci=(icpt_lo, icpt_hi),
        slope_ci=(slope_lo, slope_hi),
        ci_method="analytical",
        conventions=(
            f"even-count median of slopes: {_EVEN_MEDIAN[even_median]}",
            "slopes of exactly -1 kept in the sorted array with doubled indices (mcr); equal to discarding them",
            "pairs with equal x (relative difference < 1e-12) and different y: slope +inf (-inf if tau < 0)",
            "CI indices: doubled, round-half-even, averaged like the median (mcr; P&B round (N - C)/2)",
            "z = normal quantile 1 - alpha/2 (1.959964 for alpha = 0.05)",
            "intercept and its CI: median(y - b x) with the slope's CI bounds swapped (P&B, mcr)",
            "order statistics selected without storing the slopes (O(n log n) memory; same order statistics "
            "as sorting them)"
            if large
            else "order statistics read from all n(n - 1)/2 slopes, sorted",
        ),
        n_slopes=n_all,
        shift_k=k,
        n_minus_one=m,
        positive_correlation=positive,
        even_median=even_median,
        algorithm="large" if large else "exact",
        linearity=cusum_linearity(x, y, intercept, slope, alpha),
    )


def cusum_linearity(x: object, y: object, intercept: float, slope: float, alpha: float = 0.05) -> LinearityTest:
    """CUSUM test for a linear relation around the line y = intercept + slope · x (Passing & Bablok 1983).

    Residuals r_i = y_i − intercept − slope · x_i; with l points above the line (r > 0) and L below
    (r < 0), score +sqrt(L/l) above, −sqrt(l/L) below, 0 on the line (the scores sum to 0). The
    points are ordered by their projection onto the line, D_i = (x_i + slope·(y_i − intercept)) /
    sqrt(1 + slope²) (mcr writes (y + x/b − a) / sqrt(1 + 1/b²), the same for b > 0; this form also
    holds at b = 0), and cusum_k is the running sum of scores in that order (stable sort for ties).
    Statistic H = max |cusum| / sqrt(L + 1); linearity is rejected if H > h(1 − alpha), the
    Kolmogorov distribution quantile (scipy ``kstwobign``; P&B's table: 1.36 at alpha = 0.05).

    Sources: Passing & Bablok (1983), linearity test; mcr ``calcCUSUM`` (max.cusum, nNeg).
    """
    _check_alpha(alpha)
    x, y = paired_arrays(x, y)
    if not (math.isfinite(intercept) and math.isfinite(slope)):
        raise ValueError(f"intercept and slope must be finite, got {intercept!r} and {slope!r}")
    res = y - intercept - x * slope
    n_pos, n_neg = int((res > 0).sum()), int((res < 0).sum())
    up = math.sqrt(n_neg / n_pos) if n_pos else 0.0
    down = math.sqrt(n_pos / n_neg) if n_neg else 0.0
    score = np.where(res > 0, up, np.where(res < 0, -down, 0.0))
    d = (x + slope * (y - intercept)) / math.sqrt(1 + slope * slope)
    cusum = np.cumsum(score[np.argsort(d, kind="stable")])
    max_cusum = float(np.abs(cusum).max())
    h = max_cusum / math.sqrt(n_neg + 1)
    crit = float(stats.kstwobign.ppf(1 - alpha))
    return LinearityTest(
        max_cusum=max_cusum,
        cusum=tuple(float(v) for v in cusum),
        n_positive=n_pos,
        n_negative=n_neg,
        statistic=h,
        critical_value=crit,
        p_value=float(stats.kstwobign.sf(h)),
        alpha=alpha,
        rejected=bool(h > crit),
    )
