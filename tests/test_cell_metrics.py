"""Cell-level metrics against hand-computed values and their defining properties."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.validation import cell_metrics as cm
from wbcv.validation.model_evaluation import class_report

U = cm.UNCLASSIFIED

# 3 classes, 10 cells. Truth and predictions chosen so every quantity is easy by hand.
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 0, 1, U, 1, 1, 0, 2, 2, U])
CONF = np.array([0.9, 0.8, 0.6, 0.3, 0.9, 0.7, 0.55, 0.95, 0.85, 0.2])


def test_confusion_matrix_by_hand():
    expected = np.array([[2, 1, 0, 1], [1, 2, 0, 0], [0, 0, 2, 1]])
    assert np.array_equal(cm.confusion_matrix(Y_TRUE, Y_PRED, 3), expected)


def test_rates_by_hand():
    m = cm.confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_allclose(cm.sensitivity(m), [2 / 4, 2 / 3, 2 / 3])
    np.testing.assert_allclose(cm.ppv(m), [2 / 3, 2 / 3, 2 / 2])
    f1 = [2 * a * b / (a + b) for a, b in [(0.5, 2 / 3), (2 / 3, 2 / 3), (2 / 3, 1.0)]]
    np.testing.assert_allclose(cm.f1(m), f1)
    assert cm.accuracy(m) == pytest.approx(6 / 10)
    assert cm.balanced_accuracy(m) == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)
    assert cm.selective_accuracy(m) == pytest.approx(6 / 8)
    assert cm.unclassified_rate(m) == pytest.approx(2 / 10)
    assert cm.macro_f1(m) == pytest.approx(np.mean(f1))


def test_kappa_by_hand():
    m = cm.confusion_matrix(Y_TRUE, Y_PRED, 3)
    p_o = 0.6
    rows = np.array([4, 3, 3, 0]) / 10  # the expert never says "unclassified"
    cols = np.array([3, 3, 2, 2]) / 10
    p_e = float(rows @ cols)
    assert cm.cohen_kappa(m) == pytest.approx((p_o - p_e) / (1 - p_e))


def test_ece_by_hand():
    committed = Y_PRED != U
    conf, ok = CONF[committed], (Y_PRED == Y_TRUE)[committed]
    # 10 bins for easy arithmetic: bins 5 {0.55: wrong}, 6 {0.6: wrong}, 7 {0.7: right},
    # 8 {0.8, 0.85: right}, 9 {0.9, 0.9, 0.95: right}
    expected = (1 * 0.55 + 1 * 0.6 + 1 * 0.3 + 2 * abs(1 - 0.825) + 3 * abs(1 - 0.9166666666666666)) / 8
    assert cm.expected_calibration_error(conf, ok, n_bins=10) == pytest.approx(expected)


def test_report_keys_and_per_class_unclassified():
    r = class_report(Y_TRUE[Y_TRUE < 3], Y_PRED, CONF)  # only 3 classes used, CELL_CLASSES has 5
    assert r["per_class"]["neutrophil"]["unclassified_rate"] == pytest.approx(1 / 4)
    basophil = r["per_class"]["basophil"]  # no cells, never predicted: 0 by the zero_division=0 rule
    assert (basophil["n"], basophil["sensitivity"], basophil["ppv"], basophil["f1"]) == (0, 0.0, 0.0, 0.0)
    assert basophil["unclassified_rate"] is None
    assert r["macro_f1"] == pytest.approx(cm.macro_f1(cm.confusion_matrix(Y_TRUE, Y_PRED, 3)))  # over 3 classes
    assert r["confusion_matrix"]["labels"][-1] == "unclassified"


def test_class_with_cells_that_is_never_predicted_counts_with_f1_zero():
    # the issue-13 case: class 2 has cells, all unclassified; its PPV is 0/0
    m = cm.confusion_matrix(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, U, U]), 3)
    np.testing.assert_array_equal(cm.ppv(m), [1.0, 1.0, 0.0])
    np.testing.assert_array_equal(cm.f1(m), [1.0, 1.0, 0.0])
    assert cm.macro_f1(m) == pytest.approx(2 / 3)  # (1 + 1 + 0) / 3; dropping class 2 gave 1.0
    assert cm.balanced_accuracy(m) == pytest.approx(2 / 3)


def test_class_predicted_but_never_present_counts_in_macro_f1_not_in_balanced_accuracy():
    m = cm.confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]), 3)
    np.testing.assert_allclose(cm.f1(m), [2 / 3, 1.0, 0.0])
    assert cm.macro_f1(m) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert cm.balanced_accuracy(m) == pytest.approx((1 / 2 + 1) / 2)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="equal length"):
        cm.confusion_matrix(np.array([0, 1]), np.array([0]), 3)
    with pytest.raises(ValueError, match="y_pred must hold"):
        cm.confusion_matrix(np.array([0]), np.array([5]), 3)


labels = st.lists(st.tuples(st.integers(0, 4), st.integers(-1, 4)), min_size=1, max_size=200)


@settings(max_examples=150, deadline=None)
@given(labels)
def test_metric_properties(pairs):
    t = np.array([a for a, _ in pairs])
    p = np.array([b for _, b in pairs])
    m = cm.confusion_matrix(t, p, 5)
    assert m.sum() == len(t)
    acc = cm.accuracy(m)
    assert 0 <= acc <= 1
    if (p != U).any():
        assert cm.selective_accuracy(m) >= acc - 1e-12  # abstaining never hides an error
    assert 0 <= cm.balanced_accuracy(m) <= 1
    k = cm.cohen_kappa(m)
    assert np.isnan(k) or k <= 1 + 1e-12
    if (t == p).all():
        assert acc == 1 and cm.unclassified_rate(m) == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=100), st.integers(0, 2**31 - 1))
def test_ece_is_zero_when_confidence_equals_accuracy_and_bounded_otherwise(conf, seed):
    conf = np.array(conf)
    ok = np.random.default_rng(seed).random(conf.size) < 0.5
    assert 0 <= cm.expected_calibration_error(conf, ok) <= 1
    perfect_ok = np.array([True, False] * 50)  # accuracy 0.5 at confidence 0.5, all in one bin
    assert cm.expected_calibration_error(np.full(100, 0.5), perfect_ok) == pytest.approx(0.0)


# --- every metric of `wbcv evaluate` against scikit-learn ------------------------------------

K = len(CELL_CLASSES)


@st.composite
def evaluations(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Expert labels from a random subset of the classes (the others never present) and predictions
    from a random subset of the outcomes (the others, unclassified included, never predicted), with
    some predictions copied from the truth where that class may be predicted, so agreement varies."""
    labelled = sorted(draw(st.sets(st.integers(0, K - 1), min_size=1)))
    called = sorted(draw(st.sets(st.integers(U, K - 1), min_size=1)))
    n = draw(st.integers(1, 150))
    y_true = draw(st.lists(st.sampled_from(labelled), min_size=n, max_size=n))
    y_pred = draw(st.lists(st.sampled_from(called), min_size=n, max_size=n))
    copy = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    y_pred = [t if c and t in called else p for t, p, c in zip(y_true, y_pred, copy, strict=True)]
    return np.array(y_true, dtype=np.int64), np.array(y_pred, dtype=np.int64)


