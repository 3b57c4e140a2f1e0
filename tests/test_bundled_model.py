"""The bundled reference model: it is the default, it is what its card says, and it behaves."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PBC_DIR
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.inference.artifact import load_artifact, models_dir
from wbcv.inference.decode import decode_cell
from wbcv.inference.library import LabelledCell
from wbcv.inference.predict import score_pixels
from wbcv.inference.training import read_split
from wbcv.validation.model_evaluation import EVALUATION_KEYS, evaluate_cells


@pytest.fixture(scope="module")
def model():
    return load_artifact(None)


@pytest.fixture(scope="module")
def test_split(model) -> list[LabelledCell]:
    return read_split(model.path, PBC_DIR, "test")


def test_default_model_is_bundled_small_and_fully_described(model):
    assert model.path.parent == models_dir()
    assert (model.path / "weights.pt").stat().st_size <= 20 * 1024 * 1024
    card = model.card
    assert set(EVALUATION_KEYS) <= set(card["metrics"])
    assert card["metrics"]["split"] == "test"
    assert {"ablation", "stress_test"} <= set(card)
    assert "clean" in card["stress_test"] and "grayscale" in card["stress_test"]
    t = card["training"]
    for key in ("training_data_manifest_sha256", "split_sha256", "recipe", "training_seconds", "machine"):
        assert t[key]
    assert (model.path / "MODEL_CARD.md").read_text().startswith(f"# {card['name']}")


def test_split_file_matches_the_library_it_names(test_split):
    import hashlib

    for c in test_split[::97]:
        assert hashlib.sha256(c.path.read_bytes()).hexdigest() == c.sha256


def test_accuracy_on_a_stratified_part_of_the_held_out_split(model, test_split):
    part = [c for cls in CELL_CLASSES for c in [x for x in test_split if x.label == cls][:40]]
    report = evaluate_cells(model, part)
    assert report["n"] == 200
    assert report["balanced_accuracy"] >= 0.95
    assert report["unclassified_rate"] <= 0.03
    assert min(r["sensitivity"] for r in report["per_class"].values()) >= 0.9


def test_slide_background_without_a_white_cell_comes_out_unclassified(model, test_split):
    """Corners of held-out images (red cells, platelets, no white cell): out of scope for the model."""
    pixels = []
    for c in test_split[::20][:60]:
        im = Image.open(c.path).convert("RGB")
        buf = io.BytesIO()
        im.crop((0, 0, 110, 110)).save(buf, format="PNG")
        pixels.append(decode_cell(buf.getvalue(), model.input.size, crop=model.input.crop).pixels)
    pixels.append(np.full((model.input.size,) * 2 + (3,), (230, 215, 220), dtype=np.uint8))  # empty slide
    predicted = score_pixels(model, np.stack(pixels)).combined.predicted.numpy()
    assert (predicted == -1).mean() >= 0.95


def test_bundled_card_records_the_split_it_was_tested_on(model, test_split):
    counts = model.card["training"]["split_counts"]["test"]
    assert sum(counts.values()) == len(test_split) == model.card["metrics"]["n"]
    assert Path(model.card["training"]["split_file"]).name == "split.csv"
