"""Stain normalisation: Reinhard colour transfer to fixed statistics of the training laboratory.

Reinhard, Ashikhmin, Gooch & Shirley, *Color transfer between images*, IEEE CG&A 21(5) (2001):
convert RGB to Ruderman's decorrelated lαβ space (RGB -> LMS cone responses -> log10 -> a fixed
orthogonal rotation), shift and scale each of the three channels so that their mean and standard
deviation over the chosen pixels equal the target's, and convert back. In lαβ the three channels
are nearly decorrelated for natural images, so the per-channel transfer changes brightness,
yellow-blue and red-green balance independently.

Here the statistics are taken over a *mask* (the cell: the disc of ``cell_fraction`` of a crop made
by ``crop_to_cell``, see ``disc_mask``; or the located cell mask), and the target statistics come
from images of the training laboratory (PBC) only: ``stain_target`` computes them from a list of
images (so that training can store them in the model card as ``StainStats.to_dict()``), and
``PBC_TARGET`` holds the values computed with ``benchmarks/eval_stain.py --target`` from the
bundled model's PBC training split.

Because the whole map is a per-channel affine map in log-LMS coordinates, it folds into one 3 x 3
matrix and an offset in log space: RGB -> LMS (matrix), log, matrix + offset, exp, LMS -> RGB
(matrix). Everything is float32 numpy on the whole batch, the 3 x 3 products written out
elementwise (no BLAS: single-threaded, and the same result whatever the batch size).

Degenerate inputs: a channel whose standard deviation is below ``MIN_STD`` (a grayscale image has
no α and β spread at all) is only shifted to the target mean, not stretched; a mask with fewer
than ``MIN_PIXELS`` pixels falls back to the whole image. Black pixels are handled by working on
``(RGB + 1) / 256``, so nothing is ever log(0), and the result is clipped to 0..255.

A caveat worth knowing: matching the mean and spread of the *cell's own* pixels also removes the
colour differences between cell classes (an eosinophil's orange granules versus a neutrophil's
lilac ones) as far as they show in those statistics; the classifier keeps the cell's texture and
its colour contrasts, not its absolute colour. ``benchmarks/eval_stain.py`` measures how much
class information the mean colour carries before and after.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import numpy as np

# Reinhard et al. (2001), eq. 1-4 and 6-8 (RGB -> LMS, LMS -> lαβ and the inverses).
_RGB2LMS: Final[np.ndarray] = np.array(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]], dtype=np.float64
)
_LMS2LAB: Final[np.ndarray] = np.diag([1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)]) @ np.array(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]
)
_LAB2LMS: Final[np.ndarray] = np.linalg.inv(_LMS2LAB)
_LMS2RGB: Final[np.ndarray] = np.linalg.inv(_RGB2LMS)

#: Below this standard deviation (lαβ units, log10) a channel is shifted, not stretched.
MIN_STD: Final[float] = 0.002
#: A mask with fewer pixels than this is ignored (statistics over the whole image instead).
MIN_PIXELS: Final[int] = 16
#: The largest stretch of a channel's spread (target std / source std).
MAX_GAIN: Final[float] = 4.0


@dataclass(frozen=True)
class StainStats:
    """Mean and standard deviation of l, α, β (Ruderman's lαβ, log10 units) over a mask."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, object]:
        return {"space": "lab-ruderman-log10", "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> StainStats:
        if d.get("space") != "lab-ruderman-log10":
            raise ValueError(f"unknown stain statistics space {d.get('space')!r}; expected 'lab-ruderman-log10'")
        mean, std = d["mean"], d["std"]
        if not (isinstance(mean, list | tuple) and isinstance(std, list | tuple) and len(mean) == len(std) == 3):
            raise ValueError("stain statistics need three means and three standard deviations")
        return cls((float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2])))


#: PBC (CellaVision DM96, May-Grünwald-Giemsa) target: the mean per-image statistics of the cell
#: disc (``disc_mask(96, 0.7)``) of crop_to_cell(..., 96, 0.7) crops of the 6,179 images of the
#: bundled model's training split (``python benchmarks/eval_stain.py --target``).
PBC_TARGET: Final[StainStats] = StainStats(mean=(-0.602, -0.1244, 0.0197), std=(0.2937, 0.1279, 0.0094))


def _as_batch(images: np.ndarray) -> np.ndarray:
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {a.dtype}")
    if a.ndim == 3 and a.shape[-1] not in (3, 4):  # batch of grayscale images
        a = np.repeat(a[..., None], 3, axis=3)
    if a.ndim != 4 or a.shape[3] not in (3, 4):
        raise ValueError(f"expected a batch (N, H, W, 3) of RGB images, got shape {a.shape}")
    return a[..., :3]


