"""Cell-level metrics against hand-computed values and their defining properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    assert r["per_class"]["basophil"]["n"] == 0 and r["per_class"]["basophil"]["sensitivity"] is None
    assert r["confusion_matrix"]["labels"][-1] == "unclassified"


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
