"""Phantom cells: deterministic, distinct per class, written as a labelled library."""

from __future__ import annotations

import numpy as np
import pytest

from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.fixtures.phantom import render_cell, write_phantom_library
from wbcv.inference.library import read_cell_library


def test_render_is_deterministic_for_a_seed_and_varies_between_seeds():
    a = render_cell("monocyte", np.random.default_rng(1))
    b = render_cell("monocyte", np.random.default_rng(1))
    c = render_cell("monocyte", np.random.default_rng(2))
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_classes_differ_where_morphology_says_they_should():
    rng = np.random.default_rng(0)
    centre = slice(54, 74)

    def mean_centre(label: str) -> np.ndarray:
        return np.mean([render_cell(label, rng)[centre, centre].reshape(-1, 3).mean(0) for _ in range(8)], axis=0)

    eo, lymph, baso = mean_centre("eosinophil"), mean_centre("lymphocyte"), mean_centre("basophil")
    assert eo[0] > eo[2] + 40  # orange-red granules: red well above blue
    assert lymph[2] > lymph[0]  # dark purple nucleus: blue above red
    assert baso.sum() < eo.sum()  # dense dark granules


def test_unknown_class_is_refused():
    with pytest.raises(ValueError, match="unknown class"):
        render_cell("platelet", np.random.default_rng(0))


def test_library_is_readable_as_a_labelled_library(tmp_path):
    write_phantom_library(tmp_path / "lib", per_class=3, seed=5)
    cells = read_cell_library(tmp_path / "lib")
    assert sorted({c.label for c in cells}) == sorted(CELL_CLASSES) and len(cells) == 15
