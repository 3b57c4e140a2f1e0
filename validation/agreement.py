"""Agreement statistics: coverage of an allowable error, Bland–Altman, concordance and correlation.

Conventions shared by every function here:

* ``errors_pct`` are relative errors in percent, 100 · (test − reference) / reference, one per
  sample (README, "Domain facts"); samples whose reference is zero must be excluded or judged by an absolute
  criterion *before* calling these functions — a NaN here raises, it is never dropped silently.
* ``confidence`` is the two-sided confidence level of every interval (0.95 → 95 %).
* Results are frozen dataclasses; invalid input raises ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from scipy import stats

from wbcv.validation.regression import paired_arrays

__all__ = [
    "BlandAltmanResult",
    "ConcordanceResult",
    "CorrelationResult",
    "CoverageErrorResult",
    "CoverageResult",
    "ProportionCI",
    "bland_altman",
    "clopper_pearson",
    "coverage",
    "coverage_error",
    "lins_ccc",
    "pearson",
    "spearman",
]

# |error| quantile convention: the smallest error e with  #{|error_i| <= e} / n >= coverage.
_QUANTILE_METHOD: Final = "inverted_cdf"
# Bootstrap replicates are drawn in blocks of at most this many values (memory bound).
_BOOT_BLOCK_VALUES = 2_000_000


def _check_level(value: float, name: str) -> None:
    if not (isinstance(value, int | float) and 0 < value < 1):
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _errors(errors_pct: object) -> np.ndarray:
    e = np.asarray(errors_pct, dtype=float)
    if e.ndim != 1:
        raise ValueError(f"errors_pct must be one-dimensional, got shape {e.shape}")
    if e.size == 0:
        raise ValueError("errors_pct is empty: at least one sample is needed")
    bad = np.flatnonzero(~np.isfinite(e))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"errors_pct[{i}] is {e[i]}: NaN/infinite errors are not allowed (a zero reference makes the "
            f"relative error undefined; exclude such samples with a reason or judge them on an absolute limit)"
        )
    return e


# --------------------------------------------------------------------------------------------
# proportions and coverage
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProportionCI:
    """k successes out of n with the exact (Clopper–Pearson) two-sided interval."""

    k: int
    n: int
    estimate: float
    lower: float
    upper: float
    confidence: float


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> ProportionCI:
    """Exact binomial confidence interval for k successes in n trials.

    lower = B(α/2; k, n − k + 1) (0 if k = 0), upper = B(1 − α/2; k + 1, n − k) (1 if k = n), with
    B(q; a, b) the beta quantile and α = 1 − confidence. Guaranteed coverage ≥ confidence for every
    true proportion (conservative). 95 of 100 → 0.8872–0.9836.

    Source: Clopper C.J., Pearson E.S., Biometrika 26:404–413 (1934).
    """
    _check_level(confidence, "confidence")
    if not (_is_int(k) and _is_int(n)):
        raise ValueError(f"k and n must be integers, got {k!r} and {n!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in 0..n = 0..{n}, got {k}")
    a = 1.0 - confidence
    lower = 0.0 if k == 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    upper = 1.0 if k == n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return ProportionCI(k=int(k), n=int(n), estimate=k / n, lower=lower, upper=upper, confidence=confidence)


@dataclass(frozen=True)
class CoverageResult:
    """Fraction of samples with |error| <= limit, with its Clopper–Pearson interval."""

    limit_pct: float
    n: int
    n_within: int
    fraction: float
    lower: float
    upper: float
    confidence: float


def coverage(errors_pct: object, limit_pct: float, confidence: float = 0.95) -> CoverageResult:
    """Fraction of samples whose relative error lies within ±``limit_pct`` (boundary included).

    fraction = #{|e_i| <= limit} / n, CI: :func:`clopper_pearson` of that count. The acceptance
    criterion of the source study is "at least 95 % of samples within ±10 %" (README, "Domain facts"); the
    protocol decides whether the point estimate or the lower bound must reach it.
    """
    e = _errors(errors_pct)
    if not (isinstance(limit_pct, int | float) and math.isfinite(limit_pct) and limit_pct >= 0):
        raise ValueError(f"limit_pct must be a finite number >= 0, got {limit_pct!r}")
    k = int(np.count_nonzero(np.abs(e) <= limit_pct))
    ci = clopper_pearson(k, e.size, confidence)
    return CoverageResult(
        limit_pct=float(limit_pct),
        n=e.size,
        n_within=k,
        fraction=ci.estimate,
        lower=ci.lower,
        upper=ci.upper,
        confidence=confidence,
    )


@dataclass(frozen=True)
class CoverageErrorResult:
    """The error that covers a given fraction of samples, with a percentile-bootstrap interval."""

    coverage: float
    error_pct: float
    lower: float
    upper: float
    confidence: float
    n: int
    n_boot: int
    seed: int
    quantile_method: str


def _abs_error_quantile(abs_e: np.ndarray, q: float) -> np.ndarray:
    """Quantile along the last axis with the 'inverted_cdf' rule (Hyndman & Fan type 1)."""
    return np.quantile(abs_e, q, axis=-1, method=_QUANTILE_METHOD)


def coverage_error(
    errors_pct: object, coverage: float = 0.95, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> CoverageErrorResult:
    """The error that covers ``coverage`` of the samples (the blue line of the verification plot).

    error = the smallest |e_(i)| such that at least ``coverage`` · n samples have |error| <= it, i.e.
    the empirical quantile of |error| with numpy's ``method="inverted_cdf"`` (Hyndman & Fan 1996
    type 1: order statistic ⌈coverage · n⌉). It always covers at least the requested fraction, unlike
    interpolating rules ('linear' can fall between two samples and cover fewer).

    CI: percentile bootstrap (Efron & Tibshirani 1993, ch. 13) — ``n_boot`` resamples of the n errors
    with replacement (``numpy.random.default_rng(seed)``, so the result is deterministic for a seed),
    the same quantile in each, then the α/2 and 1 − α/2 quantiles of the replicates (numpy 'linear').
    With few samples the upper tail is poorly resolved (the bootstrap cannot exceed the largest
    observed error); read the interval as descriptive.
    """
    e = _errors(errors_pct)
    _check_level(coverage, "coverage")
    _check_level(confidence, "confidence")
    if not _is_int(n_boot) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not _is_int(seed):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    abs_e = np.abs(e)
    n = abs_e.size
    point = float(_abs_error_quantile(abs_e, coverage))
    rng = np.random.default_rng(seed)
    rows = max(1, _BOOT_BLOCK_VALUES // n)
    reps = []
    for start in range(0, n_boot, rows):
        idx = rng.integers(0, n, size=(min(rows, n_boot - start), n))
        reps.append(_abs_error_quantile(abs_e[idx], coverage))
    boot = np.concatenate(reps)
    a = 1.0 - confidence
    lower, upper = (float(v) for v in np.quantile(boot, [a / 2, 1 - a / 2]))
    return CoverageErrorResult(
        coverage=coverage,
        error_pct=point,
        lower=lower,
        upper=upper,
        confidence=confidence,
        n=n,
        n_boot=int(n_boot),
        seed=int(seed),
        quantile_method=_QUANTILE_METHOD,
    )


# --------------------------------------------------------------------------------------------
# Bland–Altman
# --------------------------------------------------------------------------------------------

BlandAltmanKind = Literal["absolute", "percent", "ratio"]

_SCALES = {
    "absolute": "difference test - reference, in the measurand's unit",
    "percent": "100 * (test - reference) / ((test + reference) / 2), in % of the pair mean",
    "ratio": "test / reference; statistics on ln(ratio), bias, limits and CIs back-transformed with exp",
}


@dataclass(frozen=True)
class BlandAltmanResult:
    """Bias and limits of agreement, with CIs (Bland & Altman 1986, 1999).

    For ``kind="ratio"`` ``bias`` is the geometric mean ratio test/reference and the limits are
    ratios; ``sd`` is always on the analysis scale (the SD of ln(ratio) for ``"ratio"``).
    """

    kind: str
    scale: str
    n: int
    bias: float
    sd: float
    loa_lower: float
    loa_upper: float
    bias_ci: tuple[float, float]
    loa_lower_ci: tuple[float, float]
    loa_upper_ci: tuple[float, float]
    loa_coverage: float
    confidence: float


def bland_altman(
    test: object,
    reference: object,
    kind: BlandAltmanKind = "absolute",
    confidence: float = 0.95,
    *,
    loa_coverage: float = 0.95,
) -> BlandAltmanResult:
    """Bland–Altman analysis of paired measurements.

    Differences d_i (analysis scale):
      ``"absolute"``: test − reference;
      ``"percent"``:  100 · (test − reference) / ((test + reference) / 2) — relative to the pair mean, so
      swapping the methods negates it (the pair mean must not be 0);
      ``"ratio"``:    ln(test / reference), both positive; results back-transformed with exp.
    bias = mean(d), s = SD(d) (n − 1), limits of agreement = bias ± z · s with z the normal quantile
    of (1 + loa_coverage)/2 (1.95996 for 95 %; Bland & Altman round it to 1.96).
    CI of the bias: bias ± t(1 − α/2, n − 1) · s / sqrt(n).
    CI of each limit (Bland & Altman 1999, approximate): limit ± t(1 − α/2, n − 1) · sqrt(3 s² / n).

    Sources: Bland J.M., Altman D.G., Lancet i:307–310 (1986); Stat Methods Med Res 8:135–160
    (1999) (ratio via log transformation, SE of the limits); CLSI EP09c (difference plots).
    """
    if kind not in _SCALES:
        raise ValueError(f"kind must be one of {sorted(_SCALES)}, got {kind!r}")
    _check_level(confidence, "confidence")
    _check_level(loa_coverage, "loa_coverage")
    t_, r_ = paired_arrays(
        test, reference, names=("test", "reference"), domain="positive" if kind == "ratio" else "any"
    )
    if kind == "absolute":
        d = t_ - r_
    elif kind == "percent":
        mean = (t_ + r_) / 2
        zero = np.flatnonzero(mean == 0)
        if zero.size:
            raise ValueError(
                f"pair {int(zero[0])} has test + reference = 0: the percent difference is undefined "
                f"({zero.size} such pair(s))"
            )
        d = 100.0 * (t_ - r_) / mean
    else:
        d = np.log(t_ / r_)
    n = d.size
    bias = float(d.mean())
    sd = float(d.std(ddof=1))
    z = float(stats.norm.ppf((1 + loa_coverage) / 2))
    t = float(stats.t.ppf((1 + confidence) / 2, n - 1))
    lo, hi = bias - z * sd, bias + z * sd
    se_bias, se_loa = sd / math.sqrt(n), math.sqrt(3 * sd * sd / n)
    back = math.exp if kind == "ratio" else float
    return BlandAltmanResult(
        kind=kind,
        scale=_SCALES[kind],
        n=n,
        bias=back(bias),
        sd=sd,
        loa_lower=back(lo),
        loa_upper=back(hi),
        bias_ci=(back(bias - t * se_bias), back(bias + t * se_bias)),
        loa_lower_ci=(back(lo - t * se_loa), back(lo + t * se_loa)),
        loa_upper_ci=(back(hi - t * se_loa), back(hi + t * se_loa)),
        loa_coverage=loa_coverage,
        confidence=confidence,
    )


# --------------------------------------------------------------------------------------------
# concordance and correlation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConcordanceResult:
    """Lin's concordance correlation coefficient ρc = precision (r) × accuracy (C_b)."""

    ccc: float
    lower: float
    upper: float
    pearson_r: float
    bias_correction: float
    n: int
    confidence: float


