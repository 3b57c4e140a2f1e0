"""The counting (sampling) floor of a differential, and how many samples a study needs.

A slide contributes n classified cells; the differential of class c is k/n. Even a perfect
classifier sees k ~ Binomial(n, p) for a true fraction p, so the relative error
100 · (k/n − p) / p has SD 100 · sqrt((1 − p) / (n p)) — 5.8 % for neutrophils at 60 % on 200 cells,
28 % for monocytes at 6 %, 70 % for basophils at 1 % (README, "Domain facts"). These functions give that error
distribution exactly (no normal approximation), the chance that counting alone keeps a sample within
an allowable error, and the expected coverage of a perfect classifier over a study ("sampling
floor"), so that a failed criterion can be attributed to the classifier or to the protocol.

Source: the binomial model of the manual differential and its confidence limits (Rümke's table) in
CLSI H20-A2, *Reference Leukocyte (WBC) Differential Count (Proportional) and Evaluation of
Instrumental Methods* (2007).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from wbcv.validation.agreement import clopper_pearson

__all__ = [
    "CountingErrorDistribution",
    "SampleSizePlan",
    "counting_coverage",
    "counting_error_distribution",
    "perfect_classifier_coverage",
    "samples_needed",
]

# Bounds on k are computed in floating point from n·p·(1 ± limit); this slack keeps a boundary
# count (e.g. k = 110 for n = 200, p = 0.5, ±10 %) inside despite representation error.
_BOUNDARY_SLACK = 1e-9
_MAX_SAMPLES = 1_000_000


def _check_n_cells(n_cells: object) -> np.ndarray:
    n = np.asarray(n_cells)
    integral = n.dtype != bool and np.issubdtype(n.dtype, np.integer)
    # whole-valued floats (200.0, e.g. from a Parquet column) are accepted
    whole = np.issubdtype(n.dtype, np.floating) and bool(np.all(np.isfinite(n)) and np.all(n == np.round(n)))
    if not (integral or whole):
        raise ValueError(f"n_cells must be whole numbers of cells, got {n_cells!r}")
    if np.any(n < 1):
        raise ValueError(f"n_cells must be at least 1, got {n_cells!r}")
    return n.astype(np.int64)


def _check_fraction(p: object) -> np.ndarray:
    f = np.asarray(p, dtype=float)
    if not np.all(np.isfinite(f)) or np.any(f <= 0) or np.any(f > 1):
        raise ValueError(
            f"true_fraction must lie in (0, 1] (a fraction, not a percentage; 0 makes the relative error "
            f"undefined), got {p!r}"
        )
    return f


def _check_limit(limit_pct: object) -> float:
    if not (isinstance(limit_pct, int | float) and math.isfinite(limit_pct) and limit_pct >= 0):
        raise ValueError(f"limit_pct must be a finite number >= 0, got {limit_pct!r}")
    return float(limit_pct)


@dataclass(frozen=True, eq=False)
class CountingErrorDistribution:
    """Exact distribution of the relative counting error for n cells and true fraction p.

    ``errors_pct[k]`` = 100 · (k/n − p) / p and ``probabilities[k]`` = P(K = k), K ~ Bin(n, p),
    for k = 0..n (read-only arrays).
    """

    n_cells: int
    true_fraction: float
    counts: np.ndarray
    errors_pct: np.ndarray
    probabilities: np.ndarray

    @property
    def sd_points(self) -> float:
        """SD of the observed percentage in percentage points, 100 · sqrt(p (1 − p) / n)."""
        p = self.true_fraction
        return 100.0 * math.sqrt(p * (1 - p) / self.n_cells)

    @property
    def sd_relative_pct(self) -> float:
        """SD of the relative error in %, 100 · sqrt((1 − p) / (n p)) (= sd_points / p)."""
        p = self.true_fraction
        return 100.0 * math.sqrt((1 - p) / (self.n_cells * p))

    def coverage(self, limit_pct: float) -> float:
        """P(|error| <= limit_pct), boundary included: same as :func:`counting_coverage`."""
        return counting_coverage(self.n_cells, self.true_fraction, limit_pct)


def counting_error_distribution(n_cells: int, true_fraction: float) -> CountingErrorDistribution:
    """The distribution of the relative error 100 · (k/n − p) / p with k ~ Binomial(n, p).

    Mean 0, SD 100 · sqrt((1 − p) / (n p)). For n = 200: p = 0.60 → SD 3.46 points = 5.8 % relative;
    p = 0.06 → 1.68 points = 28 %; p = 0.01 → 0.70 points = 70 % (README, "Domain facts"). Assumes cells are
    counted independently from a well-mixed smear (the binomial model of CLSI H20-A2); slide
    distribution errors come on top.
    """
    n = int(_check_n_cells(n_cells))
    p = float(_check_fraction(true_fraction))
    k = np.arange(n + 1)
    errors = 100.0 * (k / n - p) / p
    probs = stats.binom.pmf(k, n, p)
    for a in (k, errors, probs):
        a.flags.writeable = False
    return CountingErrorDistribution(n, p, k, errors, probs)


def counting_error_interval(n_cells: int, true_fraction: float, level: float = 0.95) -> tuple[float, float]:
    """Central ``level`` interval of the relative counting error, from binomial quantiles.

    (100 (k_lo/n - p)/p, 100 (k_hi/n - p)/p) with k_lo, k_hi the (1 - level)/2 and (1 + level)/2
    quantiles of Binomial(n, p): the band a perfect classifier's errors would fill on a slide of n
    cells (the sampling-floor band of the verification plot). n = 200, p = 0.6: about -11 % to +11 %.
    """
    n = int(_check_n_cells(n_cells))
    p = float(_check_fraction(true_fraction))
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    lo, hi = stats.binom.ppf([(1 - level) / 2, (1 + level) / 2], n, p)
    return 100.0 * (lo / n - p) / p, 100.0 * (hi / n - p) / p


def _coverage_array(n: np.ndarray, p: np.ndarray, limit: float) -> np.ndarray:
    """P(|K/n − p| <= limit/100 · p) for K ~ Bin(n, p), elementwise, from the binomial CDF.

    |k/n − p| / p <= L  ⇔  n p (1 − L) <= k <= n p (1 + L); boundary counts are included.
    """
    frac = limit / 100.0
    centre = n * p
    k_lo = np.ceil(centre * (1 - frac) - _BOUNDARY_SLACK * np.maximum(centre, 1))
    k_hi = np.floor(centre * (1 + frac) + _BOUNDARY_SLACK * np.maximum(centre, 1))
    k_lo, k_hi = np.maximum(k_lo, 0), np.minimum(k_hi, n)
    inside = stats.binom.cdf(k_hi, n, p) - stats.binom.cdf(k_lo - 1, n, p)
    return np.clip(np.where(k_hi >= k_lo, inside, 0.0), 0.0, 1.0)


def counting_coverage(n_cells: int, true_fraction: float, limit_pct: float) -> float:
    """Probability that counting alone keeps the relative error within ±``limit_pct`` (exact binomial).

    P(n p (1 − L) <= K <= n p (1 + L)), K ~ Bin(n, p), L = limit_pct / 100. Approaches 1 as n grows
    for fixed p and L > 0 (not monotonically: the admissible integer range changes in steps).
    Example: n = 200, ±10 %: p = 0.60 → 0.929 (108..132 cells); p = 0.06 → 0.344; p = 0.01 → 0.272.
    """
    n = _check_n_cells(n_cells)
    p = _check_fraction(true_fraction)
    if n.ndim or p.ndim:
        raise ValueError("counting_coverage takes one sample; use perfect_classifier_coverage for arrays")
    return float(_coverage_array(n, p, _check_limit(limit_pct)))


def perfect_classifier_coverage(n_cells: object, fractions: object, limit_pct: float) -> float:
    """Expected fraction of samples within ±``limit_pct`` if the classifier made no error at all.

    mean_i P(|error_i| <= limit) with the per-sample probability of :func:`counting_coverage` for n_i
    cells and true fraction p_i (use the reference fractions as the truth). This is the sampling
    floor: a criterion "≥ 95 % of samples within ±10 %" cannot be met on average when this is below
    0.95, whatever the classifier.
    """
    n = _check_n_cells(n_cells)
    p = _check_fraction(fractions)
    if n.ndim != 1 or p.ndim != 1:
        raise ValueError(f"n_cells and fractions must be one-dimensional, got shapes {n.shape} and {p.shape}")
    if n.size != p.size:
        raise ValueError(f"n_cells and fractions must have the same length, got {n.size} and {p.size}")
    if n.size == 0:
        raise ValueError("at least one sample is needed")
    return float(_coverage_array(n, p, _check_limit(limit_pct)).mean())


@dataclass(frozen=True)
class SampleSizePlan:
    """Smallest number of samples for which the expected result demonstrates the criterion."""

    n_samples: int
    k_within: int
    lower_bound: float
    expected_coverage: float
    required_coverage: float
    confidence: float


def samples_needed(
    *, expected_coverage: float, required_coverage: float = 0.95, confidence: float = 0.95
) -> SampleSizePlan:
    """How many samples to run so that the criterion can be shown at the Clopper–Pearson lower bound.

    Definition: the smallest n such that, with k = ⌊expected_coverage · n⌋ samples within the limit
    (the expected count, rounded down so the plan never relies on rounding up), the lower limit of
    the two-sided ``confidence`` Clopper–Pearson interval of k/n (the interval that :func:`coverage`
    reports) is >= ``required_coverage``. It plans for the *expected* outcome only: the observed
    count scatters around it, so this n passes the lower-bound rule about half the time; add margin
    for power. The lower bound is not monotone in n (k steps), so a slightly larger n can fail
    where this one passes.

    Examples (required 0.95, confidence 0.95): expected 1.0 → n = 72 (all 72 within: lower bound
    0.025^(1/72) = 0.95006); expected 0.99 → n = 142 (k = 140); 0.98 → 230; 0.97 → 465; 0.96 → 1849.

    Raises ``ValueError`` if expected_coverage <= required_coverage (never demonstrable) or if more
    than 1 000 000 samples would be needed.
    """
    for value, name in ((required_coverage, "required_coverage"), (confidence, "confidence")):
        if not (isinstance(value, int | float) and 0 < value < 1):
            raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    if not (isinstance(expected_coverage, int | float) and 0 < expected_coverage <= 1):
        raise ValueError(f"expected_coverage must be a number in (0, 1], got {expected_coverage!r}")
    if expected_coverage <= required_coverage:
        raise ValueError(
            f"expected_coverage {expected_coverage} must exceed required_coverage {required_coverage}: "
            f"the lower confidence bound is always below the observed fraction"
        )
    a = 1.0 - confidence
    block = 4096
    for start in range(1, _MAX_SAMPLES + 1, block):
        n = np.arange(start, min(start + block, _MAX_SAMPLES + 1))
        k = np.floor(expected_coverage * n + _BOUNDARY_SLACK).astype(np.int64)
        with np.errstate(invalid="ignore"):
            lower = np.where(k > 0, stats.beta.ppf(a / 2, np.maximum(k, 1), n - k + 1), 0.0)
        hit = np.flatnonzero(lower >= required_coverage)
        if hit.size:
            i = int(hit[0])
            ci = clopper_pearson(int(k[i]), int(n[i]), confidence)
            return SampleSizePlan(
                n_samples=int(n[i]),
                k_within=int(k[i]),
                lower_bound=ci.lower,
                expected_coverage=float(expected_coverage),
                required_coverage=float(required_coverage),
                confidence=float(confidence),
            )
    raise ValueError(
        f"more than {_MAX_SAMPLES} samples would be needed for expected coverage {expected_coverage} "
        f"against {required_coverage}"
    )
