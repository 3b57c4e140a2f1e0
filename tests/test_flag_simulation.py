"""The simulated flag study (fixtures/simulator.py): flags with known truth for `wbcv qualitative`."""

from __future__ import annotations

import dataclasses

import pytest

from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.fixtures.simulator import (
    FLAG_RULES,
    SimulatedSample,
    draw_samples,
    expected_flag_agreement,
    simulate_flag_study,
    write_flags_csv,
)
from wbcv.validation.flag_table import run_qualitative


def _sample(fractions: dict[str, float], counts: dict[str, int]) -> SimulatedSample:
    return SimulatedSample(
        sample_id="X",
        pattern="healthy",
        true_fractions={c: fractions.get(c, 0.0) for c in CELL_CLASSES},
        true_wbc=6.0,
        slide_counts={c: counts.get(c, 0) for c in CELL_CLASSES},
        imaged_volume_ul=0.03,
    )


def test_expected_agreement_hand_computed():
    # 2 cells, true lymphocyte share 0.5 > 0.45: the flag is set when K > ⌊0.9⌋ = 0, P = 1 - 0.5² = 0.75
    s = _sample({"lymphocyte": 0.5, "neutrophil": 0.5}, {"lymphocyte": 0, "neutrophil": 2})
    ppa, npa = expected_flag_agreement([s])["lymphocytosis"]
    assert ppa == pytest.approx(0.75) and npa is None  # no truth-negative sample: undefined
    row = next(r for r in simulate_flag_study([s]) if r["flag"] == "lymphocytosis")
    assert row == {"sample_id": "X", "flag": "lymphocytosis", "analyzer": 0, "reference": 1}


def test_a_count_exactly_at_the_threshold_is_not_flagged():
    s = _sample({"neutrophil": 0.70, "lymphocyte": 0.30}, {"neutrophil": 140, "lymphocyte": 60})  # 140/200 = 0.70
    row = next(r for r in simulate_flag_study([s]) if r["flag"] == "neutrophilia")
    assert row["analyzer"] == 0 and row["reference"] == 0


@pytest.mark.slow
def test_observed_agreement_matches_the_known_truth(tmp_path):
    samples = draw_samples(400, 200, seed=7)
    path = tmp_path / "flags.csv"
    write_flags_csv(simulate_flag_study(samples), path)
    report = run_qualitative(path, confidence=0.999)
    assert report.excluded == () and {f.flag for f in report.flags} == set(FLAG_RULES)
    expected = expected_flag_agreement(samples)
    for f in report.flags:
        for observed, value in ((f.ppa, expected[f.flag][0]), (f.npa, expected[f.flag][1])):
            assert observed.wilson is not None and value is not None
            assert observed.wilson[0] <= value <= observed.wilson[1], (f.flag, observed, value)
    # counting alone makes the analyzer miss flags near the threshold: monocytes are the worst at 200 cells
    assert expected["monocytosis"][0] is not None and expected["monocytosis"][0] < 0.85


@pytest.mark.slow
def test_more_cells_per_slide_agree_better():
    few = draw_samples(300, 200, seed=3)
    # the same samples (same truth), ten times the cells: the expectation depends on n and the truth only
    many = [dataclasses.replace(s, slide_counts={c: 10 * k for c, k in s.slide_counts.items()}) for s in few]
    low, high = expected_flag_agreement(few), expected_flag_agreement(many)
    for flag in FLAG_RULES:
        for i in (0, 1):
            assert low[flag][i] is not None and high[flag][i] is not None
    assert high["monocytosis"][0] > low["monocytosis"][0] + 0.05  # type: ignore[operator]
    assert sum(high[f][0] + high[f][1] for f in FLAG_RULES) > sum(low[f][0] + low[f][1] for f in FLAG_RULES)  # type: ignore[operator]
