"""Flag agreement (validation/qualitative.py) against scipy and Newcombe's published intervals.

References:
* Newcombe R.G., "Two-sided confidence intervals for the single proportion: comparison of seven
  methods", Stat Med 17:857–872 (1998), Table II: method 3 (Wilson score) and method 5 (exact
  Clopper–Pearson) for 81/263, 15/148, 0/20 and 1/29, printed to 4 decimals (tolerance 5e-5).
* scipy.stats.binomtest(k, n).proportion_ci(method="wilson" / "exact") (tolerance 1e-12).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from wbcv.validation.qualitative import flag_agreement, proportion, wilson_interval

NEWCOMBE = {
    # (k, n): (Wilson lower, upper), (exact lower, upper)
    (81, 263): ((0.2553, 0.3662), (0.2527, 0.3676)),
    (15, 148): ((0.0624, 0.1605), (0.0578, 0.1617)),
    (0, 20): ((0.0000, 0.1611), (0.0000, 0.1684)),
    (1, 29): ((0.0061, 0.1718), (0.0009, 0.1776)),
}


@pytest.mark.parametrize("kn", sorted(NEWCOMBE))
def test_newcombe_1998_table(kn):
    wilson, exact = NEWCOMBE[kn]
    p = proportion(*kn)
    assert p.wilson == pytest.approx(wilson, abs=5e-5)
    assert p.clopper_pearson == pytest.approx(exact, abs=5e-5)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 2000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))), st.sampled_from([0.9, 0.95, 0.99])
)
def test_matches_scipy(kn, confidence):
    k, n = kn
    w = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    e = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    p = proportion(k, n, confidence)
    assert p.wilson == pytest.approx((w.low, w.high), abs=1e-12)
    assert p.clopper_pearson == pytest.approx((e.low, e.high), abs=1e-9)
    assert 0.0 <= p.wilson[0] <= p.estimate <= p.wilson[1] <= 1.0


def test_two_by_two():
    r = flag_agreement("blasts", a=18, b=4, c=2, d=76)
    assert (r.ppa.k, r.ppa.n, r.npa.k, r.npa.n, r.opa.k, r.opa.n, r.n) == (18, 20, 76, 80, 94, 100, 100)
    assert r.ppa.estimate == pytest.approx(0.9)
    assert r.opa.wilson == pytest.approx(wilson_interval(94, 100))


def test_empty_margin_is_undefined_not_zero():
    r = flag_agreement("blasts", a=0, b=3, c=0, d=97)  # no reference-positive sample
    assert r.ppa.estimate is None and r.ppa.wilson is None and r.ppa.clopper_pearson is None
    assert r.npa.estimate == pytest.approx(0.97)
    empty = flag_agreement("none", 0, 0, 0, 0)
    assert empty.opa.estimate is None


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bad_cells(bad):
    with pytest.raises(ValueError, match="2×2"):
        flag_agreement("x", bad, 0, 0, 1)


def test_kappa_of_the_cohen_worked_example():
    """Cohen's kappa worked example (Wikipedia, "Cohen's kappa", Example: 50 grant proposals, both
    readers yes 20, A yes / B no 5, A no / B yes 10, both no 15): p_o = 0.7, p_e = 0.5, kappa = 0.4."""
    f = flag_agreement("x", 20, 5, 10, 15)
    assert f.kappa == pytest.approx(0.4, abs=1e-12)
    assert f.kappa_ci is not None and f.kappa_ci[0] < 0.4 < f.kappa_ci[1]


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 40), st.integers(0, 40), st.integers(0, 40), st.integers(0, 40))
def test_kappa_matches_sklearn(a, b, c, d):
    from sklearn.metrics import cohen_kappa_score

    f = flag_agreement("x", a, b, c, d)
    analyzer = [1] * a + [1] * b + [0] * c + [0] * d
    reference = [1] * a + [0] * b + [1] * c + [0] * d
    n = a + b + c + d
    p_e = ((a + b) * (a + c) + (c + d) * (b + d)) / n**2 if n else 1.0
    if p_e >= 1.0:
        assert f.kappa is None and f.kappa_ci is None  # undefined, never 0 or 1
    else:
        assert f.kappa == pytest.approx(cohen_kappa_score(reference, analyzer, labels=[0, 1]), abs=1e-12)
