"""Samples per stratum achieved against the plan (validation/strata.py), the manifest's ``stratum`` field
carried into the counts, and the report's plan line."""

from __future__ import annotations

import re

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_report import PROTOCOL, study_run  # noqa: F401  (the module-scoped simulated study run)
from wbcv.base.tables import COUNTS_FILE
from wbcv.validation.plan import write_plan
from wbcv.validation.report import load_report_data, render_html
from wbcv.validation.strata import NO_STRATUM, strata_achieved
from wbcv.validation.study import load_comparison, run_comparison


def _frames(strata: dict[str, str | None], compared: list[tuple[str, str]]) -> tuple[pl.DataFrame, pl.DataFrame]:
    counts = pl.DataFrame(
        {"sample_id": list(strata), "stratum": list(strata.values())},
        schema={"sample_id": pl.String, "stratum": pl.String},
    )
    comparison = pl.DataFrame(
        {"sample_id": [s for s, _ in compared], "measurand": [m for _, m in compared]},
        schema={"sample_id": pl.String, "measurand": pl.String},
    )
    return counts, comparison


def test_hand_counted_example():
    counts, comparison = _frames(
        {"A": "normal", "B": "normal", "C": "leukopenic", "D": None, "E": "rare"},
        # A and B compared on both measurands; C only on NEUT% (its WBC# excluded); D and E on both
        [
            ("A", "NEUT%"),
            ("A", "WBC"),
            ("B", "NEUT%"),
            ("B", "WBC"),
            ("C", "NEUT%"),
            ("D", "NEUT%"),
            ("D", "WBC"),
            ("E", "NEUT%"),
            ("E", "WBC"),
        ],
    )
    got = strata_achieved(counts, comparison, {"normal": 2, "leukopenic": 1, "abnormal": 1})
    assert got is not None
    table = [(s.name, s.planned, s.achieved, s.samples, s.met) for s in got]
    assert table == [
        ("normal", 2, 2, 2, True),
        ("leukopenic", 1, 0, 1, False),  # compared on NEUT% only: 0 on WBC, the fewest on any measurand
        ("abnormal", 1, 0, 0, False),  # planned, none chosen
        ("rare", None, 1, 1, None),  # not in the plan: listed, not judged
        (NO_STRATUM, None, 1, 1, None),
    ]


def test_counts_without_strata_are_not_recorded():
    counts, comparison = _frames({"A": None, "B": None}, [("A", "NEUT%")])
    assert strata_achieved(counts, comparison, {"normal": 1}) is None
    assert strata_achieved(counts.drop("stratum"), comparison, {"normal": 1}) is None


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(st.sampled_from("ABCDEFGH"), st.sampled_from(["normal", "abnormal", None]), min_size=1),
    st.lists(st.tuples(st.sampled_from("ABCDEFGH"), st.sampled_from(["NEUT%", "WBC"])), unique=True),
    st.dictionaries(st.sampled_from(["normal", "abnormal", "leukopenic"]), st.integers(1, 5)),
)
def test_properties(strata, compared, planned):
    compared = [(s, m) for s, m in compared if s in strata]
    counts, comparison = _frames(strata, compared)
    got = strata_achieved(counts, comparison, planned)
    if all(v is None for v in strata.values()):
        assert got is None
        return
    assert got is not None
    assert [s.name for s in got][: len(planned)] == list(planned)
    assert sum(s.samples for s in got) == len({s for s, _ in compared})
    for s in got:
        members = {k for k, v in strata.items() if (v or NO_STRATUM) == s.name}
        assert 0 <= s.achieved <= s.samples <= len(members)
        assert s.met == (None if s.planned is None else s.achieved >= s.planned)


@pytest.mark.slow
def test_the_report_sets_the_strata_achieved_against_the_plan(study_run, tmp_path):  # noqa: F811
    counts = pl.read_parquet(study_run["infer"] / COUNTS_FILE)
    assert counts["stratum"].null_count() == 0  # the simulator's manifest gives every sample a stratum
    n_normal = (counts["stratum"] == "normal").sum()
    protocol = tmp_path / "p.yaml"
    protocol.write_text(PROTOCOL.read_text() + "plan: {strata: {normal: 1, abnormal: 1, leukopenic: 500}}\n")
    write_plan(protocol, tmp_path / "plan")
    record = load_comparison(study_run["compare"])
    result = run_comparison(
        study_run["infer"], record.inputs.reference.path, protocol, tmp_path / "runs", plan_dir=tmp_path / "plan"
    )
    data = load_report_data(result.run_dir)
    assert data.strata is not None
    by_name = {s.name: s for s in data.strata}
    assert by_name["leukopenic"].met is False and by_name["normal"].samples <= n_normal
    html = re.sub(r"<script.*?</script>", "", render_html(data), flags=re.S)
    assert "Samples per stratum achieved" in html and "of 500 planned (short)" in html
    # a comparison without a plan says nothing about strata
    plain = re.sub(r"<script.*?</script>", "", render_html(load_report_data(study_run["compare"])), flags=re.S)
    assert "Samples per stratum achieved" not in plain
