"""The confidence interval of Cohen's kappa (validation/cell_metrics.py): Fleiss, Cohen & Everitt 1969.

Checked against published values and against R's vcd::Kappa formula restated independently:

* vcd's manual example ``Kappa(SexualFun)`` (Agresti's husband-wife table; vcd prints value and ASE
  to 4 significant digits): unweighted 0.1293, ASE 0.06860; weighted (equal spacing = linear)
  0.2374, ASE 0.07832.
* Fleiss, Levin & Paik, Statistical Methods for Rates and Proportions, 3rd ed. (2003), section 18.1:
  two diagnosticians, 100 patients, three diagnoses, kappa 0.676 with standard error 0.088 and
  95 % interval 0.50 to 0.85.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wbcv.validation.cell_metrics import kappa_interval, kappa_standard_error, weighted_kappa
from wbcv.validation.preclassification import preclassification_statistics

SEXUAL_FUN = np.array([[7, 7, 2, 3], [2, 8, 3, 7], [1, 5, 4, 9], [2, 8, 9, 14]])
FLEISS = np.array([[75, 1, 4], [5, 4, 1], [0, 0, 10]])


def test_vcd_kappa_sexualfun_example():
    assert weighted_kappa(SEXUAL_FUN, "none") == pytest.approx(0.1293, abs=5e-5)
    assert kappa_standard_error(SEXUAL_FUN, "none") == pytest.approx(0.06860, abs=5e-6)
    assert weighted_kappa(SEXUAL_FUN, "linear") == pytest.approx(0.2374, abs=5e-5)
    assert kappa_standard_error(SEXUAL_FUN, "linear") == pytest.approx(0.07832, abs=5e-6)


def test_fleiss_levin_paik_example():
    assert weighted_kappa(FLEISS, "none") == pytest.approx(0.676, abs=5e-4)
    assert kappa_standard_error(FLEISS, "none") == pytest.approx(0.088, abs=5e-4)
    low, high = kappa_interval(FLEISS, "none", 0.95)
    assert (round(low, 2), round(high, 2)) == (0.50, 0.85)


def vcd_ase(x: np.ndarray, w: np.ndarray) -> float:
    """vcd::Kappa's std(), line by line: sweep(sweep(W, 1, W %*% colSums(p) * (1 - kw)), 2,
    W %*% rowSums(p) * (1 - kw)), squared, weighted by p, minus (kw - pc (1 - kw))^2, over (1 - pc)^2 n."""
    n = x.sum()
    p = x / n
    col_freqs, row_freqs = x.sum(axis=0) / n, x.sum(axis=1) / n
    pc = float(np.sum(w * np.outer(col_freqs, row_freqs)))
    kw = (float(np.sum(w * x) / n) - pc) / (1 - pc)
    swept = w - (w @ p.sum(axis=0) * (1 - kw))[:, None]
    swept = swept - (w @ p.sum(axis=1) * (1 - kw))[None, :]
    var = (np.sum(p * swept**2) - (kw - pc * (1 - kw)) ** 2) / (1 - pc) ** 2 / n
    # a variance of 0 that rounds below 0 (one rater using one category: kappa is 0 for any table
    # with those margins) is 0 here; R's sqrt gives NaN with a warning
    return float(np.sqrt(max(var, 0.0)))


@settings(max_examples=60, deadline=None)
@given(arrays(np.int64, st.tuples(st.integers(2, 6)).map(lambda t: (t[0], t[0])), elements=st.integers(0, 40)))
def test_matches_vcds_formula_for_any_table(x):
    k = x.shape[0]
    rows, cols = x.sum(axis=1), x.sum(axis=0)
    if x.sum() == 0 or float(np.sum(np.outer(rows, cols) * np.eye(k))) == float(x.sum()) ** 2:
        assert np.isnan(kappa_standard_error(x, "none"))
        return
    idx = np.arange(k)
    equal_spacing = 1 - np.abs(idx[:, None] - idx[None, :]) / (k - 1)
    assert kappa_standard_error(x, "none") == pytest.approx(
        vcd_ase(x, np.eye(k)), rel=1e-9, abs=1e-6
    )  # a variance of 0 up to rounding
    assert kappa_standard_error(x, "linear") == pytest.approx(
        vcd_ase(x, equal_spacing), rel=1e-9, abs=1e-6
    )  # a variance of 0 up to rounding
    low, high = kappa_interval(x, "none", 0.95)
    assert -1.0 <= low <= weighted_kappa(x, "none") <= high <= 1.0  # clipped to kappa's range, as vcd


def test_an_interval_reaching_past_one_is_clipped_as_vcd_does():
    """Near-perfect agreement on few samples: the Wald interval runs past 1 (vcd's confint.Kappa
    clips it: ``min(1, kappa + q * ASE)``)."""
    table = np.array([[9, 1], [0, 10]])
    kappa, se = weighted_kappa(table, "none"), kappa_standard_error(table, "none")
    assert kappa + 1.96 * se > 1.0  # the unclipped bound would leave kappa's range
    low, high = kappa_interval(table, "none", 0.95)
    assert high == 1.0 and low == pytest.approx(kappa - 1.959964 * se, rel=1e-6)


def test_undefined_kappa_has_no_interval():
    one_category = np.array([[5, 0], [0, 0]])
    assert np.isnan(kappa_standard_error(one_category, "none"))
    assert all(np.isnan(kappa_interval(one_category, "none", 0.95)))
    assert np.isnan(kappa_standard_error(np.zeros((3, 3)), "none"))
    with pytest.raises(ValueError, match="square"):
        kappa_standard_error(np.ones((2, 3)), "none")


def test_the_interval_narrows_as_the_sample_grows():
    widths = [np.subtract(*kappa_interval(FLEISS * m, "none", 0.95)[::-1]) for m in (1, 4, 16)]
    assert widths[0] == pytest.approx(2 * widths[1]) and widths[1] == pytest.approx(2 * widths[2])


def test_preclassification_statistics_carry_the_kappa_intervals():
    import polars as pl

    pairs = pl.DataFrame(
        {
            "sample_id": ["s"] * 6,
            "preclassified": ["neutrophil", "neutrophil", "lymphocyte", "lymphocyte", "monocyte", "neutrophil"],
            "verified": ["neutrophil", "neutrophil", "lymphocyte", "monocyte", "monocyte", "lymphocyte"],
        }
    ).with_columns(preclassified_target=pl.col("preclassified"), verified_target=pl.col("verified"))
    st_ = preclassification_statistics(pairs, 0.95)
    low, high = st_["kappa_ci"]
    assert low < st_["kappa"] < high
    assert st_["kappa_quadratic_ci"] is not None
