"""Precision statistics (validation/precision.py) against outside references and properties.

Outside references, all on fixtures/samples/precision.csv (computed there, not by wbcv):

* R 4.x ``stats``: ``anova(lm(value ~ day/run, x))`` (EP05 design, day and run as factors) and
  ``anova(lm(value ~ day, x))`` (EP15 design) give the sums of squares; R's Type I sums of squares
  of the nested model are exactly the nested-ANOVA sums, so the tolerance is floating-point (1e-9).
* R package lme4: ``lmer(value ~ 1 + (1|day) + (1|day:run), x, REML=TRUE)``; for a balanced design
  whose ANOVA estimates are all positive, REML and ANOVA estimates coincide (Searle, Casella &
  McCulloch 1992, ch. 6), so the components must agree to the optimizer's tolerance (relative 1e-4).
* Chi-square quantiles from the NIST/SEMATECH e-Handbook of Statistical Methods, §1.3.6.7.4
  "Critical values of the chi-square distribution" (3 decimals printed; tolerance 5e-4 on the
  quantile).

The R commands are in tests/data/precision_check.R (run: ``Rscript tests/data/precision_check.R``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wbcv.validation.precision import (
    binomial_floor_sd_pct,
    chi_square_sd_interval,
    nested_anova,
    precision_study,
    satterthwaite_df,
    uvl_factor,
    verify_claim,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "samples" / "precision.csv"


def _subset(sample: str, measurand: str) -> pl.DataFrame:
    d = pl.read_csv(FIXTURE)
    return d.filter((pl.col("sample_id") == sample) & (pl.col("measurand") == measurand))


def _study(x: pl.DataFrame):
    return precision_study(x["day"].to_list(), x["value"].to_numpy(), x["run"].to_list())


# R: anova(lm(...)) sums of squares, printed with sprintf("%.8f")
R_SS = {
    ("L1", "NEUT%"): ((19, 186.28437500), (20, 147.93750000), (40, 541.62500000)),
    ("L1", "LYMPH%"): ((19, 422.37500000), (20, 204.62500000), (40, 319.00000000)),
    ("L2", "NEUT%"): ((4, 99.94000000), (0, 0.0), (20, 431.00000000)),
    ("L2", "LYMPH%"): ((4, 61.54000000), (0, 0.0), (20, 447.10000000)),
}


@pytest.mark.parametrize("key", sorted(R_SS))
def test_sums_of_squares_match_r_anova_lm(key):
    t = nested_anova(*(lambda x: (x["day"].to_list(), x["value"].to_numpy(), x["run"].to_list()))(_subset(*key)))
    (df_d, ss_d), (df_r, ss_r), (df_e, ss_e) = R_SS[key]
    assert (t.df_day, t.df_run, t.df_error) == (df_d, df_r, df_e)
    assert t.ss_day == pytest.approx(ss_d, rel=1e-9)
    assert t.ss_run == pytest.approx(ss_r, rel=1e-9, abs=1e-9)
    assert t.ss_error == pytest.approx(ss_e, rel=1e-9)


def test_unbalanced_sums_of_squares_match_r():
    """R: rows 11, 12, 17, 37, 45, 56, 57, 68 (1-based) of L1 NEUT% removed (VCA's unbalanced test pattern)."""
    x = (
        _subset("L1", "NEUT%")
        .with_row_index()
        .filter(~pl.col("index").is_in([i - 1 for i in (11, 12, 17, 37, 45, 56, 57, 68)]))
    )
    t = nested_anova(x["day"].to_list(), x["value"].to_numpy(), x["run"].to_list())
    assert not t.balanced
    assert (t.df_day, t.df_run, t.df_error) == (19, 19, 33)
    assert (t.ss_day, t.ss_run, t.ss_error) == pytest.approx((190.87152778, 157.91666667, 444.875), rel=1e-9)


@pytest.mark.parametrize(
    ("key", "reml"),
    [
        # lme4 VarCorr: day, day:run, Residual (printed with sprintf("%.8f"))
        (("L1", "LYMPH%"), {"between-day": 2.99976289, "between-run": 1.12812664, "repeatability": 7.97499463}),
        (("L2", "NEUT%"), {"between-day": 0.68699984, "repeatability": 21.55000011}),
    ],
)
def test_components_match_lme4_reml_when_all_positive(key, reml):
    r = _study(_subset(*key))
    for name, v in reml.items():
        assert r.component(name).variance == pytest.approx(v, rel=1e-4)
        assert not r.component(name).truncated


def test_negative_component_is_zero_and_left_out_of_within_lab():
    r = _study(_subset("L1", "NEUT%"))  # MS_run 7.397 < MS_error 13.541: between-run estimate negative
    run = r.component("between-run")
    assert run.raw_variance == pytest.approx((147.9375 / 20 - 541.625 / 40) / 2)
    assert run.variance == 0.0 and run.truncated
    # between-day from the raw (untruncated) moment equations: (MS_day - MS_run) / (b n)
    assert r.component("between-day").variance == pytest.approx((186.284375 / 19 - 147.9375 / 20) / 4)
    assert r.within_lab.variance == pytest.approx(r.repeatability.variance + r.component("between-day").variance)


def test_balanced_reduces_to_ep05_worksheet():
    """EP05-A3 balanced formulas: V_e = MS_e, V_run = (MS_run − MS_e)/n, V_day = (MS_day − MS_run)/(b·n),
    within-lab df = (a_d MS_d + a_r MS_r + a_e MS_e)² / Σ (a MS)²/df with a_d = 1/(bn), a_r = (b−1)/(bn),
    a_e = (n−1)/n."""
    x = _subset("L1", "LYMPH%")
    r = _study(x)
    t = r.anova
    b, n = 2, 2
    assert r.repeatability.variance == pytest.approx(t.ms_error)
    assert r.component("between-run").variance == pytest.approx((t.ms_run - t.ms_error) / n)
    assert r.component("between-day").variance == pytest.approx((t.ms_day - t.ms_run) / (b * n))
    coef = (1 / (b * n), (b - 1) / (b * n), (n - 1) / n)
    ms = (t.ms_day, t.ms_run, t.ms_error)
    expected_df = sum(c * m for c, m in zip(coef, ms, strict=True)) ** 2 / sum(
        (c * m) ** 2 / d for c, m, d in zip(coef, ms, (19, 20, 40), strict=True)
    )
    assert r.within_lab.df == pytest.approx(expected_df)


def test_ep15_single_factor_df_formula():
    """EP15-A3: df_WL = ((n−1)·MS_within + MS_between)² / ((n−1)·MS_within²/D + MS_between²/(D−1))."""
    r = _study(_subset("L2", "NEUT%"))
    t = r.anova
    n, days = 5, 5
    expected = ((n - 1) * t.ms_error + t.ms_day) ** 2 / ((n - 1) * t.ms_error**2 / days + t.ms_day**2 / (days - 1))
    assert r.within_lab.df == pytest.approx(expected)
    assert [c.name for c in r.components] == ["repeatability", "between-day", "within-laboratory"]


def _expected_ss_coefficients(day: np.ndarray, run: np.ndarray) -> np.ndarray:
    """E[SS] for unit σ²_day, σ²_run, σ²_e by tr(A·Z Zᵀ) of the quadratic forms (an independent route)."""
    n = day.size

    def proj(codes: np.ndarray) -> np.ndarray:
        z = (codes[:, None] == np.unique(codes)[None, :]).astype(float)
        return z @ np.linalg.pinv(z)

    p1, pd, pr = np.full((n, n), 1.0 / n), proj(day), proj(run)
    forms = (pd - p1, pr - pd, np.eye(n) - pr)
    zd = (day[:, None] == np.unique(day)[None, :]).astype(float)
    zr = (run[:, None] == np.unique(run)[None, :]).astype(float)
    covs = (zd @ zd.T, zr @ zr.T, np.eye(n))
    return np.array([[np.trace(a @ v) for v in covs] for a in forms])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.integers(1, 4), min_size=2, max_size=3), min_size=3, max_size=6))
