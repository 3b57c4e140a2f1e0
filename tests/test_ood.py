"""The out-of-distribution score (issue 14): Mahalanobis distance to the nearest class in feature space."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.distance import mahalanobis

from tests.conftest import write_test_artifact
from wbcv.base.errors import WbcvError
from wbcv.inference.artifact import load_artifact, read_card, save_ood
from wbcv.inference.combine import ABSTAIN_REASONS
from wbcv.inference.ood import OOD_FILE, FeatureDensity, distances, fit_density, threshold_for
from wbcv.inference.predict import decide


def _clusters(rng: np.random.Generator, n: int = 400, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 3, n)
    centres = np.array([[0.0] * d, [6.0] + [0.0] * (d - 1), [0.0, 6.0] + [0.0] * (d - 2)])
    return centres[labels] + rng.normal(size=(n, d)), labels


def test_distance_is_the_squared_mahalanobis_distance_to_the_nearest_class():
    rng = np.random.default_rng(0)
    f, y = _clusters(rng)
    means, precision = fit_density(f, y, 3)
    probe = rng.normal(size=(20, f.shape[1])) * 3
    expected = [min(mahalanobis(p, m, precision.astype(np.float64)) ** 2 for m in means) for p in probe]
    assert distances(probe, means, precision) == pytest.approx(expected, rel=1e-4)


def test_a_point_far_from_every_class_scores_above_the_in_distribution_threshold():
    rng = np.random.default_rng(1)
    f, y = _clusters(rng)
    means, precision = fit_density(f, y, 3)
    held_out, _ = _clusters(rng, 2000)
    threshold = threshold_for(distances(held_out, means, precision), 0.99)
    fresh, _ = _clusters(rng, 4000)
    rejected = np.mean(distances(fresh, means, precision) > threshold)
    assert rejected == pytest.approx(0.01, abs=0.006)  # the quantile carries over to new draws
    far = np.full((5, f.shape[1]), 20.0)
    assert (distances(far, means, precision) > threshold).all()


def test_shrinkage_keeps_a_degenerate_covariance_invertible():
    f = np.zeros((50, 4))
    f[:, 0] = np.arange(50)  # three dimensions never vary
    means, precision = fit_density(f, np.zeros(50, int), 1)
    assert np.isfinite(precision).all() and np.isfinite(distances(f[:3], means, precision)).all()


@pytest.fixture
def model_with_density(tmp_path):
    model_dir = write_test_artifact(tmp_path / "m")
    model = load_artifact(model_dir)
    with torch.inference_mode():
        feats = model.net(torch.zeros(4, 64, 64, 3, dtype=torch.uint8)).features
    assert feats is not None
    d = feats.shape[1]
    density = FeatureDensity(feats.numpy()[:1].repeat(5, 0), np.eye(d, dtype=np.float32) * 1e6, threshold=1.0)
    card = read_card(model_dir)
    card["ood"] = save_ood(density, model_dir, {"quantile": 0.995, "validation_rejected": 0.0})
    (model_dir / "model.json").write_text(json.dumps(card))
    return model_dir


def test_the_artifact_loads_its_density_and_cells_far_from_it_are_out_of_distribution(model_with_density):
    model = load_artifact(model_with_density)
    assert model.ood is not None
    images = torch.zeros(3, 64, 64, 3, dtype=torch.uint8)
    images[1:] = 200  # different input, different features, far in the precision's metric
    with torch.inference_mode():
        out = decide(model, model.net(images))
    reasons = [ABSTAIN_REASONS[int(r)] for r in out.abstain_reason]
    assert reasons[0] != "out_of_distribution" and reasons[1:] == ["out_of_distribution"] * 2
    assert out.predicted[1:].tolist() == [-1, -1]
    no_cell = decide(model, model.net(images), np.array([True, False, False]))
    assert ABSTAIN_REASONS[int(no_cell.abstain_reason[0])] == "no_cell_found"


def test_a_modified_density_file_is_refused(model_with_density):
    path = model_with_density / OOD_FILE
    data = bytearray(path.read_bytes())
    data[-20] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(WbcvError, match="does not match the model card"):
        load_artifact(model_with_density)
    path.unlink()
    with pytest.raises(WbcvError, match="is missing"):
        load_artifact(model_with_density)


def test_a_density_fitted_under_the_training_augmentation_does_not_refuse_a_darker_scan():
    """The bundled model's features of real cells: fitted on clean cells only, a 20 % darker copy
    of held-out cells is refused far more often than when the density also saw augmented draws."""
    from PIL import ImageEnhance

    from wbcv.inference.artifact import read_card
    from wbcv.inference.nuisance import fit_nuisance_ood, nuisance_features, recipe_augmentation
    from wbcv.inference.predict import decode_files
    from wbcv.validation.model_evaluation import without_acquisition_correction

    # the scan's light as the network would see it without the per-sample correction (which undoes it)
    model = without_acquisition_correction(load_artifact(None))
    cfg = recipe_augmentation(read_card(model.path))
    assert cfg is not None
    from tests.conftest import PBC_DIR
    from wbcv.inference.training import read_split

    train = read_split(model.path, PBC_DIR, "train")[::2]  # a density needs thousands of cells in 256 dimensions
    held = read_split(model.path, PBC_DIR, "validation")[::2]
    classes = sorted({c.label for c in train})
    pixels = decode_files(model, [c.path for c in train]).pixels
    labels = np.array([classes.index(c.label) for c in train])
    held_pixels = decode_files(model, [c.path for c in held]).pixels

    def darker(data: bytes) -> bytes:
        buf = io.BytesIO()
        ImageEnhance.Brightness(Image.open(io.BytesIO(data)).convert("RGB")).enhance(0.8).save(buf, format="PNG")
        return buf.getvalue()

    dark = decode_files(model, [c.path for c in held], transform=darker).pixels
    refused = {}
    for name, used in (("clean", None), ("augmented", cfg)):
        density, figures = fit_nuisance_ood(model.net, (pixels, labels), held_pixels, used)
        assert figures["validation_rejected"] <= 0.01
        far = distances(nuisance_features(model.net, dark, None, seed=0), density.means, density.precision)
        refused[name] = float(np.mean(far > density.threshold))
    assert refused["clean"] >= 0.1 and refused["augmented"] < 0.5 * refused["clean"], refused
