"""The CLSI H20 between-examiner check and the reference's counting interval (validation/examiner_check.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wbcv.validation.agreement import clopper_pearson
from wbcv.validation.examiner_check import examiner_difference_p, examiners_differ, within_counting_interval
from wbcv.validation.reference import read_reference

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
