"""`wbcv plan`: the sample-size arithmetic (exact binomial), the plan files and their manifest, and
`wbcv compare --plan` recording the plan, with the report saying whether the protocol changed since."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from tests.test_report import study_run  # noqa: F401  (the module-scoped simulated study run)
from wbcv.base.errors import WbcvError
from wbcv.validation.agreement import clopper_pearson
from wbcv.validation.plan import (
    least_passing_count,
    pass_probability,
    plan_size,
    protocol_changes,
    read_plan,
    write_plan,
)
from wbcv.validation.protocol import load_protocol
from wbcv.validation.report import load_report_data, render_html
from wbcv.validation.study import load_comparison, run_comparison

PROTOCOL = """protocol: {id: P, version: '1', title: Plan test}
measurands: {NEUT#: {allowable_error_pct: 10, regression: {slope: [0.8, 1.2], intercept_abs: 0.5}}}
acceptance: {basis: lower_bound}
plan: {strata: {normal: 40, leukopenic: 20, abnormal: 20}, expected_coverage: 0.99}
"""


def test_least_passing_count_hand_computed():
    # all 72 within: lower bound 0.025^(1/72) = 0.95006 >= 0.95; 71 of 72 falls below
    assert least_passing_count(72, 0.95, 0.95, "lower_bound") == 72
    assert least_passing_count(20, 0.95, 0.95, "lower_bound") is None  # 0.025^(1/20) = 0.832
    assert least_passing_count(100, 0.95, 0.95, "point_estimate") == 95
    assert least_passing_count(142, 0.95, 0.95, "lower_bound") == 140  # samples_needed's 0.99 example


def test_pass_probability_hand_computed():
    # n = 72 needs all 72 within: P = p^72
    assert pass_probability(72, 0.99, 0.95, 0.95, "lower_bound") == pytest.approx(0.99**72)
    assert pass_probability(20, 0.999, 0.95, 0.95, "lower_bound") == 0.0


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 120),
    st.floats(0.5, 1.0),
    st.sampled_from([0.8, 0.9, 0.95]),
    st.sampled_from([0.9, 0.95]),
    st.sampled_from(["lower_bound", "point_estimate"]),
)
def test_pass_probability_equals_the_sum_over_passing_counts(n, p, required, confidence, basis):
    """An independent route: every count k judged by the verdict's own rule (Clopper–Pearson of
    wbcv.validation.agreement), the binomial probabilities of the passing ones summed."""

    def passes(k: int) -> bool:
        ci = clopper_pearson(k, n, confidence)
        return (ci.estimate if basis == "point_estimate" else ci.lower) >= required - 1e-12

    expected = sum(stats.binom.pmf(k, n, p) for k in range(n + 1) if passes(k))
    assert pass_probability(n, p, required, confidence, basis) == pytest.approx(expected, abs=1e-9)


def test_plan_size_takes_the_largest_need(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(PROTOCOL)
    size = plan_size(load_protocol(f))
    assert (size.n_coverage, size.k_within, size.n_strata, size.n_planned) == (142, 140, 80, 142)
    assert size.pass_probability == pytest.approx(stats.binom.sf(139, 142, 0.99))
    f.write_text(PROTOCOL.replace("expected_coverage: 0.99", "expected_coverage: 0.94"))
    size = plan_size(load_protocol(f))
    assert size.n_coverage is None and "must exceed" in size.note and size.n_planned == 80


@pytest.mark.slow
def test_plan_files_manifest_and_tampering(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(PROTOCOL)
    manifest = write_plan(f, tmp_path / "plan")
    files = json.loads(manifest.read_text())["files"]
    assert set(files) == {"plan.json", "plan.html", "plan.pdf"}
    html = (tmp_path / "plan" / "plan.html").read_text()
    assert "142 (140 expected within limits" in html and "leukopenic" in html and "Approved by" in html
    assert read_plan(tmp_path / "plan").strata == {"normal": 40, "leukopenic": 20, "abnormal": 20}
    with pytest.raises(WbcvError, match="never overwritten"):
        write_plan(f, tmp_path / "plan")
    (tmp_path / "plan" / "plan.json").write_text("{}")
    with pytest.raises(WbcvError, match=r"plan\.json: missing or changed"):
        read_plan(tmp_path / "plan")


@pytest.mark.slow
def test_compare_records_the_plan_and_the_report_warns_when_the_protocol_changed(study_run, tmp_path):  # noqa: F811
    """End to end: plans made from the applied protocol, from a copy differing in a comment only, and
    from one whose NEUT# allowable error and required coverage were different when the plan was signed
    (the criteria were changed after the plan): the run records the changed fields, the report warns and
    names them, the command line prints them."""
    record = load_comparison(study_run["compare"])
    protocol_file = record.inputs.protocol.path
    text = protocol_file.read_text()
    comment_only = tmp_path / "comment-only.yaml"
    comment_only.write_text(text + "\n# edited after the plan\n")
    criteria = tmp_path / "criteria.yaml"
    planned_text = text.replace("NEUT#: {allowable_error_pct: 10,", "NEUT#: {allowable_error_pct: 15,")
    criteria.write_text(planned_text.replace("required_coverage: 0.95", "required_coverage: 0.9"))
    assert criteria.read_text().count("allowable_error_pct: 15") == 1
    cases = {
        "same": (protocol_file, (), "criteria unchanged since the plan"),
        "comment": (comment_only, (), "every field applied is as planned"),
        "criteria": (
            criteria,
            (
                "measurands.NEUT#.allowable_error_pct: 15.0 (plan) → 10.0 (applied)",
                "required_coverage: 0.9 (plan) → 0.95 (applied)",
            ),
            "warning: the protocol differs from the signed plan",
        ),
    }
    for name, (planned_from, changes, expected) in cases.items():
        write_plan(planned_from, tmp_path / name)
        result = run_comparison(
            study_run["infer"],
            record.inputs.reference.path,
            protocol_file,
            tmp_path / f"runs-{name}",
            plan_dir=tmp_path / name,
        )
        plan = result.record.inputs.plan
        assert plan is not None and plan.manifest_sha256 == read_plan(tmp_path / name).manifest_sha256
        assert plan.changed_fields == changes
        html = re.sub(r"<script.*?</script>", "", render_html(load_report_data(result.run_dir)), flags=re.S)
        assert expected in html
        for change in changes:
            assert change.replace("→", "&rarr;") in html or change in html
    assert dataclasses.fields(type(record.inputs))[-1].name == "plan"


def test_protocol_changes_lists_each_differing_field():
    planned = {"required_coverage": 0.95, "measurands": {"NEUT#": {"allowable_error_pct": 10.0}}, "min_cells": 100}
    applied = {"required_coverage": 0.95, "measurands": {"NEUT#": {"allowable_error_pct": 12.0}, "MONO#": {"a": 1}}}
    assert protocol_changes(planned, applied) == (
        "measurands.MONO#.a: absent (plan) → 1 (applied)",
        "measurands.NEUT#.allowable_error_pct: 10.0 (plan) → 12.0 (applied)",
        "min_cells: 100 (plan) → absent (applied)",
    )
    assert protocol_changes(planned, planned) == ()


def test_protocol_changes_are_capped():
    planned = {f"k{i:03d}": i for i in range(120)}
    changes = protocol_changes(planned, {})
    assert len(changes) == 51 and changes[-1] == "… and 70 more fields"


def test_protocol_changes_of_a_real_protocol_edit(tmp_path):
    from wbcv.base.records import to_json

    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(PROTOCOL)
    b.write_text(PROTOCOL.replace("slope: [0.8, 1.2]", "slope: [0.7, 1.3]"))
    changes = protocol_changes(to_json(load_protocol(a).as_record()), to_json(load_protocol(b).as_record()))
    assert changes == ("measurands.NEUT#.regression.slope: [0.8, 1.2] (plan) → [0.7, 1.3] (applied)",)
