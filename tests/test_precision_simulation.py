"""Known truth: a slide re-drawn with replacement (fixtures/simulator.py) has a repeatability SD equal to the
binomial counting floor, within sampling error, and no between-run or between-day variance of its own."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from wbcv.cli import EXIT_OK, main
from wbcv.fixtures.simulator import simulate_precision_study, write_precision_csv
from wbcv.validation.precision_table import run_precision

# a 200-cell slide: 120 N, 60 L, 12 M, 6 E, 2 B (60 %, 30 %, 6 %, 3 %, 1 %)
SLIDE = ["neutrophil"] * 120 + ["lymphocyte"] * 60 + ["monocyte"] * 12 + ["eosinophil"] * 6 + ["basophil"] * 2


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_repeatability_matches_binomial_floor(tmp_path, seed):
    path = tmp_path / "sim.csv"
    write_precision_csv(simulate_precision_study(SLIDE, 20, 2, 2, 200, seed=seed), path)
    report = run_precision(path)
    assert not report.excluded and len(report.groups) == 5
    for g in report.groups:
        assert g.result is not None and g.floor_sd is not None
        p = {"NEUT%": 0.60, "LYMPH%": 0.30, "MONO%": 0.06, "EO%": 0.03, "BASO%": 0.01}[g.measurand]
        floor = 100 * math.sqrt(p * (1 - p) / 200)
        rep = g.result.repeatability
        # (df·s²/σ²) ~ χ²(df) when the floor σ is the truth: s must lie in its two-sided 99.9 % range
        lo = floor * math.sqrt(stats.chi2.ppf(0.0005, rep.df) / rep.df)
        hi = floor * math.sqrt(stats.chi2.ppf(0.9995, rep.df) / rep.df)
        assert lo < rep.sd < hi, (g.measurand, rep.sd, floor)
        # the floor reported is computed from the observed mean: close to the true one
        assert g.floor_sd == pytest.approx(floor, rel=0.25)
        # no day or run effect was simulated: the within-lab SD stays within sampling error of the floor
        assert g.result.within_lab.sd < hi * 1.15


def test_command_on_a_simulated_study(tmp_path, capsys):
    path = tmp_path / "sim.csv"
    write_precision_csv(simulate_precision_study(SLIDE, 5, 1, 5, 100, seed=0), path)  # EP15-A3 5 × 5
    assert main(["precision", str(path)]) == EXIT_OK
    assert "S1 NEUT% (n=25): mean" in capsys.readouterr().out