def _mix(m: np.ndarray, x: tuple[np.ndarray, ...], offset: np.ndarray | None = None) -> list[np.ndarray]:
    """``m @ x (+ offset)`` for colour planes x (three arrays): elementwise, no BLAS.

    ``m`` is (3, 3), or (N, 3, 3) with planes (N, P) for one matrix per image; ``offset`` (3,) or
    (N, 3). Elementwise arithmetic keeps the result single-threaded and identical whatever the
    batch size (a BLAS matrix product may block and thread differently for different sizes).
    """
    out = []
    for i in range(3):
        if m.ndim == 2:
            acc = np.float32(m[i, 0]) * x[0]
            acc += np.float32(m[i, 1]) * x[1]
            acc += np.float32(m[i, 2]) * x[2]
            if offset is not None:
                acc += np.float32(offset[i])
        else:
            col = m[:, i, :, None].astype(np.float32)
            acc = col[:, 0] * x[0]
            acc += col[:, 1] * x[1]
            acc += col[:, 2] * x[2]
            if offset is not None:
                acc += offset[:, i, None].astype(np.float32)
        out.append(acc)
    return out


def _ln_lms(images: np.ndarray) -> list[np.ndarray]:
    """Natural log of the LMS planes (N, P) of (RGB + 1) / 256."""
    n = images.shape[0]
    rgb = tuple(images[..., c].reshape(n, -1).astype(np.float32) for c in range(3))
    lms = _mix(_RGB2LMS / 256.0, rgb, _RGB2LMS.sum(axis=1) / 256.0)  # the + 1 of (RGB + 1) / 256
    for plane in lms:
        np.maximum(plane, np.float32(1e-4), out=plane)
        np.log(plane, out=plane)
    return lms


def _lab(ln_lms: list[np.ndarray]) -> list[np.ndarray]:
    """lαβ planes (log10 units, as in Reinhard et al.) from natural-log LMS planes."""
    return _mix(_LMS2LAB / math.log(10.0), tuple(ln_lms))


def _pixel_stats(ln_lms: list[np.ndarray], idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (N, 3) of the lαβ values of the pixels ``idx`` (flat indices) of every image;
    only those pixels are converted to lαβ."""
    lab = np.stack(_lab([plane[:, idx] for plane in ln_lms]), axis=1)  # (N, 3, K)
    mean = lab.mean(axis=2, dtype=np.float64)
    var = np.square(lab, dtype=np.float64).mean(axis=2) - mean * mean
    return mean, np.sqrt(np.maximum(var, 0.0))


def _masked_stats(ln_lms: list[np.ndarray], masks: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per image mean and std (N, 3) of lαβ over its mask: one (H, W) mask for all, (N, H, W) one
    each, or None (whole image); a mask with fewer than ``MIN_PIXELS`` pixels means the whole image.
    Each image's numbers are the same whichever form its mask came in."""
    n, p = ln_lms[0].shape
    every = np.arange(p)
    if masks is None or np.ndim(masks) == 2:
        idx = every if masks is None else np.flatnonzero(masks)
        return _pixel_stats(ln_lms, idx if idx.size >= MIN_PIXELS else every)
    flat = np.asarray(masks, dtype=bool).reshape(n, p)
    stats = []
    for i in range(n):
        idx = np.flatnonzero(flat[i])
        stats.append(_pixel_stats([plane[i : i + 1] for plane in ln_lms], idx if idx.size >= MIN_PIXELS else every))
    return np.concatenate([m for m, _ in stats]), np.concatenate([sd for _, sd in stats])


def _check_masks(masks: np.ndarray | None, images: np.ndarray) -> np.ndarray | None:
    if masks is None:
        return None
    m = np.asarray(masks, dtype=bool)
    if m.ndim == 2 and m.shape == images.shape[1:3]:
        m = np.broadcast_to(m, images.shape[:3])
    if m.shape != images.shape[:3]:
        raise ValueError(f"masks of shape {m.shape} do not match images of shape {images.shape[:3]}")
    return m


def stain_stats(images: np.ndarray, masks: np.ndarray | None = None) -> list[StainStats]:
    """lαβ statistics of each image of a batch (N, H, W, 3) over its mask (N, H, W) or one mask (H, W)."""
    imgs = _as_batch(images)
    m = _check_masks(masks, imgs)
    mean, std = _masked_stats(_ln_lms(imgs), masks if masks is not None and np.ndim(masks) == 2 else m)
    return [StainStats(tuple(mu.tolist()), tuple(sd.tolist())) for mu, sd in zip(mean, std, strict=True)]


def stain_target(images: Iterable[np.ndarray], masks: Iterable[np.ndarray | None] | None = None) -> StainStats:
    """Target statistics: the mean over images of the per-image means and standard deviations.

    ``images`` are (H, W, 3) uint8 arrays of the training laboratory; ``masks`` the matching
    boolean masks (or None for whole images). Compute it on exactly the kind of input that
    ``normalise_stain`` will see (e.g. ``crop_to_cell`` crops with ``disc_mask``).
    """
    means, stds = [], []
    mask_iter = iter(masks) if masks is not None else None
    for im in images:
        m = next(mask_iter) if mask_iter is not None else None
        s = stain_stats(np.asarray(im)[None], None if m is None else np.asarray(m)[None])[0]
        means.append(s.mean)
        stds.append(s.std)
    if not means:
        raise ValueError("no images to compute stain statistics from")
    mu = np.mean(np.asarray(means), axis=0)
    sd = np.mean(np.asarray(stds), axis=0)
    return StainStats((float(mu[0]), float(mu[1]), float(mu[2])), (float(sd[0]), float(sd[1]), float(sd[2])))


def normalise_stain(
    images: np.ndarray, masks: np.ndarray | None = None, target: StainStats = PBC_TARGET, spread: bool = True
) -> np.ndarray:
    """Reinhard-normalise one image (H, W, 3) or a batch (N, H, W, 3) of uint8 RGB to ``target``.

    ``masks`` (bool, (H, W) for all, or (N, H, W)) selects the pixels whose statistics are
    matched (the cell); the transfer is applied to every pixel. With ``spread`` False only the
    means are matched (a shift in lαβ: a colour cast and brightness), not the spreads, which for
    pixels around a cell depend on how many red cells lie there rather than on the stain. Returns
    uint8 RGB of the input's shape (a grayscale (H, W) image comes back as (H, W, 3)).
    """
    a = np.asarray(images)
    single = a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))  # one grayscale or colour image
    batch = _as_batch(a[None] if single else a)
    m = _check_masks(masks, batch)
    n, h, w, _ = batch.shape
    shared = masks if masks is not None and np.ndim(masks) == 2 else m
    rgb = _general(batch, shared, target) if spread else _shift_only(batch, shared, target)
    res = np.empty((n, h * w, 3), np.uint8)
    for c in range(3):
        np.clip(rgb[c], 0.0, 255.0, out=rgb[c])
        res[..., c] = rgb[c]
    res = res.reshape(n, h, w, 3)
    return res[0] if single else res


