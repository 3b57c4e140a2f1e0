"""The operating domain: is a slide, or a batch, like the cells the model was qualified on?

A validation signed on one laboratory's images says nothing about another's. The *domain profile*
describes what the model was qualified on, from the images alone, in two per-cell measures:

* **features**: d_f = min_c (f - mu_c)^T Sigma^-1 (f - mu_c), the squared Mahalanobis distance of
  the cell's pooled backbone features f (``EnsembleLogits.features``) to the nearest class mean of
  the training split (Lee et al., NeurIPS 2018; the same estimator as ``wbcv.inference.ood``:
  class means, one shared covariance shrunk towards its mean diagonal);
* **image**: d_i, the same distance for a small vector of image statistics as scanned: the mean
  lαβ colour of the cell's surroundings (slide background and red cells, before any stain
  normalisation) and, for cell-framing models, log of the located cell's diameter in decoded
  pixels (a magnification change moves it).

Each cell's distance is first standardised for its nearest class in feature space, u = (d -
m_c) / s_c with the mean and SD over the validation cells nearest to class c: monocytes lie
farther from their mean than neutrophils do, and without this a slide with a monocytosis would
look out of domain. A slide's statistic per measure is the 10 % trimmed mean of its cells' u (a
few debris images or odd cells do not move it; a scanner, stain or focus change moves every
cell). Each is standardised, z_k = (T_k - centre_k) / scale_k, with the mean and standard deviation of T_k over
``N_RESAMPLES`` slides of ``REF_CELLS`` cells resampled from the **validation** split with a
realistic differential (``DIFFERENTIAL``); the slide's score is max_k z_k. The threshold is the
``QUANTILE`` quantile of that score over the same resampled validation slides, so about
1 - QUANTILE of in-domain 100-cell slides are flagged (larger slides fewer: the trimmed mean's
spread shrinks with the number of cells); the **test** split measures it
(``benchmarks/eval_domain.py``). A batch is scored the same way over all its cells.

Undefined values: cells without a located cell (``no_cell``) or without features are not scored;
a slide with fewer than ``MIN_CELLS`` scored cells gets no score (null) and no judgement; a
batch with fewer than ``MIN_CELLS`` scored cells is ``not_checked``.

Why this statistic and not a kernel two-sample test: MMD or energy statistics need every cell's
256 features of the reference kept and compared per slide, and their null distribution again by
resampling; the mean per-cell distance needs two numbers per cell in the part files, resumes and
scales out with the engines unchanged, and is robust to the slide's differential because each
cell is measured against its nearest class.

The profile is stored beside the weights (``DOMAIN_FILE``, its sha256 in the card's
``domain_profile`` section) and checked when the artifact is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import torch
from scipy.stats import trim_mean

from wbcv.base.atomic import sha256_file, verified_sidecar
from wbcv.base.errors import WbcvError
from wbcv.inference.ood import distances, fit_density

DOMAIN_FILE: Final[str] = "domain.npz"
METHOD: Final[str] = "max-z trimmed-mean Mahalanobis: backbone features + surroundings colour/diameter"
TRIM: Final[float] = 0.1  # proportion cut from each end of a slide's distances
REF_CELLS: Final[int] = 100  # cells per resampled validation slide
MIN_CELLS: Final[int] = 50  # fewer scored cells: no score
MIN_CLASS_CELLS: Final[int] = 10  # validation cells per nearest class for its own standardisation
QUANTILE: Final[float] = 0.995
N_RESAMPLES: Final[int] = 4000
#: Expected adult differential (N, L, M, E, B), CELL_CLASSES order: resampled slides draw their
#: composition from a multinomial with these fractions (PBC itself is balanced, blood is not).
DIFFERENTIAL: Final[tuple[float, ...]] = (0.60, 0.30, 0.06, 0.03, 0.01)
COMPONENTS: Final[tuple[str, ...]] = ("features", "image")

Verdict = Literal["in_domain", "out_of_domain", "not_checked"]


@dataclass(frozen=True)
class DomainProfile:
    feature_means: np.ndarray  # (C, D) float32
    feature_precision: np.ndarray  # (D, D) float32
    image_means: np.ndarray  # (C, K) float32
    image_precision: np.ndarray  # (K, K) float32
    use_diameter: bool  # K = 4 (colour + log diameter) or 3 (colour only: image-framing models)
    cell_centre: np.ndarray  # (2, C) per component and nearest class: mean distance of validation cells
    cell_scale: np.ndarray  # (2, C) their standard deviation
    centre: np.ndarray  # (2,) float64: mean trimmed-mean distance of validation slides, per component
    scale: np.ndarray  # (2,) float64: its standard deviation
    threshold: float  # slide and batch scores above it are out of domain

    def save(self, path: Path) -> None:
        np.savez(
            path,
            feature_means=self.feature_means,
            feature_precision=self.feature_precision,
            image_means=self.image_means,
            image_precision=self.image_precision,
            use_diameter=np.bool_(self.use_diameter),
            cell_centre=self.cell_centre,
            cell_scale=self.cell_scale,
            centre=self.centre,
            scale=self.scale,
            threshold=np.float64(self.threshold),
        )

    @classmethod
    def load(cls, path: Path) -> DomainProfile:
        with np.load(path, allow_pickle=False) as z:
            profile = cls(
                z["feature_means"].astype(np.float32),
                z["feature_precision"].astype(np.float32),
                z["image_means"].astype(np.float32),
                z["image_precision"].astype(np.float32),
                bool(z["use_diameter"]),
                z["cell_centre"].astype(np.float64),
                z["cell_scale"].astype(np.float64),
                z["centre"].astype(np.float64),
                z["scale"].astype(np.float64),
                float(z["threshold"]),
            )
        k = profile.image_means.shape[1]
        c = profile.feature_means.shape[0]
        if (
            k != 3 + profile.use_diameter
            or profile.centre.shape != (2,)
            or profile.cell_centre.shape != (2, c)
            or not (np.all(profile.scale > 0) and np.all(profile.cell_scale > 0))
        ):
            raise ValueError("inconsistent domain profile arrays")
        return profile


# --- per cell ------------------------------------------------------------------------------------


def image_vectors(surround_lab: np.ndarray, diameter_px: np.ndarray, use_diameter: bool) -> np.ndarray:
    """(N, K) float64: surroundings' lαβ colour, plus log diameter when ``use_diameter``."""
    colour = np.asarray(surround_lab, np.float64).reshape(-1, 3)
    if not use_diameter:
        return colour
    with np.errstate(divide="ignore", invalid="ignore"):
        log_d = np.log(np.asarray(diameter_px, np.float64))
    return np.column_stack([colour, log_d])


