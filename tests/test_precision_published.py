"""The precision statistics against a published worked example: CLSI EP05-A3 (2014), Appendix A.

The example: glucose, one sample, 20 days x 2 runs x 2 replicates (EP05-A3 Table A1, 80 results in
mg/dL). Its ANOVA table (sums of squares and degrees of freedom) and the results of R package VCA
(Schuetzenmeister & Dufey, Roche; the ANOVA estimator checked by its authors against SAS PROC NESTED
and PROC MIXED method=type1) are printed in the unit tests of R package mcradds (Kai Gu),
``tests/testthat/test-vca.R``: ``anovaVCA(value ~ day / run, glucose)`` and ``VCAinference(fit)``,
where ``glucose`` is Table A1 (mcradds ``R/data.R``: "CLSI-EP05A3 Table A1. Glucose Precision
Evaluation Measurements (mg/dL)"). Printed there:

======== ===== ===== ========= ========= ======== ======== =========
term     DF    SS    MS        VC        %Total   SD       CV[%]
======== ===== ===== ========= ========= ======== ======== =========
total    64.77       .         12.933553 100      3.596325 1.4726965
day      19    415.8 21.88421  1.958553  15.14319 1.399483 0.5730889
day:run  20    281.0 14.05000  3.075000  23.77537 1.753568 0.7180867
error    40    316.0 7.90000   7.900000  61.08144 2.810694 1.1509803
======== ===== ===== ========= ========= ======== ======== =========

and the two-sided 95 % intervals of the CV: total 1.2569983–1.778450 %, error 0.9449697–1.472683 %.
The 80 values themselves are not in any text we could reach (VCA and mcradds ship them as binary R
data), so the check starts from the published ANOVA table: it checks the moment equations, the
negative-component rule's absence here, the Satterthwaite degrees of freedom of the
within-laboratory SD (EP05-A3 prints 65, rounded; VCA 64.77), the chi-square intervals and the CVs.
The sums of squares themselves are checked against R's ``anova(lm(...))`` in tests/test_precision.py.
The grand mean is not printed; it follows from SD/CV: 3.596325 / 1.4726965 % = 244.20 mg/dL.

Tolerance: relative 1e-6 (the printed values have 7 significant digits), 2e-6 for the intervals.
"""

from __future__ import annotations

import pytest

from wbcv.validation.precision import NestedAnova, components_from_anova

# EP05-A3 Table A1 design: 20 days, 2 runs per day, 2 replicates per run (balanced)
EP05_A3_GLUCOSE = NestedAnova(
    n_obs=80,
    n_days=20,
    n_runs=40,
    mean=3.596325 / 0.014726965,  # 244.20: from the printed total SD and CV
    balanced=True,
    ss_day=415.8,
    ss_run=281.0,
    ss_error=316.0,
    df_day=19,
    df_run=20,
    df_error=40,
    k_run=2.0,  # n replicates
    k_run_in_day=2.0,  # n replicates
    k_day=4.0,  # b runs x n replicates
)

# VCA anovaVCA as printed in mcradds tests/testthat/test-vca.R: (VC, %Total, SD, CV[%])
VCA_PRINTED = {
    "between-day": (1.958553, 15.14319, 1.399483, 0.5730889),
    "between-run": (3.075000, 23.77537, 1.753568, 0.7180867),
    "repeatability": (7.900000, 61.08144, 2.810694, 1.1509803),
    "within-laboratory": (12.933553, 100.0, 3.596325, 1.4726965),
}
VCA_TOTAL_DF = 64.77732  # the "DF" of the total row
VCA_CV_INTERVALS = {"within-laboratory": (1.2569983, 1.778450), "repeatability": (0.9449697, 1.472683)}


def test_mean_squares_as_printed():
    t = EP05_A3_GLUCOSE
    assert (t.ms_day, t.ms_run, t.ms_error) == pytest.approx((21.88421, 14.05, 7.9), rel=1e-6)


@pytest.mark.parametrize("name", sorted(VCA_PRINTED))
def test_components_match_vca_on_the_ep05_a3_example(name):
    r = components_from_anova(EP05_A3_GLUCOSE)
    vc, pct_total, sd, cv = VCA_PRINTED[name]
    c = r.component(name)
    assert c.variance == pytest.approx(vc, rel=1e-6)
    assert 100 * c.variance / r.within_lab.variance == pytest.approx(pct_total, rel=1e-6)
    assert c.sd == pytest.approx(sd, rel=1e-6)
    assert c.cv_pct == pytest.approx(cv, rel=1e-6)
    assert not c.truncated


def test_within_lab_degrees_of_freedom_match_vca_and_ep05_a3():
    df = components_from_anova(EP05_A3_GLUCOSE).within_lab.df
    assert df == pytest.approx(VCA_TOTAL_DF, rel=1e-6)
    assert round(df) == 65  # EP05-A3 Appendix A: within-laboratory df 65
    assert components_from_anova(EP05_A3_GLUCOSE).repeatability.df == 40


@pytest.mark.parametrize("name", sorted(VCA_CV_INTERVALS))
def test_cv_intervals_match_vcainference(name):
    r = components_from_anova(EP05_A3_GLUCOSE)
    c = r.component(name)
    assert c.sd_lower is not None and c.sd_upper is not None
    lo, hi = (100 * v / r.mean for v in (c.sd_lower, c.sd_upper))
    assert (lo, hi) == pytest.approx(VCA_CV_INTERVALS[name], rel=2e-6)


def test_between_components_carry_no_interval_as_vca_by_default():
    """VCAinference gives intervals for total and error only unless VarVC=TRUE is asked (its NA rows)."""
    r = components_from_anova(EP05_A3_GLUCOSE)
    for name in ("between-day", "between-run"):
        assert r.component(name).sd_lower is None and r.component(name).df is None