def _general(batch: np.ndarray, masks: np.ndarray | None, target: StainStats) -> list[np.ndarray]:
    """RGB planes (N, P), before rounding, of the full transfer (means and spreads)."""
    ln_lms = _ln_lms(batch)
    mean, std = _masked_stats(ln_lms, masks)
    t_mean = np.asarray(target.mean)
    t_std = np.asarray(target.std)
    gain = np.where(std >= MIN_STD, t_std / np.maximum(std, MIN_STD), 1.0)
    gain = np.minimum(gain, MAX_GAIN)
    # lab' = gain * (lab - mean) + t_mean, folded into log-LMS: A = L2M diag(g) M2L, b = L2M (t - g mean)
    # (A is the same in natural-log units; b is scaled by ln 10)
    a_mat = np.einsum("ij,nj,jk->nik", _LAB2LMS, gain, _LMS2LAB)
    b_vec = (t_mean[None, :] - gain * mean) @ _LAB2LMS.T * math.log(10.0)
    z = _mix(a_mat, tuple(ln_lms), b_vec)
    for plane in z:
        np.exp(plane, out=plane)
    # back to RGB: 256 * LMS2RGB @ lms - 1, + 0.5 so that truncation rounds
    return _mix(_LMS2RGB * 256.0, tuple(z), np.full(3, -0.5))


def _shift_only(batch: np.ndarray, masks: np.ndarray | None, target: StainStats) -> list[np.ndarray]:
    """RGB planes (N, P), before rounding, of the transfer of the means only.

    With gain 1 the shift d = t_mean - mean in lαβ is a shift c = ln 10 * L2M d of log-LMS, that is
    a per-channel factor exp(c) on LMS: the whole map is one 3 x 3 matrix on RGB + 1,
    K = LMS2RGB diag(exp(c)) RGB2LMS, the same result as the general path without a log or an exp
    per pixel. Only the masked pixels are converted to log space, for their mean.
    """
    n = batch.shape[0]
    flat = batch.reshape(n, -1, 3)
    if masks is not None and np.ndim(masks) == 2 and np.count_nonzero(masks) >= MIN_PIXELS:
        ring = _ln_lms(flat[:, np.flatnonzero(masks)])
        mean, _ = _pixel_stats(ring, np.arange(ring[0].shape[1]))
    else:
        mean, _ = _masked_stats(_ln_lms(batch), masks)
    c = (np.asarray(target.mean)[None, :] - mean) @ _LAB2LMS.T * math.log(10.0)
    k = np.einsum("ij,nj,jk->nik", _LMS2RGB, np.exp(c), _RGB2LMS)
    plus_one = tuple(flat[..., i].astype(np.float32) + np.float32(1.0) for i in range(3))
    return _mix(k, plus_one, np.full((n, 3), -0.5))


def disc_mask(size: int, cell_fraction: float) -> np.ndarray:
    """(size, size) bool: the centred disc of diameter ``cell_fraction * size`` (the cell in a crop_to_cell crop)."""
    c = (size - 1) / 2.0
    yy, xx = np.ogrid[:size, :size]
    return (yy - c) ** 2 + (xx - c) ** 2 <= (cell_fraction * size / 2.0) ** 2