def nearest_class(features: Any, means: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d, c): the squared Mahalanobis distance to the nearest class mean and that class, per row."""
    f = torch.as_tensor(features, dtype=torch.float32).detach()
    diff = f[:, None, :] - torch.from_numpy(means)[None, :, :]  # (N, C, D)
    d = torch.einsum("ncd,de,nce->nc", diff, torch.from_numpy(precision), diff)
    best = d.min(dim=1)
    return best.values.double().numpy(), best.indices.numpy()


def _standardised(profile: DomainProfile, component: int, d: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """(d - cell_centre[component, c]) / cell_scale[component, c]; NaN where d is NaN or c < 0."""
    ok = (cls >= 0) & np.isfinite(d)
    k = np.where(ok, cls, 0)
    out = (d - profile.cell_centre[component, k]) / profile.cell_scale[component, k]
    return np.where(ok, out, np.nan)


def feature_cells(profile: DomainProfile, features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: the standardised feature distance u_f (float64) and the nearest class (int64)."""
    d, cls = nearest_class(features, profile.feature_means, profile.feature_precision)
    return _standardised(profile, 0, d, cls), cls.astype(np.int64)


def image_distances(profile: DomainProfile, surround_lab: np.ndarray, diameter_px: np.ndarray) -> np.ndarray:
    """The image vector's squared Mahalanobis distance to its nearest class (float64, N); NaN where
    a statistic is missing."""
    v = image_vectors(surround_lab, diameter_px, profile.use_diameter)
    out = np.full(len(v), np.nan)
    ok = np.isfinite(v).all(axis=1)
    if ok.any():
        out[ok] = distances(v[ok].astype(np.float32), profile.image_means, profile.image_precision)
    return out


def image_cells(
    profile: DomainProfile, surround_lab: np.ndarray, diameter_px: np.ndarray, nearest: np.ndarray
) -> np.ndarray:
    """Per cell: the standardised image distance u_i, standardised for the cell's nearest class in
    feature space (``nearest``; < 0: none)."""
    return _standardised(profile, 1, image_distances(profile, surround_lab, diameter_px), np.asarray(nearest))


