"""EP09c additions to the method comparison: outliers (generalized ESD on the differences, listed,
verdict with or without them), bias by concentration interval, regression-based limits of
agreement (Bland & Altman 1999 §3.2) and acceptance on the Passing–Bablok fit."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from tests.conftest import REPO
from wbcv.base.errors import WbcvError
from wbcv.base.records import OutlierRule, RegressionCriterion
from wbcv.validation import bias_range
from wbcv.validation.comparison_outliers import screen_outliers
from wbcv.validation.protocol import MeasurandRule, load_protocol, within_limit
from wbcv.validation.regression_acceptance import judge_regression, within
from wbcv.validation.verdict import decide

SAMPLE = load_protocol(REPO / "fixtures" / "samples" / "protocol.yaml")
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


# --- mean difference and bias by interval ---------------------------------------------------------


def test_mean_difference_hand_computed():
    # d = 1, 2, 3, 4: mean 2.5, s = √(5/3) = 1.29099, t(0.975, 3) = 3.18245; half-width 3.18245·1.29099/2 = 2.05426
    r = bias_range.mean_difference([1, 2, 3, 4], 0.95)
    assert r.mean == 2.5 and r.sd == pytest.approx(math.sqrt(5 / 3))
    assert (r.lower, r.upper) == pytest.approx((2.5 - 2.054255, 2.5 + 2.054255), abs=1e-5)


def test_mean_difference_undefined_values():
    one = bias_range.mean_difference([3.0])
    assert (one.n, one.mean, one.sd, one.lower, one.upper) == (1, 3.0, None, None, None)
    with pytest.raises(ValueError, match="empty"):
        bias_range.mean_difference([])
    with pytest.raises(ValueError, match="NaN"):
        bias_range.mean_difference([1.0, float("nan")])


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=2, max_size=40), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_mean_difference_equals_scipys_one_sample_t_interval(d, confidence):
    r = bias_range.mean_difference(d, confidence)
    if np.ptp(d) == 0:
        assert r.lower == r.upper == pytest.approx(r.mean)
        return
    ref = stats.ttest_1samp(d, 0.0).confidence_interval(confidence)
    assert (r.lower, r.upper) == pytest.approx((ref.low, ref.high), rel=1e-9, abs=1e-9)
    assert r.lower <= r.mean <= r.upper


def test_bias_by_interval_hand_computed():
    x = [1, 2, 3, 4, 5, 6]
    d = [0, 0, 1, 1, 2, 4]
    e = [0, 0, 100 / 3, 25, 40, np.nan]  # the last relative error undefined: absolute only
    low, mid, high = bias_range.bias_by_interval(x, d, e, [2.5, 4.5], 0.95)
    assert (low.low, low.high, mid.low, mid.high, high.low, high.high) == (None, 2.5, 2.5, 4.5, 4.5, None)
    assert (low.absolute.n, low.absolute.mean, low.absolute.lower) == (2, 0.0, 0.0)
    assert mid.absolute.mean == 1.0
    # [2, 4]: mean 3, s = √2, t(0.975, 1) = 12.7062 -> 3 ± 12.7062
    assert (high.absolute.lower, high.absolute.upper) == pytest.approx((3 - 12.7062, 3 + 12.7062), abs=1e-4)
    assert high.percent.n == 1 and high.percent.mean == 40.0


def test_a_sample_on_a_cut_point_belongs_to_the_interval_above():
    parts = bias_range.bias_by_interval([1.0, 2.0, 3.0], [0.0, 5.0, 9.0], [0.0, 0.0, 0.0], [2.0])
    assert [p.absolute.n for p in parts] == [1, 2]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.01, 100), finite), min_size=3, max_size=60),
    st.lists(st.floats(0.01, 100), min_size=1, max_size=4, unique=True),
)
def test_intervals_partition_the_samples_and_their_means_recombine(pairs, cuts):
    x, d = (np.array(v) for v in zip(*pairs, strict=True))
    parts = bias_range.bias_by_interval(x, d, np.zeros_like(x), sorted(cuts))
    filled = [p.absolute for p in parts if p.absolute is not None]
    assert sum(p.n for p in filled) == x.size
    assert sum(p.n * p.mean for p in filled) == pytest.approx(d.sum(), abs=1e-6 * (1 + np.abs(d).sum()))


def test_tertile_cuts_are_the_type_7_quantiles():
    assert bias_range.tertile_cuts([1, 2, 3, 4, 5, 6]) == pytest.approx((1 + 5 / 3, 1 + 10 / 3))
    with pytest.raises(ValueError, match="at least 3"):
        bias_range.tertile_cuts([1, 2])


# --- regression-based limits of agreement ---------------------------------------------------------


def test_regression_limits_hand_computed():
    # residuals ±0.1·A around D = 1 + 0.2·A: orthogonal to (1, A), so the first fit is exact, and
    # |residual| = 0.1·A exactly: c0 = 0, c1 = 0.1; limits 1 + 0.2A ± 1.95996·√(π/2)·0.1·A
    a = np.array([1, 1, 2, 2, 3, 3], dtype=float)
    d = 1 + 0.2 * a + np.array([0.1, -0.1, 0.2, -0.2, 0.3, -0.3])
    r = bias_range.regression_limits(a, d, 0.95)
    assert (r.bias_intercept, r.bias_slope) == pytest.approx((1.0, 0.2), abs=1e-12)
    assert (r.spread_intercept, r.spread_slope) == pytest.approx((0.0, 0.1), abs=1e-12)
    bias, lo, hi = r.at([2.0])
    assert bias[0] == pytest.approx(1.4)
    assert hi[0] - bias[0] == pytest.approx(1.959964 * 1.2533141 * 0.2, rel=1e-6)  # Bland & Altman's 2.46·0.2
    assert lo[0] == pytest.approx(2 * bias[0] - hi[0])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.1, 50), st.floats(-5, 5)), min_size=4, max_size=40),
    st.floats(-3, 3),
    st.floats(0.1, 10),
)
def test_regression_limits_follow_a_shift_and_a_scale_of_the_differences(pairs, shift, scale):
    a, d = (np.array(v) for v in zip(*pairs, strict=True))
    if np.ptp(a) < 1e-3:
        return
    base = bias_range.regression_limits(a, d)
    moved = bias_range.regression_limits(a, scale * d + shift)
    tol = 1e-6 * (1 + np.abs(d).max() * scale + abs(shift)) * (1 + a.max())
    assert moved.bias_intercept == pytest.approx(scale * base.bias_intercept + shift, abs=tol)
    assert moved.bias_slope == pytest.approx(scale * base.bias_slope, abs=tol)
    assert moved.spread_slope == pytest.approx(scale * base.spread_slope, abs=tol)


def test_regression_limits_refuse_what_they_cannot_fit():
    with pytest.raises(ValueError, match="at least 3"):
        bias_range.regression_limits([1, 2], [0, 1])
    with pytest.raises(ValueError, match="no spread"):
        bias_range.regression_limits([2, 2, 2], [0, 1, 2])


# --- regression acceptance ----------------------------------------------------------------------


FIT = {"slope": 1.1, "slope_ci": [0.95, 1.25], "intercept": 0.1, "intercept_ci": [-0.3, 0.4]}


def test_regression_criterion_on_the_estimate_or_the_whole_interval():
    crit = RegressionCriterion((0.8, 1.2), 0.5)
    assert judge_regression(FIT, crit, "point_estimate").passed
    on_ci = judge_regression(FIT, crit, "ci")
    assert not on_ci.passed and "slope 1.1 (CI 0.95 to 1.25): CI outside [0.8, 1.2]" in on_ci.reason
    assert "intercept 0.1 (CI −0.3 to 0.4)".replace("−", "-") in on_ci.reason
    assert not judge_regression({**FIT, "intercept": -0.6}, crit, "point_estimate").passed
    assert within(1.2, None, 0.8, 1.2, "point_estimate")  # boundary included
    assert within(None, (0.9, 1.1), 0.8, 1.2, "point_estimate") is None
    failed = judge_regression({"not_computed": "too few"}, crit, "ci")
    assert not failed.passed and "too few" in failed.reason


# --- the verdict: planted outlier, bias intervals, regression criterion ----------------------------


def _rows(n: int = 40, outlier_at: int | None = 7) -> pl.DataFrame:
    rng = np.random.default_rng(3)
    ref = np.round(rng.uniform(1.0, 9.0, n), 2)
    pred = ref * (1 + rng.normal(0, 0.02, n))
    if outlier_at is not None:
        pred[outlier_at] = ref[outlier_at] + 5.0  # planted: 5 × 10^3/µL off
    rule = MeasurandRule(10.0, 0.2)
    err = 100 * (pred - ref) / ref
    return pl.DataFrame(
        {
            "sample_id": [f"S{i:02d}" for i in range(n)],
            "measurand": ["NEUT#"] * n,
            "reference": ref,
            "predicted": pred,
            "difference": pred - ref,
            "error_pct": err,
            "within_limit": within_limit(rule, err, ref),
            "counting_coverage": np.full(n, 0.99),
        }
    )


def _protocol(**changes):
    base = dataclasses.replace(SAMPLE, measurands={"NEUT#": MeasurandRule(10.0, 0.2)}, required_coverage=0.95)
    return dataclasses.replace(base, **changes)


def test_a_planted_outlier_is_listed_and_the_default_verdict_keeps_it():
    verdicts, stats_ = decide(_rows(), _protocol(outliers=OutlierRule()))
    listed = stats_["NEUT#"]["outliers"]["outliers"]
    assert [o["sample_id"] for o in listed] == ["S07"]
    assert listed[0]["r"] > listed[0]["critical"]
    v = verdicts[0]
    assert v.n == 40 and v.n_within == 39 and v.n_outliers == 1 and not v.outliers_removed
    assert "verdict_with_all_samples" not in stats_["NEUT#"]


def test_verdict_without_outliers_states_both():
    verdicts, stats_ = decide(_rows(), _protocol(outliers=OutlierRule(verdict="without")))
    v = verdicts[0]
    assert v.n == 39 and v.n_within == 39 and v.passed and v.outliers_removed
    assert "judged without 1 outlier(s)" in v.reason and "with all 40 samples: PASS" in v.reason
    full = stats_["NEUT#"]["verdict_with_all_samples"]
    assert full["n"] == 40 and full["n_within"] == 39


def test_no_outlier_is_declared_in_clean_data_and_relative_differences_work():
    screen = screen_outliers(_rows(outlier_at=None), OutlierRule(differences="relative"))
    assert screen.outliers == () and screen.n_tested == 40 and screen.max_outliers == 2


def test_relative_screening_lists_samples_it_cannot_test():
    rows = _rows().with_columns(
        error_pct=pl.when(pl.col("sample_id") == "S01").then(None).otherwise(pl.col("error_pct"))
    )
    screen = screen_outliers(rows, OutlierRule(differences="relative"))
    assert screen.n_tested == 39 and screen.not_tested[0][0] == "S01"


def test_too_few_samples_for_esd_says_so():
    screen = screen_outliers(_rows(10, None), OutlierRule())
    assert screen.not_computed is not None and "at least 15" in screen.not_computed


def test_bias_intervals_from_the_protocol_or_tertiles_and_regression_limits_on_request():
    _, default = decide(_rows(), _protocol())
    assert default["NEUT#"]["bias_by_interval"]["source"].startswith("tertiles")
    assert len(default["NEUT#"]["bias_by_interval"]["intervals"]) == 3 and "regression_limits" not in default["NEUT#"]
    _, given_ = decide(_rows(), _protocol(bias_intervals={"NEUT#": (3.0,)}, difference_limits="regression"))
    parts = given_["NEUT#"]["bias_by_interval"]["intervals"]
    assert [p["high"] for p in parts] == [3.0, None] and sum(p["absolute"]["n"] for p in parts) == 40
    assert "bias_slope" in given_["NEUT#"]["regression_limits"]


def test_the_regression_criterion_feeds_the_verdict_with_its_reason():
    tight = MeasurandRule(10.0, 0.2, RegressionCriterion((0.999, 1.001), None))
    verdicts, stats_ = decide(_rows(outlier_at=None), _protocol(measurands={"NEUT#": tight}, regression_basis="ci"))
    v = verdicts[0]
    assert v.n_within == 40 and v.regression_passed is False and not v.passed
    assert "regression criterion NOT met" in v.reason
    assert stats_["NEUT#"]["regression_acceptance"]["basis"] == "ci"
    loose = MeasurandRule(10.0, 0.2, RegressionCriterion((0.8, 1.2), 0.5))
    verdicts, _ = decide(_rows(outlier_at=None), _protocol(measurands={"NEUT#": loose}, regression_basis="ci"))
    assert verdicts[0].passed and verdicts[0].regression_passed


# --- protocol -----------------------------------------------------------------------------------

BASE = "protocol: {id: P, version: '1'}\n"


def _load(tmp_path: Path, text: str):
    f = tmp_path / "p.yaml"
    f.write_text(BASE + text)
    return load_protocol(f)


def test_protocol_reads_the_additions(tmp_path):
    p = _load(
        tmp_path,
        "measurands: {NEUT#: {allowable_error_pct: 10, regression: {slope: [0.8, 1.2], intercept_abs: 0.5}}}\n"
        "acceptance: {regression_basis: ci}\n"
        "outliers: {method: esd, alpha: 0.01, max_share: 0.1, differences: relative, verdict: without}\n"
        "bias_intervals: {NEUT#: [2, 7.5]}\n"
        "difference_plot: {limits: regression}\n"
        "plan: {strata: {normal: 40, leukopenic: 20}, expected_coverage: 0.99}\n",
    )
    assert p.measurands["NEUT#"].regression == RegressionCriterion((0.8, 1.2), 0.5)
    assert p.regression_basis == "ci" and p.difference_limits == "regression"
    assert p.outliers == OutlierRule(alpha=0.01, max_share=0.1, differences="relative", verdict="without")
    assert p.bias_intervals == {"NEUT#": (2.0, 7.5)}
    assert p.plan_strata == {"normal": 40, "leukopenic": 20} and p.plan_expected_coverage == 0.99


def test_protocol_defaults_detect_and_list_outliers(tmp_path):
    p = _load(tmp_path, "measurands: {NEUT#: {allowable_error_pct: 10}}\n")
    assert p.outliers == OutlierRule() and p.outliers.verdict == "with"
    assert p.regression_basis == "point_estimate" and p.difference_limits == "constant" and p.bias_intervals == {}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "measurands: {NEUT#: {allowable_error_pct: 10, regression: {slope: [1.2, 0.8]}}}",
            "measurands.NEUT#.regression.slope",
        ),
        ("measurands: {NEUT#: {allowable_error_pct: 10, regression: {}}}", "names no criterion"),
        ("measurands: {NEUT#: {allowable_error_pct: 10, regression: {slop: [0.8, 1.2]}}}", "did you mean 'slope'"),
        ("measurands: {NEUT#: {allowable_error_pct: 10}}\noutliers: {verdict: maybe}", "outliers.verdict"),
        ("measurands: {NEUT#: {allowable_error_pct: 10}}\noutliers: {max_share: 0.6}", "outliers.max_share"),
        ("measurands: {NEUT#: {allowable_error_pct: 10}}\nbias_intervals: {NEUT#: [5, 2]}", "increasing cut points"),
        ("measurands: {NEUT#: {allowable_error_pct: 10}}\nplan: {strata: {normal: 0}}", "plan.strata.normal"),
        ("measurands: {NEUT#: {allowable_error_pct: 10}}\ndifference_plot: {limits: loess}", "difference_plot.limits"),
    ],
)
def test_protocol_mistakes_in_the_additions_are_named(tmp_path, text, fragment):
    with pytest.raises(WbcvError) as e:
        _load(tmp_path, text + "\n")
    assert fragment in str(e.value)
