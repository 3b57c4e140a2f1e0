"""The CLSI H20 between-examiner check and the reference's counting interval (validation/examiner_check.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wbcv.base.tables import COMPARISON_FILE, STATISTICS_FILE
from wbcv.cli import main
from wbcv.fixtures import analyzer_exports
from wbcv.fixtures.simulator import draw_samples
from wbcv.validation.agreement import clopper_pearson
from wbcv.validation.examiner_check import examiner_difference_p, examiners_differ, within_counting_interval
from wbcv.validation.reference import read_reference
from wbcv.validation.report import examiner_check_view, load_report_data, render_html

EXPORT = Path(__file__).resolve().parent.parent / "fixtures" / "samples" / "results" / "differential.csv"

HEADER = "sample_id,examiner,slide,Neutrophils,Lymphocytes,Monocytes,Eosinophils,Basophils\n"


def test_fishers_tea_tasting_table():
    # Agresti, Categorical Data Analysis 2nd ed. (2002), Table 3.8: two-sided P = 0.486
    assert examiner_difference_p(3, 4, 1, 4) == pytest.approx(0.486, abs=5e-4)


def test_a_200_cell_pair_that_agrees_within_counting_error_is_not_flagged_and_one_that_does_not_is():
    # 200 cells each: lymphocytes 30 % against 33 % is counting noise; 20 % against 40 % is not
    p_close = examiner_difference_p(60, 200, 66, 200)
    p_far = examiner_difference_p(40, 200, 80, 200)
    assert p_close is not None and p_close > 0.5 and examiners_differ(p_close) is False
    assert p_far is not None and p_far < 1e-4 and examiners_differ(p_far) is True
    assert examiner_difference_p(5, 0 + 5, 0, 0) is None and examiners_differ(None) is None
    with pytest.raises(ValueError, match=r"0\.\.n"):
        examiner_difference_p(201, 200, 3, 200)


@given(st.integers(1, 400), st.integers(1, 400), st.data())
def test_the_test_is_symmetric_and_equal_counts_never_flag(n1, n2, data):
    k1, k2 = data.draw(st.integers(0, n1)), data.draw(st.integers(0, n2))
    p = examiner_difference_p(k1, n1, k2, n2)
    assert p is not None and 0 < p <= 1 + 1e-12
    assert p == pytest.approx(examiner_difference_p(k2, n2, k1, n1))
    assert examiner_difference_p(k1, n1, k1, n1) == pytest.approx(1.0)


def test_clopper_pearson_differs_from_rumkes_table_as_h20_says():
    # H20 example: 9 % in a 100-cell count: Rümke's table 4-17 %; the exact limits 4.2-16.4 %
    ci = clopper_pearson(9, 100)
    assert (round(100 * ci.lower), round(100 * ci.upper)) == (4, 16)  # Rümke's table says 4 and 17


def test_within_counting_interval_includes_its_ends_and_needs_all_three():
    assert within_counting_interval(4.2, 4.2, 16.4) and within_counting_interval(16.4, 4.2, 16.4)
    assert within_counting_interval(16.5, 4.2, 16.4) is False
    assert within_counting_interval(None, 4.2, 16.4) is None and within_counting_interval(5.0, None, 16.4) is None


def test_the_manual_reference_names_the_classes_two_examiners_disagree_on(tmp_path):
    ref = tmp_path / "manual.csv"
    ref.write_text(
        HEADER
        # S1: lymphocytes 20 % against 40 %; S2: within counting error; S3: one examiner
        + "S1,A,1,140,40,12,6,2\nS1,B,2,100,80,12,6,2\n"
        + "S2,A,1,120,60,14,4,2\nS2,B,2,116,64,13,5,2\n"
        + "S3,A,1,120,60,14,4,2\n"
    )
    rows = {r["sample_id"]: r for r in read_reference(ref).table.iter_rows(named=True)}
    assert (
        rows["S1"]["between_examiners"]
        == "NEUT% (A 70.0 %, B 50.0 %, p 6.5e-05); LYMPH% (A 20.0 %, B 40.0 %, p 1.8e-05)"
    )
    assert rows["S1"]["LYMPH% examiners_p"] == pytest.approx(examiner_difference_p(40, 200, 80, 200))
    assert rows["S2"]["between_examiners"] == ""
    assert rows["S3"]["between_examiners"] == "not checked: 1 examiner(s), the check needs two"
    assert rows["S3"]["LYMPH% examiners_p"] is None


@pytest.mark.slow
def test_a_comparison_with_a_manual_reference_reports_the_counting_interval_and_the_examiner_check(tmp_path, capsys):
    samples = draw_samples(analyzer_exports.N_SAMPLES, analyzer_exports.CELLS_PER_SLIDE, seed=analyzer_exports.SEED)
    rng = np.random.default_rng(11)
    lines = ["sample_id,examiner,slide,Neutrophils,Lymphocytes,Monocytes,Eosinophils,Basophils"]
    for i, s in enumerate(samples):
        p = [s.true_fractions[c] for c in ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")]
        for examiner, slide in (("A", 1), ("B", 2)):
            counts = rng.multinomial(200, p)
            if i == 0 and examiner == "B":  # examiner B of the first sample calls 40 neutrophils lymphocytes
                counts[0], counts[1] = counts[0] - 40, counts[1] + 40
            lines.append(f"{s.sample_id},{examiner},{slide}," + ",".join(map(str, counts)))
    ref = tmp_path / "manual.csv"
    ref.write_text("\n".join(lines) + "\n")
    protocol = tmp_path / "p.yaml"
    protocol.write_text(
        "protocol: {id: MANUAL-REF, version: '1'}\nmeasurands:\n  NEUT%: {allowable_error_pct: 10, absolute_limit: 2}\n"
        "  LYMPH%: {allowable_error_pct: 10, absolute_limit: 2}\nexclusions: {min_cells: 100}\n"
    )
    code = main(
        ["compare", "--results", str(EXPORT), "--format", "csv", "--reference", str(ref), "--protocol", str(protocol),
         "--out", str(tmp_path / "runs")]
    )  # fmt: skip
    assert code in (0, 3), capsys.readouterr().err
    (run,) = [p for p in (tmp_path / "runs").iterdir() if "-compare-" in p.name]
    table = pl.read_parquet(run / COMPARISON_FILE)
    expected = (table["reference_ci_low"] <= table["predicted"]) & (table["predicted"] <= table["reference_ci_high"])
    assert table["within_reference_interval"].to_list() == expected.to_list()
    assert table["reference_ci_low"].null_count() == 0
    st_ = json.loads((run / STATISTICS_FILE).read_text())["NEUT%"]["within_reference_interval"]
    neut = table.filter(pl.col("measurand") == "NEUT%")
    assert (st_["k"], st_["n"]) == (int(neut["within_reference_interval"].sum()), neut.height)
    view = examiner_check_view(run)
    assert view is not None and view["n_checked"] == len(samples)
    flagged = dict(view["flagged"])
    assert samples[0].sample_id in flagged and flagged[samples[0].sample_id].startswith("NEUT% (A ")
    html = render_html(load_report_data(run))
    assert "agreement between the two examiners (CLSI H20)" in html
    assert "Within the reference&#39;s counting interval" in html or "Within the reference's counting interval" in html
    assert "Rümke 4–17 %" in html
