"""The report shows the EP09c additions: outliers listed, the verdict with all samples when judged
without them, the bias by concentration interval, the regression criterion and the regression-based
limits of agreement on the difference plot."""

from __future__ import annotations

import dataclasses
import re

import pytest

from tests.test_report import study_run  # noqa: F401  (the module-scoped simulated study run)
from wbcv.validation.report import ep09_view, load_report_data, render_html

SCREEN = {
    "method": "esd",
    "differences": "absolute",
    "alpha": 0.05,
    "max_share": 0.05,
    "n_tested": 40,
    "max_outliers": 2,
    "outliers": [
        {
            "sample_id": "S07",
            "reference": 4.0,
            "predicted": 9.0,
            "difference": 5.0,
            "step": 1,
            "r": 6.1,
            "critical": 2.9,
        }
    ],
    "not_tested": [["S01", "relative difference undefined (reference 0)"]],
    "not_computed": None,
}
LIMITS = {"n": 40, "bias_intercept": 0.1, "bias_slope": 0.02, "spread_intercept": 0.05, "spread_slope": 0.01}


def test_ep09_view_lists_outliers_intervals_and_criteria():
    interval = {"n": 3, "mean": 0.5, "sd": 0.1, "lower": 0.25, "upper": 0.75, "confidence": 0.95}
    st = {
        "outliers": SCREEN,
        "verdict_with_all_samples": {"passed": False, "reason": "38 of 40 samples within ±10 %"},
        "bias_by_interval": {
            "cuts": [2.0],
            "source": "protocol",
            "intervals": [
                {"low": None, "high": 2.0, "absolute": interval, "percent": None},
                {"low": 2.0, "high": None, "absolute": None, "percent": None},
            ],
        },
        "regression_limits": {**LIMITS, "z": 1.959963984540054},
        "regression_acceptance": {"passed": True, "basis": "point_estimate", "reason": "Passing–Bablok slope 1.01"},
    }
    view = ep09_view(st, {"outliers_removed": True})
    assert view["outliers"]["rows"] == [["S07", "4", "9", "5", "6.1", "2.9"]] and view["outliers"]["removed"]
    assert "1 outlier(s)" in view["outliers"]["summary"] and "S01" in view["outliers"]["not_tested"][0]
    assert view["with_all"].startswith("FAIL: 38 of 40")
    assert view["intervals"]["rows"] == [
        ["< 2", "3", "0.5", "0.25 to 0.75", "–", "no sample"],
        ["≥ 2", "0", "–", "no sample", "–", "no sample"],
    ]
    assert "2.46·(0.05 + 0.01·A)" in view["regression_limits"]
    assert view["regression_acceptance"].startswith("met (point estimate)")


@pytest.mark.slow
def test_report_html_has_the_ep09_sections(study_run):  # noqa: F811
    data = load_report_data(study_run["compare"])
    text = re.sub(r"<script.*?</script>", "", render_html(data), flags=re.S)
    assert text.count("<h3>Bias by concentration interval</h3>") == sum(1 for v in data.verdicts if v["n"] >= 3)
    assert "tertiles of the reference values" in text and "<h3>Outliers</h3>" in text
    assert "Regression-based limits of agreement" in text  # methods
    # statistics with regression limits (a protocol asking for them): the difference plot draws them
    name = data.verdicts[0]["measurand"]
    stats = {**data.statistics, name: {**data.statistics[name], "regression_limits": {**LIMITS, "z": 1.96}}}
    html = render_html(dataclasses.replace(data, statistics=stats))
    assert '"name":"regression limits"' in html and "Regression-based limits of agreement</b>" in html


def test_a_measurand_without_statistics_has_an_empty_view():
    """No sample compared: every part of the view is None, so the template shows nothing of it."""
    assert set(ep09_view({}, {}).values()) == {None}