# --- per slide / batch ---------------------------------------------------------------------------


def trimmed_statistics(feature_d: np.ndarray, image_d: np.ndarray) -> np.ndarray | None:
    """(2,) trimmed means of the scored cells' distances; None with fewer than MIN_CELLS scored cells.

    A cell is scored when both its distances are finite."""
    f, i = np.asarray(feature_d, np.float64), np.asarray(image_d, np.float64)
    ok = np.isfinite(f) & np.isfinite(i)
    if ok.sum() < MIN_CELLS:
        return None
    return np.array([trim_mean(f[ok], TRIM), trim_mean(i[ok], TRIM)])


def score(profile: DomainProfile, feature_d: np.ndarray, image_d: np.ndarray) -> float | None:
    """max_k z_k of the module docstring for one slide or batch; None when it has too few cells."""
    t = trimmed_statistics(feature_d, image_d)
    return None if t is None else float(np.max((t - profile.centre) / profile.scale))


@dataclass(frozen=True)
class DomainVerdict:
    verdict: Verdict
    score: float | None
    threshold: float | None
    method: str
    slides_out_of_domain: tuple[str, ...]
    slide_scores: dict[str, float | None]


NOT_CHECKED: Final[DomainVerdict] = DomainVerdict(
    "not_checked", None, None, "none: the model has no domain profile", (), {}
)


def check(
    profile: DomainProfile | None, sample_ids: np.ndarray, feature_d: np.ndarray, image_d: np.ndarray, order: list[str]
) -> DomainVerdict:
    """Per-slide scores (``order``: every sample id, also those without cells) and the batch verdict."""
    if profile is None:
        return DomainVerdict(NOT_CHECKED.verdict, None, None, NOT_CHECKED.method, (), dict.fromkeys(order))
    ids = np.asarray(sample_ids)
    by_slide = np.argsort(ids, kind="stable")
    keys, starts = np.unique(ids[by_slide], return_index=True)
    cells = dict(zip(keys.tolist(), np.split(by_slide, starts[1:]), strict=True)) if len(ids) else {}
    empty = np.empty(0, np.int64)
    slide = {s: score(profile, feature_d[cells.get(s, empty)], image_d[cells.get(s, empty)]) for s in order}
    flagged = tuple(s for s in order if (v := slide[s]) is not None and v > profile.threshold)
    batch = score(profile, feature_d, image_d)
    if batch is None:
        verdict: Verdict = "not_checked"
    else:
        verdict = "out_of_domain" if batch > profile.threshold else "in_domain"
    return DomainVerdict(verdict, batch, profile.threshold, METHOD, flagged, slide)


# --- fitting -------------------------------------------------------------------------------------


def resample_slides(
    labels: np.ndarray,
    n_cells: int,
    n_slides: int,
    rng: np.random.Generator,
    differential: tuple[float, ...] = DIFFERENTIAL,
    bootstrap_pool: bool = False,
) -> list[np.ndarray]:
    """Index arrays of ``n_slides`` slides of ``n_cells`` cells each, composition ~ Multinomial(n, differential).

    Within a class cells are drawn without replacement while the class has enough, else with.
    With ``bootstrap_pool`` each slide is drawn from its own bootstrap replicate of each class's
    cells (two-stage resampling), so that the slides' spread includes the uncertainty of the
    reference sample itself: the reference is a finite sample of the laboratory's cells, and a new
    slide varies around the laboratory's mean, not around this sample's (the 1 + 1/n term of a
    prediction interval)."""
    labels = np.asarray(labels)
    pools = [np.flatnonzero(labels == c) for c in range(len(differential))]
    p = np.array([d if len(pool) else 0.0 for d, pool in zip(differential, pools, strict=True)])
    if p.sum() == 0:
        raise ValueError("no cells of any class to resample slides from")
    p = p / p.sum()
    slides = []
    for counts in rng.multinomial(n_cells, p, size=n_slides):
        parts = []
        for pool, k in zip(pools, counts, strict=True):
            if k:
                source = rng.choice(pool, len(pool), replace=True) if bootstrap_pool else pool
                parts.append(rng.choice(source, k, replace=k > len(source)))
        slides.append(np.concatenate(parts))
    return slides


