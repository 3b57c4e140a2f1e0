"""Properties and hand-checked values of the method-comparison statistics (regression, agreement,
sampling), plus the ValueError contract for invalid input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from wbcv.validation.agreement import (
    bland_altman,
    clopper_pearson,
    coverage,
    coverage_error,
    lins_ccc,
    pearson,
    spearman,
)
from wbcv.validation.regression import deming, ols, passing_bablok, weighted_deming
from wbcv.validation.sampling import (
    counting_coverage,
    counting_error_distribution,
    perfect_classifier_coverage,
    samples_needed,
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=0.1, max_value=1e3, allow_nan=False, allow_infinity=False)


@st.composite
def pairs(draw, elements=positive, min_n=5, max_n=30):
    n = draw(st.integers(min_n, max_n))
    x = draw(st.lists(elements, min_size=n, max_size=n))
    y = draw(st.lists(elements, min_size=n, max_size=n))
    return np.array(x), np.array(y)


@st.composite
def linear_pairs(draw, min_n=5, max_n=30):
    """y ≈ a + b x + noise with positive x and y: the shape of method-comparison data."""
    n = draw(st.integers(min_n, max_n))
    x = np.array(draw(st.lists(st.floats(1.0, 100.0), min_size=n, max_size=n, unique=True)))
    a, b = draw(st.floats(-2.0, 2.0)), draw(st.floats(0.5, 2.0))
    noise = np.array(draw(st.lists(st.floats(-3.0, 3.0), min_size=n, max_size=n)))
    return x, np.abs(a + b * x + noise) + 0.01


# ---------------------------------------------------------------------------------------------
# regression
# ---------------------------------------------------------------------------------------------


def _fit_or_error(fit, x, y):
    try:
        return fit(x, y)
    except ValueError as exc:
        return exc


@FAST
@given(linear_pairs(), st.floats(1e-3, 1e3))
def test_scaling_scales_intercept_and_keeps_slope_ols_deming(data, c):
    x, y = data
    for fit in (ols, deming):
        a, b = _fit_or_error(fit, x, y), _fit_or_error(fit, c * x, c * y)
        if isinstance(a, ValueError):
            assert isinstance(b, ValueError)
            continue
        scale = c * (np.abs(y).max() + np.abs(x).max() * abs(a.slope))
        assert b.slope == pytest.approx(a.slope, rel=1e-9, abs=1e-12)
        assert abs(b.intercept - c * a.intercept) <= 1e-9 * scale
        assert abs(b.intercept_ci[0] - c * a.intercept_ci[0]) <= 1e-8 * scale
        assert b.slope_ci == pytest.approx(a.slope_ci, rel=1e-8, abs=1e-12)


@FAST
@given(pairs(st.integers(0, 60).map(float), min_n=3, max_n=20), st.integers(-20, 20))
def test_scaling_scales_intercept_and_keeps_slope_passing_bablok(data, k):
    """c = 2^k scales every difference exactly, so even a slope of exactly −1 (discounted) stays −1;
    other factors can move such a slope off −1 by one rounding and change the count K."""
    x, y = data
    c = 2.0**k
    a, b = _fit_or_error(passing_bablok, x, y), _fit_or_error(passing_bablok, c * x, c * y)
    if isinstance(a, ValueError):
        assert isinstance(b, ValueError)
        return
    assert b.slope == a.slope
    assert b.slope_ci == a.slope_ci
    assert b.intercept == c * a.intercept
    assert b.intercept_ci == (c * a.intercept_ci[0], c * a.intercept_ci[1])
    assert b.linearity.max_cusum == a.linearity.max_cusum


def _textbook_passing_bablok_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Passing & Bablok (1983), written from the paper: the slope of every pair (±∞ for equal x),
    drop pairs equal in both and slopes of −1 (+1 for a negative correlation), shift the median
    by K = slopes below −1 (by −K', K' = slopes above +1), average the two middle slopes for even N."""
    positive = stats.kendalltau(x, y).statistic >= 0
    slopes = []
    for i, j in itertools.combinations(range(x.size), 2):
        dx, dy = x[j] - x[i], y[j] - y[i]
        if dx == 0 and dy == 0:
            continue
        s = dy / dx if dx != 0 else (math.inf if positive else -math.inf)
        if s != (-1.0 if positive else 1.0):
            slopes.append(s)
    s = sorted(slopes)
    n = len(s)
    shift = sum(v < -1 for v in s) if positive else -sum(v > 1 for v in s)
    if n % 2:
        return s[(n + 1) // 2 + shift - 1]
    return (s[n // 2 + shift - 1] + s[n // 2 + shift]) / 2


@FAST
@given(pairs(st.integers(0, 40).map(float), min_n=3, max_n=25))
def test_passing_bablok_slope_equals_the_textbook_definition(data):
    """Integer data: many ties, equal x, slopes of exactly ±1 — the cases the conventions are about."""
    x, y = data
    try:
        ours = passing_bablok(x, y, even_median="slope").slope
    except ValueError:
        assume(False)
    want = _textbook_passing_bablok_slope(x, y)
    assume(math.isfinite(want) and abs(want) < 1e6)  # mcr represents +∞ as tan(π/2) ≈ 1.6e16
    assert ours == pytest.approx(want, rel=1e-12, abs=1e-12)


@FAST
@given(linear_pairs())
def test_deming_with_unit_error_ratio_is_symmetric(data):
    """λ = 1 is orthogonal regression: swapping the methods inverts the slope."""
    x, y = data
    a, b = _fit_or_error(deming, x, y), _fit_or_error(deming, y, x)
    assume(not isinstance(a, ValueError) and not isinstance(b, ValueError))
    assert b.slope == pytest.approx(1 / a.slope, rel=1e-9)


@FAST
@given(linear_pairs())
def test_bias_at_zero_is_the_intercept_with_its_ci(data):
    x, y = data
    for fit in (ols, deming):
        r = _fit_or_error(fit, x, y)
        assume(not isinstance(r, ValueError))
        (row,) = r.bias_at(0.0)
        assert row.bias == pytest.approx(r.intercept, rel=1e-12, abs=1e-12)
        assert (row.lower, row.upper) == pytest.approx(r.intercept_ci, rel=1e-9, abs=1e-9)


def test_deming_tends_to_ols_as_reference_error_vanishes():
    x = np.array([1.0, 2, 3, 4, 5, 6, 7, 8])
    y = np.array([1.3, 1.9, 3.4, 3.8, 5.3, 5.9, 7.4, 7.7])
    assert deming(x, y, error_ratio=1e-9).slope == pytest.approx(ols(x, y).slope, rel=1e-8)


def test_weighted_deming_recovers_an_exact_proportional_line():
    x = np.array([1.0, 2, 5, 10, 20, 50, 100])
    r = weighted_deming(x, 1.1 * x, error_ratio=1.21)
    assert r.slope == pytest.approx(1.1, rel=1e-12)
    assert r.intercept == pytest.approx(0.0, abs=1e-10)
    assert r.converged


def test_bias_percent_and_passing_bablok_bias_has_no_ci():
    r = passing_bablok([1.0, 2, 3, 4, 5, 6], [1.2, 2.1, 3.3, 4.4, 5.2, 6.6])
    (row,) = r.bias_at(10.0)
    assert row.bias == pytest.approx(r.intercept + (r.slope - 1) * 10)
    assert math.isnan(row.se) and math.isnan(row.lower) and math.isnan(row.upper)
    assert row.bias_pct == pytest.approx(10 * row.bias)


# ---------------------------------------------------------------------------------------------
# agreement
# ---------------------------------------------------------------------------------------------


@FAST
@given(pairs(finite, min_n=3))
def test_swapping_methods_negates_absolute_bland_altman_bias(data):
    t, r = data
    a, b = bland_altman(t, r), bland_altman(r, t)
    scale = 1e-9 * (np.abs(t).max() + np.abs(r).max() + 1)
    assert abs(a.bias + b.bias) <= scale
    assert a.sd == pytest.approx(b.sd, rel=1e-9, abs=scale)
    assert abs(a.loa_lower + b.loa_upper) <= scale and abs(a.loa_upper + b.loa_lower) <= scale


@FAST
@given(pairs(positive, min_n=3))
def test_swapping_methods_negates_percent_and_inverts_ratio_bias(data):
    t, r = data
    assert bland_altman(t, r, "percent").bias == pytest.approx(-bland_altman(r, t, "percent").bias, abs=1e-9)
    assert bland_altman(t, r, "ratio").bias * bland_altman(r, t, "ratio").bias == pytest.approx(1.0, rel=1e-9)


def test_bland_altman_hand_example():
    """d = (1, 0, 1, −1): bias 0.25, s = sqrt(2.75/3) = 0.957427; LoA 0.25 ± 1.959964 s;
    bias CI 0.25 ± t(0.975, 3) s / 2 = 0.25 ± 3.182446 · 0.478714; limit CI ± 3.182446 · sqrt(3 s²/4)."""
    r = bland_altman([1, 2, 3, 4], [0, 2, 2, 5])
    s = math.sqrt(2.75 / 3)
    assert (r.bias, r.sd) == pytest.approx((0.25, s), rel=1e-12)
    assert (r.loa_lower, r.loa_upper) == pytest.approx((0.25 - 1.959964 * s, 0.25 + 1.959964 * s), rel=1e-6)
    assert r.bias_ci == pytest.approx((-1.2734802, 1.7734802), rel=1e-6)
    half = 3.182446 * math.sqrt(3 * s * s / 4)
    assert r.loa_upper_ci == pytest.approx((r.loa_upper - half, r.loa_upper + half), rel=1e-6)
    ratio = bland_altman([2, 4, 8], [1, 2, 4], "ratio")
    assert (ratio.bias, ratio.loa_lower, ratio.loa_upper) == pytest.approx((2.0, 2.0, 2.0), rel=1e-12)


@FAST
@given(st.integers(1, 500), st.data(), st.floats(0.5, 0.999))
def test_clopper_pearson_brackets_the_estimate_within_unit_interval(n, data, confidence):
    k = data.draw(st.integers(0, n))
    ci = clopper_pearson(k, n, confidence)
    assert 0.0 <= ci.lower <= k / n <= ci.upper <= 1.0
    assert ci.lower < ci.upper


def test_clopper_pearson_hand_values():
    """95 of 100 → 88.7–98.4 % (README, "Domain facts"); 0 of 10 → upper 1 − 0.025^(1/10);
    10 of 10 → lower 0.025^(1/10)."""
    ci = clopper_pearson(95, 100)
    assert (ci.lower, ci.upper) == pytest.approx((0.8871651, 0.9835681), abs=1e-7)
    assert clopper_pearson(0, 10).upper == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-12)
    assert clopper_pearson(10, 10).lower == pytest.approx(0.025 ** (1 / 10), rel=1e-12)


@FAST
@given(st.lists(finite, min_size=1, max_size=60), st.floats(0, 100), st.floats(0, 100))
def test_coverage_never_decreases_as_the_limit_widens(errors, a, b):
    narrow, wide = coverage(errors, min(a, b)), coverage(errors, max(a, b))
    assert narrow.fraction <= wide.fraction
    assert narrow.lower <= wide.lower and narrow.upper <= wide.upper


def test_coverage_hand_example():
    errors = [5.0] * 95 + [15.0] * 4 + [-10.0]  # the boundary (−10 %) counts as within
    r = coverage(errors, 10)
    assert (r.n_within, r.n, r.fraction) == (96, 100, 0.96)
    r = coverage([5.0] * 95 + [15.0] * 5, 10)
    assert (r.lower, r.upper) == pytest.approx((0.887, 0.984), abs=5e-4)


@FAST
@given(st.lists(finite, min_size=1, max_size=80), st.floats(0.05, 0.99))
def test_coverage_error_covers_at_least_the_requested_fraction(errors, q):
    r = coverage_error(errors, coverage=q, n_boot=20)
    e = np.abs(np.array(errors))
    assert np.mean(e <= r.error_pct) >= q
    assert r.error_pct in e  # an observed error, never an interpolation
    assert r.lower <= r.upper


def test_coverage_error_hand_value_and_determinism():
    """|e| = 0 once and 0.5, 1, ..., 10 twice each (41 errors): the 95 % error is the ⌈0.95·41⌉ = 39th
    smallest |e| = 9.5; the bootstrap is identical for one seed and differs for another."""
    errors = np.linspace(-10, 10, 41)
    a, b = coverage_error(errors, seed=7), coverage_error(errors, seed=7)
    assert a.error_pct == 9.5 and a == b
    assert coverage_error(errors, seed=8, n_boot=200) != coverage_error(errors, seed=7, n_boot=200)


@FAST
@given(pairs(finite, min_n=4))
def test_ccc_never_exceeds_the_absolute_pearson_r(data):
    x, y = data
    assume(np.ptp(x) > 0 and np.ptp(y) > 0)
    c = lins_ccc(x, y)
    assert abs(c.ccc) <= abs(pearson(x, y).r) + 1e-12
    if math.isfinite(c.lower):
        assert -1 <= c.lower <= c.ccc <= c.upper <= 1


def test_ccc_hand_example():
    """y = x + 1 on 1..4: s² = 1.25 for both, s_xy = 1.25, (x̄ − ȳ)² = 1 → ρc = 2.5 / 3.5 = 5/7."""
    c = lins_ccc([1, 2, 3, 4], [2, 3, 4, 5])
    assert c.ccc == pytest.approx(5 / 7, rel=1e-15)
    assert c.pearson_r == pytest.approx(1.0) and c.bias_correction == pytest.approx(5 / 7)
    # Lin's σ_z² with r = 1, u² = 0.8: [2ρ³(1 − ρ)u² − ρ⁴u⁴/2] / (1 − ρ²)² / (n − 2)
    rho, u2 = 5 / 7, 0.8
    se = math.sqrt((2 * rho**3 * (1 - rho) * u2 - rho**4 * u2**2 / 2) / (1 - rho**2) ** 2 / 2)
    assert (c.lower, c.upper) == pytest.approx(
        (math.tanh(math.atanh(rho) - 1.959964 * se), math.tanh(math.atanh(rho) + 1.959964 * se)), rel=1e-6
    )
    assert lins_ccc([1, 2, 3, 4], [1, 2, 3, 4]).ccc == 1.0


def test_correlations_hand_example():
    """r = 0.8 for n = 5: Fisher CI tanh(atanh(0.8) ± 1.959964/sqrt(2)); p = 0.1041 (t = 2.309, 3 df)."""
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    p = pearson(x, y)
    z = math.atanh(0.8)
    assert p.r == pytest.approx(0.8)
    assert (p.lower, p.upper) == pytest.approx((math.tanh(z - 1.959964 / 2**0.5), math.tanh(z + 1.959964 / 2**0.5)))
    assert p.p_value == pytest.approx(0.104088, abs=1e-6)
    s = spearman(x, y)
    assert s.r == pytest.approx(0.8) and s.lower < p.lower  # Bonett–Wright variance is wider
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]).r == 1.0


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "sd_points", "sd_relative"),
    [(0.60, 3.464, 5.774), (0.06, 1.679, 27.99), (0.01, 0.7036, 70.36)],
)
def test_design_counting_numbers(p, sd_points, sd_relative):
    """README, "Domain facts": n = 200 → 3.5 points ≈ 5.8 % relative at 60 %, ≈ 28 % at 6 %, ≈ 70 % at 1 %."""
    d = counting_error_distribution(200, p)
    assert d.sd_points == pytest.approx(sd_points, rel=1e-3)
    assert d.sd_relative_pct == pytest.approx(sd_relative, rel=1e-3)
    # the exact distribution has that SD and mean error 0
    mean = float(d.probabilities @ d.errors_pct)
    assert mean == pytest.approx(0.0, abs=1e-9)
    assert math.sqrt(float(d.probabilities @ d.errors_pct**2)) == pytest.approx(d.sd_relative_pct, rel=1e-9)
    assert d.probabilities.sum() == pytest.approx(1.0)


