"""Known-truth tests: injected classifiers on simulated studies give the statistics they must.

The reference analyzer is made exact (no imprecision, no IG, no flags, no reruns) so that the
only error left is what the test controls: counting (oracle) or a known confusion.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.fixtures.classifiers import confused_counts, oracle_counts
from wbcv.fixtures.simulator import StudyConfig, draw_samples, write_sysmex
from wbcv.validation.compare import compare
from wbcv.validation.protocol import load_protocol
from wbcv.validation.reference import read_reference
from wbcv.validation.verdict import decide

EXACT = dataclasses.replace(
    StudyConfig(),
    analyzer_cv=dict.fromkeys(CELL_CLASSES, 0.0),
    wbc_cv=0.0,
    ig_fraction=0.0,
    flagged_fraction=0.0,
    reruns=0,
)
N_SAMPLES, N_CELLS = 400, 200


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    samples = draw_samples(N_SAMPLES, N_CELLS, seed=11, config=EXACT)
    path = tmp_path_factory.mktemp("truth") / "XN_SAMPLE.csv"
    write_sysmex(path, samples, EXACT, seed=11)
    return samples, read_reference(path)


def _protocol(tmp_path: Path, measurands: str) -> object:
    p = tmp_path / "p.yaml"
    p.write_text(f"protocol: {{id: KT, version: '1'}}\nmeasurands: {{{measurands}}}\nexclusions: {{marks: []}}\n")
    return load_protocol(p)


def test_oracle_coverage_agrees_with_the_sampling_floor(study, tmp_path):
    """A perfect classifier is limited by counting alone: its observed coverage must agree with the
    predicted sampling floor within the coverage's confidence interval."""
    samples, ref = study
    proto = _protocol(
        tmp_path,
        "NEUT%: {allowable_error_pct: 10}, LYMPH%: {allowable_error_pct: 10}, "
        "MONO%: {allowable_error_pct: 10}, NEUT#: {allowable_error_pct: 10}",
    )
    verdicts, _ = decide(compare(oracle_counts(samples), ref, proto).table, proto)
    for v in verdicts:
        assert v.n == N_SAMPLES
        assert v.coverage_lower <= v.sampling_floor <= v.coverage_upper, v
    floors = {v.measurand: v.sampling_floor for v in verdicts}
    # README, "Domain facts": with 200 cells a perfect classifier cannot keep monocytes within ±10 %
    assert floors["MONO%"] < 0.5 < floors["NEUT%"] < 0.95
    # relative mode: the same relative error (up to the rounding of the two reference columns)
    assert floors["NEUT#"] == pytest.approx(floors["NEUT%"], abs=0.005)


def test_known_confusion_gives_the_expected_biases(study, tmp_path):
    """10 % of monocytes called lymphocytes: MONO% is biased by -10 %, LYMPH% by +10 % x p_M / p_L."""
    samples, ref = study
    proto = _protocol(tmp_path, "MONO%: {allowable_error_pct: 10}, LYMPH%: {allowable_error_pct: 10}")
    counts = confused_counts(samples, {"monocyte": {"lymphocyte": 0.10}}, seed=3)
    result = compare(counts, ref, proto)
    t = result.table
    mono = t.filter(t["measurand"] == "MONO%")
    lymph = t.filter(t["measurand"] == "LYMPH%")
    # mean relative error over 400 samples; per-sample counting SD of MONO% is about 28 %, SE about 1.4 %
    assert mono["error_pct"].mean() == pytest.approx(-10.0, abs=4.0)
    expected_lymph = np.mean([10.0 * s.true_fractions["monocyte"] / s.true_fractions["lymphocyte"] for s in samples])
    assert lymph["error_pct"].mean() == pytest.approx(expected_lymph, abs=1.5)
    # The reference is exact here, so ordinary least squares of predicted on reference is unbiased:
    # its slope must cover 0.9 with the confusion and 1.0 for the oracle.
    _, stats = decide(t, proto)
    low, high = stats["MONO%"]["ols"]["slope_ci"]
    assert low <= 0.9 <= high and high < 1.0
    oracle_stats = decide(compare(oracle_counts(samples), ref, proto).table, proto)[1]
    low, high = oracle_stats["MONO%"]["ols"]["slope_ci"]
    assert low <= 1.0 <= high
