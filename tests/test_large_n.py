"""The large-n algorithms against the quadratic ones they replace (issue 13, item 5).

* Passing–Bablok (``algorithm="large"``, wbcv.validation.pairwise_slopes): the same order statistics
  as sorting all n(n − 1)/2 slopes. Checked against brute force on random data with ties, equal x,
  slopes of exactly −1 and +1 (the shift convention) and rounded decimals, with the listing limit and
  the sample size lowered so that the randomized narrowing, the blocks of equal slopes and the chunked
  counting around ±1 all run on small data; and at the default limits through ``passing_bablok``.
* Deming: the leave-one-out fits from downdated sums equal n refits.
* Weighted Deming (``algorithm="large"``): the leave-one-out fixed points equal refits run to
  convergence.

The mcr reference cases themselves are checked with both algorithms in tests/test_regression_mcr.py.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from wbcv.validation import pairwise_slopes
from wbcv.validation.pairwise_slopes import PairwiseSlopes, mcr_diff, pair_angles
from wbcv.validation.regression import LARGE_N, _deming_fit, deming, passing_bablok, weighted_deming

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def samples(draw: st.DrawFn, min_n: int = 3, max_n: int = 40) -> tuple[np.ndarray, np.ndarray, str]:
    """(x, y, kind): small integers (many ties, equal x, slopes of exactly ±1), continuous values
    around a line, or values rounded to 0.01 / 0.1 like an analyzer's output (slopes equal in decimal
    arithmetic that floating point rounds apart)."""
    n = draw(st.integers(min_n, max_n))
    kind = draw(st.sampled_from(["integers", "continuous", "rounded"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "integers":
        top = draw(st.integers(1, 12))
        x = rng.integers(0, top + 1, n).astype(float)
        y = rng.integers(0, top + 1, n).astype(float) if draw(st.booleans()) else np.abs(x + rng.integers(-2, 3, n))
    elif kind == "continuous":
        x = rng.uniform(0, 10, n)
        y = np.abs(draw(st.floats(-2, 2)) * x + rng.normal(0, draw(st.floats(0.01, 5)), n) + 5)
    else:
        x = np.round(rng.uniform(0.1, 8, n), 1)
        y = np.round(np.abs(x * draw(st.floats(0.5, 1.5)) + rng.normal(0, 0.3, n)), 2)
    return x, y, kind


def _sorted_angles(x: np.ndarray, y: np.ndarray, positive: bool) -> np.ndarray:
    """Every pairwise angle, sorted: what the quadratic algorithm reads its order statistics from."""
    i, j = np.triu_indices(x.size, k=1)
    dropped = (mcr_diff(x[j], x[i]) == 0) & (mcr_diff(y[j], y[i]) == 0)
    return np.sort(pair_angles(x, y, i[~dropped], j[~dropped], positive))


@FAST
@given(samples(), st.booleans(), st.integers(1, 30), st.integers(3, 50), st.integers(0, 1000))
def test_order_statistics_and_the_counts_around_one_equal_brute_force(data, positive, listed, drawn, seed):
    """Listing limit 1–30 slopes and 3–50 drawn per round: the narrowing runs many rounds, meets
    blocks of equal slopes, and the band around ±1 is counted in chunks. Ranks: both ends, the
    middle, and 20 drawn at random."""
    x, y, kind = data
    want = _sorted_angles(x, y, positive)
    slopes = PairwiseSlopes(x, y, positive, seed=seed, enumerate_max=listed, sample_size=drawn)
    assert slopes.n_all == want.size
    assert slopes.n_vertical == int((np.abs(want) == math.pi / 2).sum())
    ranks = (
        np.unique(
            np.concatenate(
                ([1, want.size, (want.size + 1) // 2], np.random.default_rng(seed).integers(1, want.size + 1, 20))
            )
        )
        if want.size
        else np.array([], dtype=int)
    )
    got = np.array([slopes.angle_at(int(r)) for r in ranks])
    if kind == "rounded":
        # a block of more than `listed` slopes equal in decimal arithmetic is answered by one of its
        # members, which floating point may have rounded a few units of the last place apart
        np.testing.assert_allclose(got, want[ranks - 1], rtol=1e-12, atol=0)
    else:
        np.testing.assert_array_equal(got, want[ranks - 1])
    finite = want[np.abs(want) != math.pi / 2]
    for t in (-1.0, 1.0):
        target = math.atan(t)
        assert slopes.count_around(t) == (int((finite < target).sum()), int((finite == target).sum()))


@FAST
@given(samples(max_n=25))
def test_counts_around_one_beyond_the_band_limit_are_exact_for_integers(data):
    """More slopes within 1e-9 of ±1 than the band may list: they are counted as equal to ±1, which
    is exact for data whose differences are exact in floating point."""
    x, y, kind = data
    assume(kind == "integers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pairwise_slopes, "BAND_MAX", 0)
        slopes = PairwiseSlopes(x, y, True)
        finite = _sorted_angles(x, y, True)
        finite = finite[np.abs(finite) != math.pi / 2]
        for t in (-1.0, 1.0):
            assert slopes.count_around(t) == (
                int((finite < math.atan(t)).sum()),
                int((finite == math.atan(t)).sum()),
            )


def _pb_fields(r: object) -> tuple:
    return tuple(
        getattr(r, f) for f in ("slope", "slope_ci", "intercept", "intercept_ci", "n_slopes", "shift_k", "n_minus_one")
    )


@FAST
@given(samples(min_n=3, max_n=60), st.sampled_from(["angle", "slope"]), st.sampled_from([0.05, 0.2, 0.5]))
def test_passing_bablok_large_equals_exact(data, even_median, alpha):
    """Through passing_bablok at the default limits (every slope of these small sets is listed) and
    with the limits lowered so that the narrowing runs: the same slope, CI, intercept and counts K, m."""
    x, y, kind = data
    try:
        exact = passing_bablok(x, y, alpha, even_median=even_median, algorithm="exact")
    except ValueError as e:
        with pytest.raises(ValueError, match=re.escape(str(e))):
            passing_bablok(x, y, alpha, even_median=even_median, algorithm="large")
        return
    assert exact.algorithm == "exact"
    large = passing_bablok(x, y, alpha, even_median=even_median, algorithm="large")
    assert large.algorithm == "large"
    assert _pb_fields(large) == _pb_fields(exact)
    assert large.linearity == exact.linearity
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pairwise_slopes, "ENUMERATE_MAX", 7)
        mp.setattr(pairwise_slopes, "SAMPLE_SIZE", 20)
        narrowed = passing_bablok(x, y, alpha, even_median=even_median, algorithm="large")
    if kind == "rounded":
        for got, want in zip(_pb_fields(narrowed), _pb_fields(exact), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12)
    else:
        assert _pb_fields(narrowed) == _pb_fields(exact)


def test_passing_bablok_shift_convention_on_the_large_path():
    """The hand example of tests/test_regression_mcr.py (two slopes of −1 discounted, K = 2) and a
    negative correlation (slopes of +1 discounted, the shift negative), on both algorithms."""
    for x, y in (([1, 2, 3, 4, 5, 6], [1, 3, 2, 5, 4, 0]), ([1, 2, 3, 4, 5, 6], [6, 4, 5, 2, 3, 7])):
        exact, large = (passing_bablok(x, y, algorithm=a) for a in ("exact", "large"))
        assert _pb_fields(large) == _pb_fields(exact)
    r = passing_bablok([1, 2, 3, 4, 5, 6], [1, 3, 2, 5, 4, 0], algorithm="large")
    assert (r.n_slopes, r.n_minus_one, r.shift_k) == (15, 2, 2)
    assert r.slope == pytest.approx(1.0, rel=1e-15)
    neg = passing_bablok([1, 2, 3, 4, 5, 6], [6, 4, 5, 2, 3, 7], algorithm="large")
    assert not neg.positive_correlation and neg.n_minus_one > 0


def test_auto_switches_to_the_large_algorithm_above_large_n():
    rng = np.random.default_rng(3)
    for n, want in ((LARGE_N, "exact"), (LARGE_N + 1, "large")):
        x = np.round(rng.lognormal(1.3, 0.5, n), 2)
        r = passing_bablok(x, x * rng.lognormal(0, 0.05, n))
        assert r.algorithm == want
        assert weighted_deming(x, x * rng.lognormal(0, 0.05, n)).algorithm == want


def test_passing_bablok_large_equals_exact_at_a_few_thousand_rounded_values():
    """Analyzer-like data above LARGE_N: the narrowing runs at its default sizes (the CI bounds lie
    ~10^5 slopes from the median, so they are selected separately)."""
    rng = np.random.default_rng(11)
    n = 3000
    x = np.round(rng.lognormal(1.3, 0.5, n), 2)
    y = x * rng.lognormal(0, 0.06, n)
    assert _pb_fields(passing_bablok(x, y, algorithm="large")) == _pb_fields(passing_bablok(x, y, algorithm="exact"))


# ---------------------------------------------------------------------------------------------
# Deming and weighted Deming jackknife
# ---------------------------------------------------------------------------------------------


@st.composite
def positive_pairs(draw: st.DrawFn, min_n: int = 5, max_n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Method-comparison data with a constant CV: y = a + b·x, both with proportional noise."""
    n = draw(st.integers(min_n, max_n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    truth = rng.lognormal(draw(st.floats(-1, 3)), draw(st.floats(0.2, 1.0)), n)
    cv = draw(st.floats(0.005, 0.15))
    x = truth * rng.lognormal(0, cv, n)
    y = (draw(st.floats(0, 0.3)) * truth.min() + draw(st.floats(0.7, 1.4)) * truth) * rng.lognormal(0, cv, n)
    if draw(st.booleans()):
        x = np.round(x, 2) + 0.01  # analyzer rounding: ties in x, still positive
    return x, y


@FAST
@given(positive_pairs(min_n=4), st.floats(0.2, 5.0))
def test_deming_leave_one_out_from_sums_equals_refits(data, error_ratio):
    x, y = data
    try:
        r = deming(x, y, error_ratio)
    except ValueError:
        assume(False)
    refits = np.array([_deming_fit(np.delete(x, i), np.delete(y, i), error_ratio) for i in range(x.size)])
    scale = np.abs(y).max() + np.abs(x).max() * abs(r.slope)
    np.testing.assert_allclose(r.jackknife_slopes, refits[:, 1], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r.jackknife_intercepts, refits[:, 0], rtol=0, atol=1e-9 * scale)


def test_deming_leave_one_out_of_a_point_holding_nearly_all_the_spread_is_refitted():
    """One point carries 99.99 % of S_xx: the downdated sum would lose its digits, so that fit is
    recomputed from the data (and without a second distinct x the jackknife is undefined)."""
    x = np.array([1.0, 1.001, 1.002, 1.0015, 1000.0])
    y = np.array([1.1, 1.0, 1.05, 0.98, 1001.0])
    r = deming(x, y)
    want = _deming_fit(np.delete(x, 4), np.delete(y, 4), 1.0)
    assert r.jackknife_slopes[4] == pytest.approx(want[1], rel=1e-12)
    assert r.jackknife_intercepts[4] == pytest.approx(want[0], rel=1e-12)
    with pytest.raises(ValueError, match="without pair 3 all x values are equal"):
        deming([1.0, 1.0, 1.0, 5.0], [1.0, 2.0, 1.5, 5.0])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(positive_pairs(min_n=8, max_n=80), st.floats(0.3, 3.0))
def test_weighted_deming_large_jackknife_equals_refits_run_to_convergence(data, error_ratio):
    """mcr refits every leave-one-out subset from unweighted Deming and stops at 1e-6; run with a
    1e-14 threshold those refits reach the fixed points that the large algorithm solves for."""
    x, y = data
    try:
        exact = weighted_deming(x, y, error_ratio, threshold=1e-14, iter_max=500, algorithm="exact")
    except ValueError:
        assume(False)
    large = weighted_deming(x, y, error_ratio, threshold=1e-14, iter_max=500, algorithm="large")
    assert (large.intercept, large.slope) == (exact.intercept, exact.slope)
    assume(exact.jackknife_not_converged == 0)
    assert large.jackknife_not_converged == 0
    np.testing.assert_allclose(large.jackknife_slopes, exact.jackknife_slopes, rtol=1e-9)
    scale = float(np.abs(y).max())
    np.testing.assert_allclose(large.jackknife_intercepts, exact.jackknife_intercepts, rtol=0, atol=1e-9 * scale)
    assert large.slope_se == pytest.approx(exact.slope_se, rel=1e-6)
    assert large.intercept_se == pytest.approx(exact.intercept_se, rel=1e-6, abs=1e-9 * scale)
