"""The figure builders: the verification plot has the lines of the source study, from real numbers."""

from __future__ import annotations

import numpy as np
import pytest

from wbcv.fixtures.classifiers import oracle_counts
from wbcv.fixtures.simulator import StudyConfig, draw_samples, write_sysmex
from wbcv.validation.compare import compare
from wbcv.validation.figures import (
    COVERAGE_COLOUR,
    LIMIT_COLOUR,
    bland_altman_plot,
    regression_plot,
    verification_plot,
)
from wbcv.validation.protocol import load_protocol
from wbcv.validation.reference import read_reference
from wbcv.validation.verdict import decide


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    d = tmp_path_factory.mktemp("fig")
    samples = draw_samples(60, 200, seed=2)
    write_sysmex(d / "XN.csv", samples, StudyConfig(), seed=2)
    (d / "p.yaml").write_text(
        "protocol: {id: F, version: '1'}\nmeasurands: {NEUT#: {allowable_error_pct: 10}}\n"
        "exclusions: {flags: none, marks: []}\n"
    )
    proto = load_protocol(d / "p.yaml")
    table = compare(oracle_counts(samples), read_reference(d / "XN.csv"), proto).table
    verdicts, stats = decide(table, proto)
    return table, verdicts[0], stats["NEUT#"]


def test_verification_plot_has_points_limit_lines_coverage_lines_and_floor_band(comparison):
    table, verdict, _ = comparison
    fig = verification_plot(table, "NEUT#", 10.0, verdict.coverage_error_pct)
    names = [t.name for t in fig.data]
    points = next(t for t in fig.data if t.name == "samples")
    assert len(points.x) == table.height == 60
    limits = [t for t in fig.data if t.line.color == LIMIT_COLOUR]
    assert sorted(t.y[0] for t in limits) == [-10.0, 10.0] and all(t.line.dash == "dot" for t in limits)
    blue = [t for t in fig.data if t.line.color == COVERAGE_COLOUR]
    assert sorted(t.y[0] for t in blue) == pytest.approx([-verdict.coverage_error_pct, verdict.coverage_error_pct])
    assert "sampling floor (95 % counting band)" in names
    band = next(t for t in fig.data if t.name.startswith("sampling floor"))
    assert len(band.x) == 3 * 60  # one vertical segment per sample
    assert fig.layout.xaxis.title.text == "reference NEUT# (10^3/uL)"
    assert any(t.type == "scattergl" for t in verification_plot(table, "NEUT#", 10.0, None, webgl=True).data)


def test_bland_altman_and_regression_plots_use_the_stored_statistics(comparison):
    table, _, stats = comparison
    ba = bland_altman_plot(table, "NEUT#", stats["bland_altman_absolute"])
    assert any(
        t.name.startswith("bias") and t.y[0] == pytest.approx(stats["bland_altman_absolute"]["bias"]) for t in ba.data
    )
    reg = regression_plot(table, "NEUT#", stats["passing_bablok"], "Passing–Bablok")
    line = next(t for t in reg.data if t.name.startswith("Passing"))
    fit = stats["passing_bablok"]
    assert line.y[0] == pytest.approx(fit["intercept"] + fit["slope"] * line.x[0])


def test_confusion_matrix_plot_shows_counts_and_row_shares():
    from wbcv.validation.figures import confusion_matrix_plot

    cm = np.zeros((5, 6), dtype=int)
    cm[0, 0], cm[0, 5], cm[2, 1] = 90, 10, 7
    heat = confusion_matrix_plot(cm).data[0]
    assert list(heat.x)[-1] == "unclassified" and heat.y[0] == "neutrophil"
    assert heat.text[0][0] == "90<br>90.0 %" and heat.text[0][5] == "10<br>10.0 %"
    assert heat.z[2][1] == 1.0 and heat.z[1][1] == 0.0  # an empty row stays 0, not NaN
    with pytest.raises(ValueError, match="5 x 6"):
        confusion_matrix_plot(np.zeros((5, 5)))