def fit_profile(
    train: CellSample, validation: CellSample, n_classes: int, seed: int = 0, n_resamples: int = N_RESAMPLES
) -> DomainProfile:
    """Class densities from ``train``; per-class cell standardisation, then centre, scale and
    threshold from resampled ``validation`` slides (module docstring)."""
    use_diameter = bool(np.isfinite(train.diameter_px).any())
    tr = train.scored(use_diameter)
    f_means, f_prec = fit_density(tr.features, tr.labels, n_classes)
    i_means, i_prec = fit_density(image_vectors(tr.surround_lab, tr.diameter_px, use_diameter), tr.labels, n_classes)
    ones, zeros = np.ones((2, n_classes)), np.zeros((2, n_classes))
    draft = DomainProfile(f_means, f_prec, i_means, i_prec, use_diameter, zeros, ones, np.zeros(2), np.ones(2), np.inf)
    va = validation.scored(use_diameter)
    fd, nearest = nearest_class(va.features, f_means, f_prec)
    idist = image_distances(draft, va.surround_lab, va.diameter_px)
    cell_centre, cell_scale = _per_class(np.stack([fd, idist]), nearest, n_classes)
    cells = DomainProfile(
        f_means, f_prec, i_means, i_prec, use_diameter, cell_centre, cell_scale, np.zeros(2), np.ones(2), np.inf
    )
    uf, ui = _standardised(cells, 0, fd, nearest), _standardised(cells, 1, idist, nearest)
    rng = np.random.default_rng(seed)
    slides = resample_slides(va.labels, REF_CELLS, n_resamples, rng, bootstrap_pool=True)
    stats = np.array([trimmed_statistics(uf[s], ui[s]) for s in slides])
    centre, scale = stats.mean(0), stats.std(0, ddof=1)
    threshold = float(np.quantile(((stats - centre) / scale).max(1), QUANTILE))
    return DomainProfile(
        f_means, f_prec, i_means, i_prec, use_diameter, cell_centre, cell_scale, centre, scale, threshold
    )


def _per_class(d: np.ndarray, nearest: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and SD (2, C) of each component's distances over the cells nearest to each class; a
    class nearest to fewer than MIN_CLASS_CELLS cells takes the values over all cells."""
    centre, scale = np.empty((2, n_classes)), np.empty((2, n_classes))
    for c in range(n_classes):
        sel = d[:, nearest == c] if (nearest == c).sum() >= MIN_CLASS_CELLS else d
        centre[:, c], scale[:, c] = sel.mean(1), sel.std(1, ddof=1)
    return centre, np.maximum(scale, 1e-12)


@dataclass(frozen=True)
class CellSample:
    """Per-cell inputs of the profile: backbone features, image statistics, labels (CELL_CLASSES index)."""

    features: np.ndarray  # (N, D) float32
    surround_lab: np.ndarray  # (N, 3)
    diameter_px: np.ndarray  # (N,) NaN where no cell was located (or image framing)
    no_cell: np.ndarray  # (N,) bool
    labels: np.ndarray  # (N,) int

    def scored(self, use_diameter: bool) -> CellSample:
        """The cells the check scores: a located cell (cell framing) and finite statistics."""
        v = image_vectors(self.surround_lab, self.diameter_px, use_diameter)
        keep = ~self.no_cell & np.isfinite(v).all(axis=1) & np.isfinite(self.features).all(axis=1)
        return CellSample(
            self.features[keep], self.surround_lab[keep], self.diameter_px[keep], self.no_cell[keep], self.labels[keep]
        )


# --- storage -------------------------------------------------------------------------------------


def save_profile(profile: DomainProfile, model_dir: Path, figures: dict[str, Any]) -> dict[str, Any]:
    """Write the profile beside the weights; returns the card's ``domain_profile`` section."""
    path = model_dir / DOMAIN_FILE
    profile.save(path)
    return {
        "method": METHOD,
        "file": DOMAIN_FILE,
        "sha256": sha256_file(path),
        "threshold": profile.threshold,
        "ref_cells": REF_CELLS,
        "min_cells": MIN_CELLS,
        "quantile": QUANTILE,
        **figures,
    }


def load_profile(model_dir: Path, card: dict[str, Any]) -> DomainProfile | None:
    """The artifact's domain profile, its sha256 checked against the card; None when it has none."""
    path = verified_sidecar(model_dir, card, "domain_profile", DOMAIN_FILE, "domain profile")
    if path is None:
        return None
    try:
        return DomainProfile.load(path)
    except (OSError, ValueError, KeyError) as e:
        raise WbcvError(f"{path}: unreadable domain profile: {e}") from None
