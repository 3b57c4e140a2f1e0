"""The acquisition variation a model was trained to tolerate, as the refusal rules see it.

The out-of-distribution density (``wbcv.inference.ood``) and the white-cell gate
(``wbcv.inference.wbc_gate``) are fitted on backbone features. Fitted on the training cells as
scanned, they also refuse what the classifier handles well: on the bundled model, 43 % of a 20 %
darker copy of the validation split came out ``out_of_distribution`` while its classification
was unchanged. Fitted on the cells *and* ``AUGMENTED_COPIES`` draws of each under the model's own
training augmentation (its recipe, ``wbcv.inference.augment``), with thresholds set on the
validation cells treated the same way, they refuse new kinds of object instead. The variation
covered is what the model was trained on, no wider: a shift the classifier was not trained to
tolerate is still refused.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import torch

from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.inference.augment import AugmentConfig, augment
from wbcv.inference.ensemble import WbcEnsembleNet
from wbcv.inference.ood import QUANTILE, FeatureDensity, distances, fit_density, threshold_for

#: Augmented draws of each cell added to the fitting data of the density and the gate.
AUGMENTED_COPIES: Final[int] = 2


def recipe_augmentation(card: dict[str, Any]) -> AugmentConfig | None:
    """The augmentation the model was trained with (its card's recipe); None when the card has none."""
    cfg = card.get("training", {}).get("recipe", {}).get("augment")
    if not isinstance(cfg, dict):
        return None
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    return AugmentConfig(**values)


def nuisance_features(
    net: WbcEnsembleNet, pixels: np.ndarray, cfg: AugmentConfig | None, seed: int, copies: int = AUGMENTED_COPIES
) -> np.ndarray:
    """Features of the framed cells as they are and of ``copies`` augmented draws of each (``cfg``:
    the acquisition variation the model was trained to tolerate), stacked in that order. Fitted on
    these, the density and the gate refuse new *kinds* of object, not a darker scan: on the bundled
    model fitted on clean cells only, a 20 % darker copy of the validation split was 43 % refused."""
    x = torch.from_numpy(np.ascontiguousarray(pixels))
    feats = [_features(net, x)]
    g = torch.Generator().manual_seed(seed)
    for _ in range(copies if cfg is not None and len(x) else 0):
        assert cfg is not None
        feats += [_features(net, augment(x[i : i + 1024], cfg, g)) for i in range(0, len(x), 1024)]
    return np.concatenate(feats)


def _features(net: WbcEnsembleNet, x: torch.Tensor, batch: int = 512) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            f = net(x[i : i + batch]).features
            assert f is not None  # WbcEnsembleNet always returns its features
            out.append(f.double().numpy())
    return np.concatenate(out) if out else np.empty((0, 0))


def fit_nuisance_ood(
    net: WbcEnsembleNet, train: tuple[np.ndarray, np.ndarray], validation: np.ndarray, cfg: AugmentConfig | None
) -> tuple[FeatureDensity, dict[str, Any]]:
    """The feature density of the training cells with their augmented draws, its threshold the
    ``QUANTILE`` quantile over the validation cells with theirs; and its figures (the share of
    *clean* validation cells above it, the in-distribution refusal rate)."""
    pixels, labels = train
    feats = nuisance_features(net, pixels, cfg, seed=1)
    reps = len(feats) // len(labels)
    means, precision = fit_density(feats, np.tile(labels, reps), len(CELL_CLASSES))
    val = nuisance_features(net, validation, cfg, seed=2)
    val_d = distances(val, means, precision)
    density = FeatureDensity(means, precision, threshold_for(val_d))
    clean = float(np.mean(val_d[: len(validation)] > density.threshold))
    figures = {"quantile": QUANTILE, "validation_rejected": round(clean, 5), "augmented_copies": reps - 1}
    return density, figures