@FAST
@given(st.integers(1, 400), st.floats(0.005, 1.0), st.floats(0, 60))
def test_counting_coverage_equals_the_summed_distribution(n, p, limit):
    d = counting_error_distribution(n, p)
    k_exact = np.abs(d.counts - n * p) <= limit / 100 * n * p * (1 + 1e-12) + 1e-9
    assert counting_coverage(n, p, limit) == pytest.approx(float(d.probabilities[k_exact].sum()), abs=1e-9)


@FAST
@given(st.floats(0.01, 0.99), st.floats(1.0, 50.0), st.integers(1, 5000))
def test_counting_coverage_tends_to_one_as_cells_increase(p, limit, n):
    """Not monotone in n (the admissible integer range moves in steps), but bounded below by
    Hoeffding's 1 − 2 exp(−2 n (p L)²), which increases to 1; at the n where that bound is 0.999
    the coverage is at least 0.999."""
    eps = p * limit / 100
    assert counting_coverage(n, p, limit) >= 1 - 2 * math.exp(-2 * n * eps * eps) - 1e-12
    n_big = math.ceil(math.log(2 / 0.001) / (2 * eps * eps))
    assert counting_coverage(n_big, p, limit) >= 0.999


def test_counting_coverage_increases_for_the_neutrophil_case():
    values = [counting_coverage(n, 0.6, 10) for n in (50, 100, 200, 400, 800, 1600)]
    assert values == sorted(values) and values[-1] > 0.999
    assert counting_coverage(200, 0.6, 10) == pytest.approx(
        stats.binom.cdf(132, 200, 0.6) - stats.binom.cdf(107, 200, 0.6), rel=1e-12
    )  # 108..132 cells: the ±10 % boundaries (exactly 108 and 132) are included