def _close(ours: float | None, reference: float) -> bool:
    """class_report rounds to 6 decimals (an error of up to half a unit in the last place, 5e-7, plus
    the binary representation of the rounded decimal) and writes NaN as None."""
    return ours is None if np.isnan(reference) else ours is not None and abs(ours - reference) <= 5e-7 + 1e-12


@settings(max_examples=60, deadline=None)
@given(evaluations())
@example((np.array([0, 0, 1, 1, 2, 2]), np.array([0, 0, 1, 1, U, U])))  # the issue-13 case
@example((np.array([0, 0, 0]), np.array([U, U, U])))  # nothing classified
@example((np.array([1, 1]), np.array([1, 1])))  # one class, all right: kappa undefined
@example((np.array([0] * 63 + [1] * 65), np.array([0] * 63 + [2] * 65)))  # accuracy 63/128: rounds at a tie
def test_every_evaluate_metric_equals_scikit_learn(case):
    y_true, y_pred = case
    report = class_report(y_true, y_pred, np.full(y_true.size, 0.5))
    classes = list(range(K))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the ill-defined cases it then defines
        precision, recall, f1, support = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=classes, zero_division=0
        )
        occurring = sorted((set(y_true.tolist()) | set(y_pred.tolist())) - {U})
        expected = {
            "accuracy": skm.accuracy_score(y_true, y_pred),
            "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
            "macro_f1": skm.f1_score(y_true, y_pred, labels=occurring, average="macro", zero_division=0),
            "cohen_kappa": skm.cohen_kappa_score(y_true, y_pred, labels=[*classes, U]),
        }
    for key, value in expected.items():
        assert _close(report[key], value), (key, report[key], value)
    for i, c in enumerate(CELL_CLASSES):
        mine = report["per_class"][c]
        assert mine["n"] == support[i]
        assert _close(mine["sensitivity"], recall[i]), (c, "sensitivity", mine, recall[i])
        assert _close(mine["ppv"], precision[i]), (c, "ppv", mine, precision[i])
        assert _close(mine["f1"], f1[i]), (c, "f1", mine, f1[i])
