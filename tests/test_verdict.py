"""Per-measurand statistics of the verdict: each regression fitted once, the bias at the decision
levels read from those fits, and every label that names a level taking it from the protocol."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl
import pytest

from tests.conftest import REPO
from wbcv.dashboards.app import _verdict_table
from wbcv.validation import regression
from wbcv.validation.figures import coverage_trend_plot
from wbcv.validation.protocol import MeasurandRule, Protocol, load_protocol, within_limit
from wbcv.validation.verdict import decide, format_verdicts, measurand_statistics, to_jsonable

SAMPLE_PROTOCOL = load_protocol(REPO / "fixtures" / "samples" / "protocol.yaml")


def _protocol(confidence: float = 0.95, required: float = 0.95, levels: tuple[float, ...] = (1.5, 7.0)) -> Protocol:
    return dataclasses.replace(
        SAMPLE_PROTOCOL,
        measurands={"NEUT#": MeasurandRule(10.0, 0.2)},
        required_coverage=required,
        confidence=confidence,
        decision_levels={"NEUT#": levels} if levels else {},
    )


def _rows(n: int = 80, seed: int = 1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    ref = np.round(rng.lognormal(1.3, 0.5, n), 2)
    pred = ref * rng.lognormal(0.01, 0.06, n)
    rule = MeasurandRule(10.0, 0.2)
    err = 100 * (pred - ref) / ref
    return pl.DataFrame(
        {
            "sample_id": [f"S{i}" for i in range(n)],
            "measurand": ["NEUT#"] * n,
            "reference": ref,
            "predicted": pred,
            "error_pct": err,
            "within_limit": within_limit(rule, err, ref),
            "counting_coverage": np.full(n, 0.9),
        }
    )


def test_each_regression_is_fitted_once_and_the_bias_comes_from_that_fit(monkeypatch):
    calls: dict[str, int] = {}
    fits: dict[str, Any] = {}

    def counted(name: str) -> Any:
        original = getattr(regression, name)

        def fit(*args: Any, **kwargs: Any) -> Any:
            calls[name] = calls.get(name, 0) + 1
            fits[name] = original(*args, **kwargs)
            return fits[name]

        return fit

    for name in ("passing_bablok", "deming", "weighted_deming", "ols"):
        monkeypatch.setattr(regression, name, counted(name))
    protocol = _protocol(confidence=0.9)
    st = measurand_statistics(_rows(), protocol, "NEUT#")
    assert calls == {"passing_bablok": 1, "deming": 1, "weighted_deming": 1, "ols": 1}
    assert set(st["bias_at_decision_levels"]) == {"passing_bablok", "deming", "weighted_deming"}
    for name, rows in st["bias_at_decision_levels"].items():
        assert rows == to_jsonable(fits[name].bias_at((1.5, 7.0)))
        assert st[name] == to_jsonable(fits[name])
        assert fits[name].alpha == pytest.approx(0.1)  # the protocol's confidence, not a fixed 95 %
    # Deming's bias CI at a level widens with a higher confidence, from the same fit
    wide = fits["deming"].bias_at((7.0,), alpha=0.01)[0]
    assert (
        wide.upper - wide.lower
        > st["bias_at_decision_levels"]["deming"][1]["upper"] - (st["bias_at_decision_levels"]["deming"][1]["lower"])
    )


def test_a_regression_that_cannot_be_fitted_says_why_in_both_places():
    rows = _rows().with_columns(pl.lit(0.0).alias("reference"))  # no spread, and 0 for weighted Deming
    st = measurand_statistics(rows, _protocol(), "NEUT#")
    for name in ("passing_bablok", "deming", "weighted_deming"):
        assert "not_computed" in st[name]
        assert st["bias_at_decision_levels"][name] == st[name]


@pytest.mark.parametrize(("confidence", "required"), [(0.95, 0.95), (0.9, 0.8), (0.99, 0.975)])
def test_the_text_verdict_table_names_the_protocols_confidence_and_coverage(confidence, required):
    verdicts, _ = decide(_rows(), _protocol(confidence, required))
    assert verdicts[0].confidence == confidence
    text = format_verdicts(verdicts)
    head = text.splitlines()[0]
    assert f"{100 * confidence:g}% CI" in head and f"E{100 * required:g} %" in head
    if confidence != 0.95:
        assert "95% CI" not in head
    assert f"({100 * confidence:g} % CI " in text  # the reason line


def test_the_dashboards_verdict_table_names_the_runs_confidence():
    verdicts, _ = decide(_rows(), _protocol(0.9, 0.8))
    run = SimpleNamespace(
        verdicts={v.measurand: dataclasses.asdict(v) for v in verdicts},
        confidence=0.9,
        required_coverage=0.8,
        notes=[],
        run_id="R1",
        summary=SimpleNamespace(
            verdict="pass",
            protocol="P v1",
            model="m",
            n_values=80,
            exclusions_text="0 exclusions",
            domain="not_checked",
        ),
    )
    table = _verdict_table(run, "NEUT#")  # type: ignore[arg-type]
    header = [th.children for th in table.children[1].children[0].children.children]
    assert header == ["measurand", "n", "within", "coverage", "90 % CI", "E80 %", "sampling floor", "verdict"]


def _trend_points(confidences: list[float]) -> pl.DataFrame:
    k = len(confidences)
    return pl.DataFrame(
        {
            "run_id": [f"R{i}" for i in range(k)],
            "created_utc": [f"2024-01-0{i + 1}T00:00:00Z" for i in range(k)],
            "model": ["m"] * k,
            "coverage": [0.96] * k,
            "coverage_lower": [0.9] * k,
            "coverage_upper": [0.99] * k,
            "confidence": confidences,
            "n": [100] * k,
            "passed": [True] * k,
        }
    )


def test_the_coverage_trend_names_the_runs_confidence():
    assert coverage_trend_plot(_trend_points([0.9, 0.9]), "NEUT#", 0.95).data[0].name == "coverage (90 % CI)"
    mixed = coverage_trend_plot(_trend_points([0.9, 0.95]), "NEUT#", 0.95).data[0]
    assert mixed.name == "coverage (CI at each run's confidence)"
    assert [row[3] for row in mixed.customdata] == [90.0, 95.0]
