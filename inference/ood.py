"""An out-of-distribution score that needs no example of the intruder: Mahalanobis distance in
the backbone's feature space.

Lee, Lee, Lee & Shin, *A simple unified framework for detecting out-of-distribution samples and
adversarial attacks*, NeurIPS 2018: model the pooled backbone features f of the training cells of
each class c as Gaussians with class means mu_c and one shared covariance Sigma; the score of a
cell is the squared distance to the nearest class,

    d(f) = min_c (f - mu_c)^T Sigma^-1 (f - mu_c).

Sigma is estimated from the class-centred training features and shrunk towards its mean diagonal
(Ledoit–Wolf style, fixed weight ``SHRINKAGE``) so that it stays invertible and stable with a few
thousand cells in a few hundred dimensions. A cell whose d exceeds the threshold is unclassified
with reason ``out_of_distribution``. The threshold is the ``QUANTILE`` quantile of d over the
validation split of the training laboratory (so that about 1 - QUANTILE of in-distribution cells
are rejected by it; the test split measures it). Anything the heads have never seen, an
erythroblast, a smudge cell, a platelet clump or a cell of a very different stain, is far from
all five class means whatever the heads say.

The means and the precision matrix are stored beside the weights (``OOD_FILE``, float32, its
sha256 in the model card) and checked when the artifact is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import torch

OOD_FILE: Final[str] = "ood.npz"
SHRINKAGE: Final[float] = 0.1
QUANTILE: Final[float] = 0.995
METHOD: Final[str] = "mahalanobis-shared-covariance (Lee et al. 2018)"


@dataclass(frozen=True)
class FeatureDensity:
    means: np.ndarray  # (C, D) float32 class means
    precision: np.ndarray  # (D, D) float32 inverse of the shrunk shared covariance
    threshold: float  # distances above it are out of distribution

    def save(self, path: str) -> None:
        np.savez(path, means=self.means, precision=self.precision, threshold=np.float64(self.threshold))

    @classmethod
    def load(cls, path: str) -> FeatureDensity:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["means"].astype(np.float32), z["precision"].astype(np.float32), float(z["threshold"]))


def fit_density(features: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(class means (C, D), precision (D, D)) from training features (N, D) and labels (N,)."""
    f = np.asarray(features, np.float64)
    means = np.stack([f[labels == c].mean(0) for c in range(n_classes)])
    centred = f - means[labels]
    cov = centred.T @ centred / max(1, len(f) - n_classes)
    target = np.eye(cov.shape[0]) * np.trace(cov) / cov.shape[0]
    shrunk = (1 - SHRINKAGE) * cov + SHRINKAGE * target
    return means.astype(np.float32), np.linalg.inv(shrunk).astype(np.float32)


def distances(features: torch.Tensor | np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """d(f) of the module docstring for each row of ``features`` (N, D): float64 (N,)."""
    f = torch.as_tensor(features, dtype=torch.float32).detach()
    mu = torch.from_numpy(means)
    p = torch.from_numpy(precision)
    diff = f[:, None, :] - mu[None, :, :]  # (N, C, D)
    d = torch.einsum("ncd,de,nce->nc", diff, p, diff)
    return d.min(dim=1).values.double().numpy()


def threshold_for(validation_distances: np.ndarray, quantile: float = QUANTILE) -> float:
    """The threshold leaving ``1 - quantile`` of the validation cells above it (linear interpolation)."""
    return float(np.quantile(validation_distances, quantile))
