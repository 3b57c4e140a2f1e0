"""The figure builders: the verification plot has the lines of the source study, from real numbers."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO
from wbcv.fixtures.classifiers import oracle_counts
from wbcv.fixtures.simulator import StudyConfig, draw_samples, write_sysmex
from wbcv.validation.compare import COMPARISON_SCHEMA, _one_value, compare
from wbcv.validation.figures import (
    COVERAGE_COLOUR,
    LIMIT_COLOUR,
    bland_altman_plot,
    regression_plot,
    verification_plot,
)
from wbcv.validation.protocol import (
    LIMIT_TOLERANCE_PCT,
    MeasurandRule,
    effective_limit_pct,
    load_protocol,
)
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


# --- the limit lines are the effective limit that the comparison judges by ---

SAMPLE_PROTOCOL = load_protocol(REPO / "fixtures" / "samples" / "protocol.yaml")


def _judged(rule: MeasurandRule, refs: np.ndarray, fractions: np.ndarray) -> pl.DataFrame:
    """Comparison rows of NEUT% (predicted = 100 · fraction) as wbcv.validation.compare makes them."""
    protocol = dataclasses.replace(SAMPLE_PROTOCOL, measurands={"NEUT%": rule}, exclude_marks=(), min_reference={})
    rows = []
    for i, (ref, f) in enumerate(zip(refs, fractions, strict=True)):
        counts = {"fraction_neutrophil": f, "n_cells": 200, "n_classified": 200, "n_unclassified": 0}
        reference = {"NEUT%": float(ref), "NEUT% status": "ok", "NEUT% marks": "", "flags": [], "source_row": i}
        row, excluded = _one_value("NEUT%", rule, counts, reference, protocol, None)
        if excluded is None:
            rows.append({"sample_id": f"S{i}", "measurand": "NEUT%", **row})
    return pl.DataFrame(rows, schema=COMPARISON_SCHEMA)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.floats(1.0, 50.0),
    st.one_of(st.none(), st.floats(0.05, 10.0)),
    st.lists(st.tuples(st.floats(-3.0, 3.0), st.floats(-2.5, 2.5), st.booleans()), min_size=1, max_size=40),
)
def test_a_point_is_inside_the_drawn_limit_lines_iff_the_comparison_counts_it_within(limit, absolute, points):
    """Random protocols (L, optional A) and samples around the knee 100·A/L of the limit, with errors
    up to 2.5 times the effective limit, some exactly on it: inside the red lines at its reference
    value (to the decision's 1e-12 points allowance) exactly when `within_limit` is true."""
    rule = MeasurandRule(limit, absolute)
    knee = 100 * absolute / limit if absolute is not None else 20.0
    refs = np.clip(knee * np.exp([p[0] for p in points]), 0.01, 100.0)
    eff = effective_limit_pct(rule, refs)
    share = np.array([np.sign(p[1]) if p[2] else p[1] for p in points])  # ±1: exactly on the limit
    fractions = refs * (1 + share * eff / 100) / 100
    rows = _judged(rule, refs, fractions)
    assume(rows.height > 0)
    fig = verification_plot(rows, "NEUT%", limit, None, absolute_limit=absolute)
    upper, lower = (t for t in fig.data if t.line.color == LIMIT_COLOUR)
    assert np.array_equal(upper.x, lower.x) and np.array_equal(upper.y, -lower.y)
    assert np.all(np.diff(upper.x) > 0)
    x, e = rows["reference"].to_numpy(), rows["error_pct"].to_numpy()
    drawn = np.interp(x, upper.x, upper.y)
    inside = np.abs(e) <= drawn + LIMIT_TOLERANCE_PCT
    assert inside.tolist() == rows["within_limit"].to_list()
    # the effective limit, cut (where it tends to infinity as x -> 0) only above every sample's |error|
    np.testing.assert_array_equal(upper.y, np.minimum(effective_limit_pct(rule, upper.x), upper.y.max()))
    assert np.all((upper.y == effective_limit_pct(rule, upper.x)) | (upper.y > np.abs(e).max()))


def test_the_limit_lines_widen_below_the_knee_with_the_legend_naming_both_limits(comparison):
    table, verdict, _ = comparison
    fig = verification_plot(table, "NEUT#", 10.0, verdict.coverage_error_pct, absolute_limit=0.2)
    upper = next(t for t in fig.data if t.line.color == LIMIT_COLOUR and t.showlegend)
    assert upper.name == "±10 % allowable error or ±0.2 10^3/uL, whichever is wider"
    low = table.filter(pl.col("reference") < 2.0)["reference"].to_numpy()
    assert low.size > 0  # the simulated study has neutropenic samples below the knee at 2.0
    np.testing.assert_allclose(np.interp(low, upper.x, upper.y), np.minimum(20.0 / low, upper.y.max()), rtol=1e-12)
    assert np.interp(2.5, upper.x, upper.y) == 10.0
    assert all(t.line.dash == "dot" for t in fig.data if t.line.color == LIMIT_COLOUR)