def test_unbalanced_ems_coefficients_match_quadratic_forms(design):
    day = np.array([i for i, runs in enumerate(design) for j, reps in enumerate(runs) for _ in range(reps)])
    run = np.array([i * 10 + j for i, runs in enumerate(design) for j, reps in enumerate(runs) for _ in range(reps)])
    if day.size - np.unique(run).size < 1:
        return
    t = nested_anova(day, np.arange(day.size, dtype=float), run % 10)
    e = _expected_ss_coefficients(day, run)
    assert e[0] / t.df_day == pytest.approx([t.k_day, t.k_run_in_day, 1.0], abs=1e-9)
    assert e[1] / t.df_run == pytest.approx([0.0, t.k_run, 1.0], abs=1e-9)
    assert e[2] / t.df_error == pytest.approx([0.0, 0.0, 1.0], abs=1e-9)


_values = st.lists(st.floats(-50, 50, allow_nan=False), min_size=24, max_size=24)


@settings(max_examples=60, deadline=None)
@given(_values, st.floats(-1e3, 1e3), st.floats(0.1, 10))
def test_shift_and_scale(values, shift, scale):
    day = [i // 6 for i in range(24)]
    run = [(i // 3) % 2 for i in range(24)]
    base = precision_study(day, values, run)
    moved = precision_study(day, [v * scale + shift for v in values], run)
    for c0, c1 in zip(base.components, moved.components, strict=True):
        assert c1.variance >= 0
        assert c1.variance == pytest.approx(c0.variance * scale**2, rel=1e-6, abs=1e-6 * scale**2)
        assert c1.truncated == c0.truncated or abs(c0.raw_variance) < 1e-9
    assert moved.within_lab.variance == pytest.approx(
        sum(c.variance for c in moved.components[:-1]), rel=1e-12, abs=1e-12
    )


def test_uvl_factor_against_nist_chi_square_table():
    # NIST e-Handbook 1.3.6.7.4: χ²(0.95; 20) = 31.410, χ²(0.975; 20) = 34.170, χ²(0.95; 10) = 18.307
    assert uvl_factor(20, n_samples=1) == pytest.approx(math.sqrt(31.410 / 20), abs=1e-4)
    assert uvl_factor(20, n_samples=2) == pytest.approx(math.sqrt(34.170 / 20), abs=1e-4)
    assert uvl_factor(10) == pytest.approx(math.sqrt(18.307 / 10), abs=1e-4)
    assert math.isnan(uvl_factor(0))


def test_sd_interval_against_nist_chi_square_table():
    # NIST: χ²(0.975; 40) = 59.342, χ²(0.025; 40) = 24.433
    lo, hi = chi_square_sd_interval(2.0, 40)
    assert lo == pytest.approx(2.0 * math.sqrt(40 / 59.342), abs=1e-4)
    assert hi == pytest.approx(2.0 * math.sqrt(40 / 24.433), abs=1e-4)
    assert all(math.isnan(v) for v in chi_square_sd_interval(2.0, math.nan))


def test_verify_claim_three_outcomes():
    f = uvl_factor(20)
    assert verify_claim("repeatability", 1.0, 1.2, 20).verified is True
    assert verify_claim("repeatability", 1.2 * f * 0.999, 1.2, 20).reason == "claim < observed ≤ UVL"
    v = verify_claim("repeatability", 1.2 * f * 1.001, 1.2, 20)
    assert v.verified is False and v.uvl == pytest.approx(1.2 * f)
    assert verify_claim("within-laboratory", 1.0, 1.2, math.nan).verified is None
    with pytest.raises(ValueError):
        verify_claim("repeatability", 1.0, 0.0, 20)


def test_satterthwaite_single_term_is_its_df():
    assert satterthwaite_df([1.0], [3.0], [17]) == pytest.approx(17)
    assert math.isnan(satterthwaite_df([1.0, 1.0], [0.0, 0.0], [3, 4]))


def test_binomial_floor():
    assert binomial_floor_sd_pct(60.0, 200) == pytest.approx(100 * math.sqrt(0.6 * 0.4 / 200))  # 3.46 points
    assert binomial_floor_sd_pct(60.0, 200) == pytest.approx(3.4641, abs=1e-4)
    assert binomial_floor_sd_pct(0.0, 200) == 0.0
    assert math.isnan(binomial_floor_sd_pct(101.0, 200)) and math.isnan(binomial_floor_sd_pct(50.0, 0))


@pytest.mark.parametrize(
    ("day", "value", "run", "message"),
    [
        ([1, 1, 1], [1.0, 2.0, 3.0], None, "at least 2 days"),
        ([1, 2], [1.0, 2.0], None, "no run has two replicates"),
        ([1, 1, 2, 2], [1.0, math.nan, 2.0, 3.0], None, "NaN"),
    ],
)
def test_bad_designs(day, value, run, message):
    with pytest.raises(ValueError, match=message):
        nested_anova(day, value, run)