def _fisher_ci(r: float, se_z: float, confidence: float) -> tuple[float, float]:
    """tanh(atanh(r) ± z · se_z); a perfect ±1 gives the degenerate interval (r, r)."""
    if abs(r) >= 1.0:
        return r, r
    z = float(stats.norm.ppf((1 + confidence) / 2))
    centre = math.atanh(r)
    return math.tanh(centre - z * se_z), math.tanh(centre + z * se_z)


def _paired_with_spread(x: object, y: object, min_n: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = paired_arrays(x, y, min_n=min_n)
    for arr, name in ((a, "x"), (b, "y")):
        if np.ptp(arr) == 0:
            raise ValueError(f"all values of {name} are equal ({arr[0]}): the correlation is undefined")
    return a, b


def lins_ccc(x: object, y: object, confidence: float = 0.95) -> ConcordanceResult:
    """Lin's concordance correlation coefficient with a Fisher-z confidence interval.

    ρc = 2 s_xy / (s_x² + s_y² + (x̄ − ȳ)²) with moments divided by n (Lin 1989);
    ρc = r · C_b, C_b = 2 / (v + 1/v + u²), v = s_x / s_y, u = (x̄ − ȳ) / sqrt(s_x s_y), so |ρc| <= |r|.
    CI: tanh(atanh(ρc) ± z(1 − α/2) · σ_z) with the asymptotic variance of Lin (1989) as
    corrected in Lin (2000):
    σ_z² = [ (1 − r²) ρc² / ((1 − ρc²) r²) + 2 ρc³ (1 − ρc) u² / (r (1 − ρc²)²)
             − ρc⁴ u⁴ / (2 r² (1 − ρc²)²) ] / (n − 2).
    (The same formula as R's epiR ``epi.ccc``, ci = "z-transform".) Needs n >= 4 and spread in x and y.

    Sources: Lin L.I-K., Biometrics 45:255–268 (1989); correction, Biometrics 56:324–325 (2000).
    """
    _check_level(confidence, "confidence")
    x, y = _paired_with_spread(x, y, min_n=4)
    n = x.size
    xm, ym = x.mean(), y.mean()
    sx2, sy2 = float(((x - xm) ** 2).mean()), float(((y - ym) ** 2).mean())
    sxy = float(((x - xm) * (y - ym)).mean())
    ccc = 2 * sxy / (sx2 + sy2 + float(xm - ym) ** 2)
    r = sxy / math.sqrt(sx2 * sy2)
    u2 = float(xm - ym) ** 2 / math.sqrt(sx2 * sy2)
    if r == 0 or abs(ccc) >= 1:
        lower, upper = (ccc, ccc) if abs(ccc) >= 1 else (math.nan, math.nan)
    else:
        c2 = ccc * ccc
        var_z = (
            (1 - r * r) * c2 / ((1 - c2) * r * r)
            + 2 * ccc**3 * (1 - ccc) * u2 / (r * (1 - c2) ** 2)
            - ccc**4 * u2 * u2 / (2 * r * r * (1 - c2) ** 2)
        ) / (n - 2)
        lower, upper = _fisher_ci(ccc, math.sqrt(max(var_z, 0.0)), confidence)
    return ConcordanceResult(
        ccc=float(ccc),
        lower=lower,
        upper=upper,
        pearson_r=float(r),
        bias_correction=float(ccc / r) if r != 0 else math.nan,
        n=n,
        confidence=confidence,
    )


@dataclass(frozen=True)
class CorrelationResult:
    """A correlation coefficient with its Fisher-z interval and two-sided p-value (H0: ρ = 0)."""

    method: str
    r: float
    lower: float
    upper: float
    p_value: float
    n: int
    confidence: float


def pearson(x: object, y: object, confidence: float = 0.95) -> CorrelationResult:
    """Pearson's r with a Fisher-z CI and the exact two-sided p-value under bivariate normality.

    CI: tanh(atanh(r) ± z(1 − α/2) / sqrt(n − 3)) (Fisher 1921); p-value from t = r sqrt((n − 2)/(1 − r²))
    with n − 2 df (scipy ``pearsonr``). Needs n >= 4 (the Fisher SE) and spread in x and y.
    r says whether the range is wide relative to the imprecision (EP09-A2's r >= 0.975 for OLS), not
    whether the methods agree.
    """
    _check_level(confidence, "confidence")
    x, y = _paired_with_spread(x, y, min_n=4)
    res = stats.pearsonr(x, y)
    r = float(np.clip(res.statistic, -1.0, 1.0))
    lower, upper = _fisher_ci(r, 1 / math.sqrt(x.size - 3), confidence)
    return CorrelationResult("pearson", r, lower, upper, float(res.pvalue), x.size, confidence)


def spearman(x: object, y: object, confidence: float = 0.95) -> CorrelationResult:
    """Spearman's rank correlation (ties get mid-ranks) with a Fisher-z CI and a p-value.

    CI: tanh(atanh(ρs) ± z(1 − α/2) · sqrt((1 + ρs²/2) / (n − 3))), the variance of Bonett & Wright
    (2000), which keeps the nominal coverage better than 1/(n − 3); p-value: scipy ``spearmanr``
    (t approximation with n − 2 df). Needs n >= 4 and spread in x and y.

    Sources: Spearman (1904); Bonett D.G., Wright T.A., Psychometrika 65:23–28 (2000).
    """
    _check_level(confidence, "confidence")
    x, y = _paired_with_spread(x, y, min_n=4)
    res = stats.spearmanr(x, y)
    rho = float(np.clip(res.statistic, -1.0, 1.0))
    lower, upper = _fisher_ci(rho, math.sqrt((1 + rho * rho / 2) / (x.size - 3)), confidence)
    return CorrelationResult("spearman", rho, lower, upper, float(res.pvalue), x.size, confidence)