def test_perfect_classifier_coverage_is_the_mean_probability():
    n, p = [200, 200, 200], [0.60, 0.06, 0.01]
    want = np.mean([counting_coverage(200, f, 10) for f in p])
    assert perfect_classifier_coverage(n, p, 10) == pytest.approx(want, rel=1e-12)
    assert perfect_classifier_coverage(n, p, 10) < 0.95  # the sampling floor (README, "Domain facts")


@pytest.mark.parametrize(("expected", "n", "k"), [(1.0, 72, 72), (0.99, 142, 140), (0.98, 230, 225)])
def test_samples_needed_is_the_smallest_n(expected, n, k):
    plan = samples_needed(expected_coverage=expected)
    assert (plan.n_samples, plan.k_within) == (n, k)
    assert plan.lower_bound >= 0.95
    for smaller in range(1, n):
        kk = math.floor(expected * smaller + 1e-9)
        assert kk == 0 or clopper_pearson(kk, smaller).lower < 0.95


# ---------------------------------------------------------------------------------------------
# invalid input
# ---------------------------------------------------------------------------------------------

X3 = [1.0, 2.0, 3.0]
INVALID = [
    (lambda: ols([1, 2, 3], [1, 2]), "same length, got 3 and 2"),
    (lambda: ols([1, 2], [1, 2]), "at least 3 pairs are needed, got 2"),
    (lambda: ols([[1, 2, 3]], [[1, 2, 3]]), "one-dimensional"),
    (lambda: ols([1, 1, 1], X3), "all values of x are equal"),
    (lambda: ols(X3, X3, alpha=1.5), "alpha must be a number in"),
    (lambda: deming([1, math.nan, 3], X3), r"x\[1\] is nan"),
    (lambda: deming(X3, X3, error_ratio=0), "error_ratio must be a positive"),
    (lambda: weighted_deming([0, 1, 2], X3), r"x\[0\] is 0.0: this method needs positive"),
    (lambda: passing_bablok([-1, 1, 2], X3), "needs non-negative"),
    (lambda: passing_bablok(X3, X3, even_median="mean"), "even_median must be"),
    (lambda: bland_altman(X3, [1, 0, 2], "ratio"), r"reference\[1\] is 0.0: this method needs positive"),
    (lambda: bland_altman([-1, 2, 3], [1, 2, 3], "percent"), "pair 0 has test \\+ reference = 0"),
    (lambda: bland_altman(X3, X3, "log"), "kind must be one of"),
    (lambda: bland_altman(X3, [1, 2, math.inf]), r"reference\[2\] is inf"),
    (lambda: coverage([1.0, math.nan], 10), r"errors_pct\[1\] is nan"),
    (lambda: coverage([], 10), "errors_pct is empty"),
    (lambda: coverage([1.0], -1), "limit_pct must be a finite number >= 0"),
    (lambda: coverage_error([1.0, 2.0], coverage=1.0), r"coverage must be a number in \(0, 1\)"),
    (lambda: coverage_error([1.0, 2.0], coverage=0), r"coverage must be a number in \(0, 1\)"),
    (lambda: coverage_error([1.0, 2.0], n_boot=0), "n_boot must be a positive integer"),
    (lambda: clopper_pearson(5, 3), "k must lie in 0..n"),
    (lambda: clopper_pearson(0, 0), "n must be at least 1"),
    (lambda: clopper_pearson(1.5, 3), "k and n must be integers"),
    (lambda: clopper_pearson(1, 3, confidence=95), "confidence must be a number in"),
    (lambda: lins_ccc([1, 1, 1, 1], [1, 2, 3, 4]), "all values of x are equal"),
    (lambda: pearson(X3, X3), "at least 4 pairs are needed, got 3"),
    (lambda: counting_coverage(200, 0.0, 10), r"true_fraction must lie in \(0, 1\]"),
    (lambda: counting_coverage(200, 60, 10), "a fraction, not a percentage"),
    (lambda: counting_coverage(0, 0.5, 10), "n_cells must be at least 1"),
    (lambda: counting_coverage(200.5, 0.5, 10), "n_cells must be whole numbers"),
    (lambda: counting_error_distribution(200, math.nan), "true_fraction must lie"),
    (lambda: perfect_classifier_coverage([200, 100], [0.5], 10), "same length, got 2 and 1"),
    (lambda: samples_needed(expected_coverage=0.94), "must exceed required_coverage"),
    (lambda: samples_needed(expected_coverage=0.99, required_coverage=1.5), "required_coverage must be"),
]


@pytest.mark.parametrize(("call", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@settings(max_examples=60, deadline=None)
@given(st.integers(20, 2000), st.floats(0.02, 0.9))
def test_counting_error_interval_brackets_zero_and_narrows_with_more_cells(n, p):
    from wbcv.validation.sampling import counting_error_interval

    low, high = counting_error_interval(n, p)
    assert low <= 0 <= high
    low4, high4 = counting_error_interval(4 * n, p)
    assert high4 - low4 <= high - low + 1e-9
