"""Pre-classification statistics: specificity, (weighted) kappa, Wilson intervals, reclassification.

References: scikit-learn (``recall_score`` of the negative class, ``cohen_kappa_score`` with and
without weights) and the published Wilson intervals of Newcombe (1998), Stat Med 17:857, Table I.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from wbcv.base.tables import CELL_SCHEMA
from wbcv.validation import cell_metrics as cm
from wbcv.validation.preclassification import preclassification_statistics


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_interval_reproduces_newcombe_1998_table_1(k, n, low, high):
    got = cm.wilson_interval(k, n, 0.95)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_of_nothing_is_undefined():
    assert all(np.isnan(cm.wilson_interval(0, 0, 0.95)))


labels = st.lists(st.tuples(st.integers(0, 3), st.integers(-1, 3)), min_size=1, max_size=60)


@settings(max_examples=80, deadline=None)
@given(labels)
def test_specificity_is_sklearns_recall_of_the_negative_class(pairs):
    t = np.array([p[0] for p in pairs])
    p = np.array([p[1] for p in pairs])
    m = cm.confusion_matrix(t, p, 4)
    spec = cm.specificity(m)
    for i in range(4):
        negatives = t != i
        expected = skm.recall_score(negatives, p != i, zero_division=0) if negatives.any() else 0.0
        assert spec[i] == pytest.approx(expected)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=2, max_size=80))
def test_weighted_kappa_is_sklearns_cohen_kappa_score(pairs):
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    m = np.zeros((5, 5), dtype=np.int64)
    np.add.at(m, (a, b), 1)
    for weights, sk in (("none", None), ("linear", "linear"), ("quadratic", "quadratic")):
        ours = cm.weighted_kappa(m, weights)
        with np.errstate(all="ignore"):
            theirs = skm.cohen_kappa_score(a, b, labels=list(range(5)), weights=sk)
        if np.isnan(theirs):
            assert np.isnan(ours)
        else:
            assert ours == pytest.approx(theirs, abs=1e-12)


def test_weighted_kappa_by_hand():
    # Cohen (1968)'s weights on a 3 x 3 table: O = [[5, 1, 0], [1, 3, 0], [0, 0, 2]], N = 12
    m = np.array([[5, 1, 0], [1, 3, 0], [0, 0, 2]])
    rows, cols = m.sum(axis=1), m.sum(axis=0)
    e = np.outer(rows, cols) / 12
    w = np.array([[0, 1, 2], [1, 0, 1], [2, 1, 0]])
    assert cm.weighted_kappa(m, "linear") == pytest.approx(1 - (w * m).sum() / (w * e).sum())
    p_o, p_e = 10 / 12, float((rows / 12) @ (cols / 12))
    assert cm.weighted_kappa(m, "none") == pytest.approx((p_o - p_e) / (1 - p_e))
    with pytest.raises(ValueError, match="square"):
        cm.weighted_kappa(np.ones((2, 3)), "linear")


def _cells(rows: list[tuple[str, str, str, str, str]]) -> pl.DataFrame:
    """(sample, pre-classified name, verified name, pre target, verified target) per cell."""
    return pl.DataFrame(
        [
            {
                "sample_id": s,
                "cell_id": f"c{i}",
                "source_row": i + 2,
                "preclassified": pre,
                "verified": ver,
                "preclassified_target": pt,
                "verified_target": vt,
                "counted_target": vt,
            }
            for i, (s, pre, ver, pt, vt) in enumerate(rows)
        ],
        schema=CELL_SCHEMA,
    )


def test_preclassification_statistics_of_a_small_worked_example():
    cells = _cells(
        [
            ("S1", "Seg", "Seg", "neutrophil", "neutrophil"),
            ("S1", "Band", "Seg", "neutrophil", "neutrophil"),  # renamed within the class: reclassified, agreeing
            ("S1", "Lymph", "Lymph", "lymphocyte", "lymphocyte"),
            ("S1", "Seg", "Lymph", "neutrophil", "lymphocyte"),
            ("S2", "Unidentified", "Mono", "unclassified", "monocyte"),
            ("S2", "Mono", "Mono", "monocyte", "monocyte"),
            ("S2", "Lymph", "Lymph", "lymphocyte", "lymphocyte"),
            ("S2", "Seg", "Seg", "neutrophil", "neutrophil"),
        ]
    )
    st_ = preclassification_statistics(cells, 0.95)
    assert st_["categories"] == ["neutrophil", "lymphocyte", "monocyte", "unclassified"]
    assert st_["matrix"] == [[3, 0, 0, 0], [1, 2, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert st_["agreement"]["k"] == 6 and st_["agreement"]["n"] == 8
    assert st_["reclassification_rate"]["k"] == 3
    assert st_["agreement"]["ci"] == pytest.approx(list(cm.wilson_interval(6, 8, 0.95)))
    neut = st_["per_class"][0]
    assert neut["sensitivity"]["estimate"] == 1.0 and neut["ppv"]["estimate"] == pytest.approx(3 / 4)
    assert neut["specificity"]["estimate"] == pytest.approx(4 / 5)  # 5 non-neutrophils, 1 pre-classified as one
    assert st_["per_class"][3]["sensitivity"]["estimate"] is None  # no cell verified as unclassified
    assert st_["reclassified_to"] == {"neutrophil": {"lymphocyte": 1}, "unclassified": {"monocyte": 1}}
    s1, s2 = st_["per_sample"]
    assert s1["n_changed"] == 2 and s1["neutrophil"] == pytest.approx(100 * (3 / 4 - 2 / 4))
    assert s2["monocyte"] == pytest.approx(100 * (1 / 3 - 2 / 4))  # the unclassified cell is not in the differential
    assert st_["kappa"] == pytest.approx(cm.weighted_kappa(np.array(st_["matrix"]), "none"))


def test_no_cell_with_both_classes_is_not_computed():
    cells = _cells([("S1", "Seg", "Seg", "neutrophil", "neutrophil")]).with_columns(verified=pl.lit(None, pl.String))
    assert "not_computed" in preclassification_statistics(cells, 0.95)
