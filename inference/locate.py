"""Finding the white blood cell in a single-cell image from any laboratory, at any scale.

A cell image from a digital-morphology scanner holds one white blood cell (WBC), usually near the
centre, among red cells on a bright background; how large the cell is in pixels and what colour
the stain gives it depend on the laboratory. The classifier must not see either difference, so the
pipeline first finds the cell and then crops it to a fixed size (``crop_to_cell``): the cell, not
the image, fills a fixed share of the network's input.

The method starts from the classic one (Otsu thresholds on a colour channel in which the nucleus is
the most saturated, darkest blue-purple object; the cytoplasm grown around it), with cues chosen to
hold across laboratories and stains:

1. **Working resolution.** The image is reduced by an integer stride ``k`` to about ``work_size``
   pixels on the long side; each working pixel is the mean of four samples of its k x k block.
2. **Background and optical density.** The background is the brightest mode: the mean colour of
   the brightest tenth of the pixels. Every pixel becomes an optical density (OD) relative to it,
   ``OD_c = ln(bg_c + 1) - ln(I_c + 1)`` per channel, so a yellowish (rapid stain) or peach (May-
   Grünwald-Giemsa) background both become OD 0 and the camera's white balance drops out.
3. **Nucleus.** Nuclear stains (haematoxylin, azure/methylene blue in Romanowsky stains) absorb
   green and let blue through, red cells and eosinophilic granules absorb green *and* blue. The
   nucleus cue is ``OD_green - OD_blue`` (3 x 3 box-smoothed); measured on PBC and Raabin fields it
   is 1-2.5 in nuclei and below 0.4 in red cells of both labs, whereas red-channel OD or
   saturation confuse Raabin's grey-purple red cells with nuclei. The threshold is the upper one of
   a three-class Otsu (background / red cells + cytoplasm / nucleus) of the image's own cue
   distribution, never below ``NUCLEUS_FLOOR``. An image without colour (the cue's 99th percentile
   below ``COLOURLESS_MAX``: a monochrome camera) uses the mean OD instead: its nucleus is the
   darkest object. Nucleus pixels within about ``LOBE_GAP_FRAC`` of
   the long side of each other are one cluster (the lobes of a neutrophil; found at half
   resolution); the cluster with the largest nucleus area, discounted by its distance from the
   image centre, is the cell's nucleus.
4. **Cell (nucleus + cytoplasm).** From the nucleus's centre, ``N_ANGLES`` rays sample the
   stain cue (the sum of absolute ODs, which also sees pale cytoplasm whose blue OD is negative).
   The cell's outline is the closed path, at least one pixel beyond the nucleus on every ray and
   changing by at most one pixel of radius per ray, that maximises the edge evidence (stain falling
   outwards; stain rising into a touching red cell, weight ``RISE_W``; background just outside,
   ``BG_W``) minus the background it encloses (``REG_W`` per background sample): a dynamic
   programme over the rays, run over 1.25 turns so that the outline closes. It is run twice: the
   first outline's centroid is the origin from which the final one is drawn. The outline is
   star-shaped about its origin, so the cell mask has no holes and a touching red cell cannot
   pull it far: a red cell is only taken in when no edge separates it and no background lies
   between.
5. **Checks.** ``found`` is False, with the reason, for an image that is blank or overexposed,
   too dark, uniform (no stained object), noise (most of its variation from pixel to pixel),
   without a nucleus-like object (e.g. only red cells), with a nucleus far too small to be a
   WBC's, or out of focus (the nucleus edge is wider than ``BLUR_MAX`` of the nucleus's diameter:
   only severe defocus: sharp PBC cells measure 0.05-0.13, Raabin smartphone images up to 0.19).

Every step is a vectorised numpy/scipy.ndimage operation on the whole batch (``locate_batch``), so
the per-call overhead of the small arrays is shared by all cells of a batch; ``locate_cell`` is a
batch of one. The constants were chosen on PBC fields (visually) and on crops of Raabin-WBC fields
of the train split (against their WBC boxes), never on the Tecom set, which is kept for the
second-lab check (``benchmarks/eval_locate.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Final

import numpy as np
import scipy.ndimage as ndi
from PIL import Image

from wbcv.inference.decode import CellRejected

#: Default long side of the working resolution, pixels.
WORK_SIZE: Final[int] = 80
#: Rays of the cell outline (one every 11.25 degrees).
N_ANGLES: Final[int] = 32
#: Rays of the first outline (only its centroid is used, as the origin of the second); 16 would
#: be cheaper but made the diameter less stable under rescaling of PBC images (96 % instead of
#: 100 % within 10 % at 0.5x).
FIRST_PASS_ANGLES: Final[int] = 32
#: The nucleus cue threshold (OD green - OD blue) never goes below this (red cells stay under 0.4).
NUCLEUS_FLOOR: Final[float] = 0.45
#: Nucleus pixels closer than this share of the working long side are lobes of one nucleus.
LOBE_GAP_FRAC: Final[float] = 0.05
#: The background/stained threshold of the outline is this share of the lower three-class Otsu
#: threshold of the stain cue.
FG_FRAC: Final[float] = 0.2
#: Weights of the outline's evidence terms (see the module docstring).
RISE_W: Final[float] = 1.0
BG_W: Final[float] = 0.6
REG_W: Final[float] = 0.5
#: Smallest nucleus, as a share of the image area, that counts as a WBC's (a platelet is smaller).
MIN_NUCLEUS_FRAC: Final[float] = 0.004
#: Largest nucleus edge width, as a share of the nucleus diameter, of a cell in focus.
BLUR_MAX: Final[float] = 0.28
#: Exposure limits: share of white-saturated pixels; brightness of the background (0..255).
SATURATED_MAX: Final[float] = 0.95
DARK_MIN: Final[float] = 40.0
#: Largest share of the stain cue's variance that is pixel-to-pixel (PBC at most 0.14, white noise 0.87).
NOISE_MAX: Final[float] = 0.5
#: Below this 99th percentile of |nucleus cue| an image has no colour: the cue falls back to mean OD.
COLOURLESS_MAX: Final[float] = 0.08
#: Smallest stain contrast (99th percentile of the summed OD) of an image with anything on it.
CONTRAST_MIN: Final[float] = 0.15

#: Default share of the crop's side that the cell's diameter fills in ``crop_to_cell``.
CELL_FRACTION: Final[float] = 0.7

_OTSU_BINS: Final[int] = 24
#: Rays are sampled up to this share of the working long side from the nucleus.
RAY_LENGTH: Final[float] = 0.5
_TWO_PI: Final[float] = 2.0 * math.pi


@dataclass(frozen=True, eq=False)
class LocatedCell:
    """Where the WBC is in one image (coordinates in the original image's pixels unless named).

    ``found`` False comes with ``reason``; the geometry fields then hold NaN and the masks are
    empty. The masks are drawn on demand from the outline and the nucleus cue: ``cell_mask`` and
    ``nucleus_mask`` at the working resolution (``stride`` original pixels per working pixel,
    ``work_shape``), ``cell_mask_at`` and ``nucleus_mask_at`` at any size (the original image's by
    default).
    """

    found: bool
    reason: str
    image_shape: tuple[int, int]
    stride: int
    work_shape: tuple[int, int]
    centre: tuple[float, float]  # (row, col) of the cell's centroid
    bbox: tuple[float, float, float, float]  # (top, left, bottom, right) of the cell outline
    diameter_px: float  # diameter of the circle with the cell's area
    nucleus_diameter_px: float  # same for the nucleus
    background: tuple[float, float, float]  # RGB 0..255
    edge_fraction: float  # share of the outline lying on the image border (the cell is cut off)
    blur: float  # nucleus edge width / nucleus diameter (larger = less sharp)
    # the outline as drawn at the working resolution: origin (row, col) and one radius per ray
    origin: tuple[float, float]
    radii: np.ndarray = field(repr=False)  # (N_ANGLES,) float32, working pixels
    nucleus_cue: np.ndarray = field(repr=False)  # (h, w) float32, OD green - OD blue
    nucleus_threshold: float

    @cached_property
    def cell_mask(self) -> np.ndarray:
        """(h, w) bool at the working resolution."""
        if not self.found:
            return np.zeros(self.work_shape, bool)
        rows = np.arange(self.work_shape[0], dtype=np.float32) - self.origin[0]
        cols = np.arange(self.work_shape[1], dtype=np.float32) - self.origin[1]
        return _star_mask(rows, cols, self.radii[None, :])[0]

    @cached_property
    def nucleus_mask(self) -> np.ndarray:
        """(h, w) bool at the working resolution."""
        return (self.nucleus_cue > self.nucleus_threshold) & self.cell_mask

    def diameter_um(self, um_per_px: float) -> float:
        """The cell's equivalent diameter in micrometres, for a scanner of ``um_per_px``."""
        return self.diameter_px * um_per_px

    def cell_mask_at(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The cell mask drawn at ``shape`` (default: the original image's size) from the outline."""
        shape = self.image_shape if shape is None else shape
        if not self.found:
            return np.zeros(shape, bool)
        rows, cols = self._working_coords(shape)
        return _star_mask(rows - self.origin[0], cols - self.origin[1], self.radii[None, :])[0]

    def nucleus_mask_at(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The nucleus mask at ``shape``: the nucleus cue (bilinear) above its threshold, inside the cell."""
        shape = self.image_shape if shape is None else shape
        if not self.found:
            return np.zeros(shape, bool)
        rows, cols = self._working_coords(shape)
        grid = np.meshgrid(rows, cols, indexing="ij")
        cue = ndi.map_coordinates(self.nucleus_cue, grid, order=1, mode="nearest")
        return (cue > self.nucleus_threshold) & self.cell_mask_at(shape)

    def _working_coords(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Working-resolution coordinates of the pixel centres of the image resampled to ``shape``."""
        k = self.stride
        off = _offset(k)
        rows = ((np.arange(shape[0]) + 0.5) * (self.image_shape[0] / shape[0]) - 0.5 - off) / k
        cols = ((np.arange(shape[1]) + 0.5) * (self.image_shape[1] / shape[1]) - 0.5 - off) / k
        return rows, cols


def _offset(k: int) -> float:
    """Original-image coordinate of working pixel 0 (the mean of its samples at offsets 0 and k // 2)."""
    return (k // 2) / 2.0


def _stride(height: int, width: int, work_size: int) -> int:
    return max(1, int(max(height, width) / work_size + 0.5))


def _as_rgb_batch(images: np.ndarray) -> np.ndarray:
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {a.dtype}")
    if a.ndim == 3:  # a batch of grayscale images
        a = np.repeat(a[..., None], 3, axis=3)
    if a.ndim != 4 or a.shape[3] not in (3, 4):
        raise ValueError(f"expected a batch (N, H, W, 3) of RGB images, got shape {a.shape}")
    return a[..., :3]


def locate_cell(image: np.ndarray, work_size: int = WORK_SIZE) -> LocatedCell:
    """Find the WBC in one RGB (H, W, 3) or grayscale (H, W) uint8 image."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[..., None]
    return locate_batch(a[None] if a.shape[-1] != 1 else a[None, ..., 0], work_size)[0]


def locate_cells(images: Sequence[np.ndarray], work_size: int = WORK_SIZE, batch: int = 64) -> list[LocatedCell]:
    """``locate_batch`` over images of any mix of sizes: same-size images are processed together."""
    out: list[LocatedCell | None] = [None] * len(images)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(np.shape(im), []).append(i)
    for idx in groups.values():
        for s in range(0, len(idx), batch):
            part = idx[s : s + batch]
            for i, res in zip(part, locate_batch(np.stack([images[i] for i in part]), work_size), strict=True):
                out[i] = res
    return out  # type: ignore[return-value]


def _downscale(images: np.ndarray, k: int) -> np.ndarray:
    """Colour planes (3, N, h, w): the sum of four samples of each k x k block (uint16, 0..1020).

    The samples sit at offsets 0 and k // 2 in each axis: a cheap box filter against aliasing.
    """
    hh, ww = images.shape[1:3]
    a = np.moveaxis(images[:, : hh // k * k, : ww // k * k], 3, 0)
    if k == 1:
        return a.astype(np.uint16) * 4
    o = k // 2
    s = a[:, :, 0::k, 0::k].astype(np.uint16)
    s += a[:, :, o::k, o::k]
    s += a[:, :, 0::k, o::k]
    s += a[:, :, o::k, 0::k]
    return s


def _box3(a: np.ndarray) -> np.ndarray:
    """3 x 3 mean over the last two axes (edges replicated)."""
    r = a.copy()
    r[:, 1:] += a[:, :-1]
    r[:, :-1] += a[:, 1:]
    r[:, 0] += a[:, 0]
    r[:, -1] += a[:, -1]
    c = r.copy()
    c[:, :, 1:] += r[:, :, :-1]
    c[:, :, :-1] += r[:, :, 1:]
    c[:, :, 0] += r[:, :, 0]
    c[:, :, -1] += r[:, :, -1]
    c *= np.float32(1.0 / 9.0)
    return c


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation of (N, h, w) masks by a (2r+1) square, separably."""
    if r <= 0:
        return m
    n, h, w = m.shape
    p = np.zeros((n, h + 2 * r, w), bool)
    for i in range(2 * r + 1):
        p[:, i : i + h] |= m
    q = np.zeros((n, h, w + 2 * r), bool)
    rows = p[:, r : r + h]
    for i in range(2 * r + 1):
        q[:, :, i : i + w] |= rows
    return q[:, :, r : r + w]


def _otsu3(values: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the two thresholds of a three-class Otsu of ``values`` (N, h, w) over [0, hi].

    Otsu (1979) generalised to three classes (Liao, Chen & Chung 2001): the pair of thresholds of
    a 32-bin histogram that maximises sum_k w_k mu_k^2, searched exhaustively and vectorised.
    """
    n = values.shape[0]
    b = _OTSU_BINS
    step = (np.maximum(hi, 1e-3) / b).astype(np.float32)
    idx = (values.reshape(n, -1) / step[:, None]).astype(np.int32)
    np.clip(idx, 0, b - 1, out=idx)
    idx += (np.arange(n, dtype=np.int32) * b)[:, None]
    hist = np.bincount(idx.ravel(), minlength=n * b).reshape(n, b).astype(np.float32)
    p = np.cumsum(hist, axis=1)
    s = np.cumsum(hist * _OTSU_CENTRES, axis=1)  # in bin units
    pi, si = p[:, _PAIR_I], s[:, _PAIR_I]  # class 1: bins 0..i
    p2, s2 = p[:, _PAIR_J] - pi, s[:, _PAIR_J] - si  # class 2: bins i+1..j
    p3, s3 = p[:, -1:] - p[:, _PAIR_J], s[:, -1:] - s[:, _PAIR_J]  # class 3: bins j+1..
    with np.errstate(divide="ignore", invalid="ignore"):
        crit = si * si / pi + s2 * s2 / p2 + s3 * s3 / p3
    crit[~((pi > 0) & (p2 > 0) & (p3 > 0))] = -np.inf
    best = np.argmax(crit, axis=1)
    return (_PAIR_I[best] + 1) * step, (_PAIR_J[best] + 1) * step


_PAIR_I, _PAIR_J = np.triu_indices(_OTSU_BINS, 1)
_OTSU_CENTRES: Final[np.ndarray] = np.arange(_OTSU_BINS, dtype=np.float32) + np.float32(0.5)


def _kth_value(a: np.ndarray, q: float) -> np.ndarray:
    """Per image (first axis), the value at quantile ``q`` (order statistic, no interpolation)."""
    flat = a.reshape(a.shape[0], -1)
    k = min(flat.shape[1] - 1, int(q * flat.shape[1]))
    return np.partition(flat, k, axis=1)[:, k]


def _dp_closed(cost: np.ndarray) -> np.ndarray:
    """Per image, the min-cost closed path through (N, A, R) costs, radius changing <= 1 per ray.

    Dynamic programming over the rays; the rays wrap around, so it runs over 1.25 turns and keeps
    the last full turn of the backtracked path (its start and end then agree to within a pixel or
    two, and the mask drawn from it is closed by construction).
    """
    n, a_n, r_n = cost.shape
    ext = a_n + a_n // 4
    acc = np.full((n, ext, r_n + 2), np.float32(1e9), np.float32)
    acc[:, 0, 1:-1] = cost[:, 0]
    for a in range(1, ext):
        p = acc[:, a - 1]
        row = acc[:, a, 1:-1]
        np.minimum(p[:, :-2], p[:, 1:-1], out=row)
        np.minimum(row, p[:, 2:], out=row)
        row += cost[:, a % a_n]
    path = np.empty((n, ext), np.int64)
    j = np.argmin(acc[:, ext - 1, 1:-1], axis=1)
    path[:, ext - 1] = j
    three = np.arange(3)[None, :]
    rows = np.arange(n)
    for a in range(ext - 2, -1, -1):
        cand = acc[rows[:, None], a, j[:, None] + three]  # radii j-1, j, j+1 (padded j, j+1, j+2)
        j = j + np.argmin(cand, axis=1) - 1
        path[:, a] = j
    out = np.empty((n, a_n), np.int64)
    keep = np.arange(ext - a_n, ext)
    out[:, keep % a_n] = path[:, keep]
    return out


def _star_mask(dy: np.ndarray, dx: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Masks (N, h, w) of the star-shaped regions {r <= radius(angle)}, radii (N, A) linearly interpolated.

    ``dy`` (N, h) and ``dx`` (N, w) (or (h,), (w,) for one image) are offsets from each origin.
    """
    dy = np.atleast_2d(dy)[:, :, None]
    dx = np.atleast_2d(dx)[:, None, :]
    n_img, a_n = radii.shape
    pos = np.arctan2(dy, dx) * (a_n / _TWO_PI) % a_n  # fractional ray index
    i0 = pos.astype(np.int64)
    frac = (pos - i0).astype(np.float32)
    i0 %= a_n
    i1 = (i0 + 1) % a_n
    flat_r = radii.reshape(-1)
    base = (np.arange(n_img) * a_n)[:, None, None]
    rad = flat_r[base + i0] * (1 - frac) + flat_r[base + i1] * frac
    return dy * dy + dx * dx <= rad * rad


def locate_batch(images: np.ndarray, work_size: int = WORK_SIZE) -> list[LocatedCell]:
    """Find the WBC in each of a batch (N, H, W, 3) of uint8 RGB single-cell images."""
    imgs = _as_rgb_batch(images)
    n, hh, ww = imgs.shape[:3]
    if n == 0:
        return []
    k = _stride(hh, ww, work_size)
    if hh // k < 8 or ww // k < 8:
        return [
            _not_found(
                f"image is only {ww}x{hh} pixels; at least 8x8 at the working scale is needed",
                (hh, ww),
                k,
                (8, 8),
                np.full(3, np.nan),
            )
            for _ in range(n)
        ]
    planes = _downscale(imgs, k)  # (3, N, h, w) uint16, 4x the mean
    h, w = planes.shape[2:]
    npx = h * w

    # background = brightest tenth; optical density relative to it
    # (estimated on every other row and column)
    sub = planes[:, :, ::2, ::2]
    bright = sub[0] + sub[1] + sub[2]
    q = _kth_value(bright, 0.9)
    bgm = (bright >= q[:, None, None]).reshape(n, -1).astype(np.float32)
    n_bg = bgm.sum(axis=1)
    bg = np.stack([np.einsum("ij,ij->i", p.reshape(n, -1).astype(np.float32), bgm) for p in sub], axis=1)
    bg = bg / n_bg[:, None] / 4.0
    lbg = np.log(bg + 1.0).astype(np.float32)
    lr, lg, lb = np.log1p(planes * np.float32(0.25))
    nuc_cue = _box3((lbg[:, 1] - lbg[:, 2])[:, None, None] - lg + lb)
    lr -= lbg[:, 0, None, None]
    lg -= lbg[:, 1, None, None]
    lb -= lbg[:, 2, None, None]
    fg_raw = np.abs(lr)
    fg_raw += np.abs(lg)
    fg_raw += np.abs(lb)
    fg_cue = _box3(fg_raw)
    # a colourless image (monochrome camera, grayscale export) has no nuclear-stain cue: its nucleus
    # is the darkest object, so the cue becomes the mean OD (PBC in grayscale: nuclei 1-1.5, red cells < 0.4)
    colourless = _kth_value(np.abs(nuc_cue), 0.99) < COLOURLESS_MAX
    if colourless.any():
        nuc_cue[colourless] = fg_cue[colourless] / 3.0
    # share of the stain cue's variance that is pixel-to-pixel (white noise: 8/9; images: far less)
    # (on every other row and column)
    raw_s = fg_raw[:, ::2, ::2]
    resid = raw_s - fg_cue[:, ::2, ::2]
    total_var = raw_s.reshape(n, -1).var(axis=1)
    noise_share = (resid * resid).reshape(n, -1).mean(axis=1) / np.maximum(total_var, 1e-12)

    # image-level checks
    saturated = (bright >= 3 * 4 * 250).reshape(n, -1).mean(axis=1)
    bg_level = bg.mean(axis=1)
    contrast = _kth_value(fg_cue, 0.99)
    nuc_max = nuc_cue.reshape(n, -1).max(axis=1)

    # nucleus: upper three-class Otsu threshold of the nucleus cue (histogram of every other row and
    # column), clustered into lobes; the stain cue's lower threshold scales the outline's background
    fg_max = fg_cue.reshape(n, -1).max(axis=1)
    lower, upper = _otsu3(
        np.concatenate([nuc_cue[:, ::2, ::2], fg_cue[:, ::2, ::2]]), np.maximum(np.concatenate([nuc_max, fg_max]), 0.1)
    )
    t2, f1 = upper[:n], lower[n:]
    t_nuc = np.maximum(t2, NUCLEUS_FLOOR).astype(np.float32)
    nmask = nuc_cue > t_nuc[:, None, None]
    # lobes: clusters of nucleus pixels at half resolution (2 x 2 maximum, then dilated)
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    m2 = np.zeros((n, 2 * h2, 2 * w2), bool)
    m2[:, :h, :w] = nmask
    m2 = m2[:, 0::2, 0::2] | m2[:, 1::2, 0::2] | m2[:, 0::2, 1::2] | m2[:, 1::2, 1::2]
    near = _dilate(m2, max(1, round(LOBE_GAP_FRAC * max(h, w) / 2)))
    lab2, n_lab = ndi.label(near, structure=_STRUCT)
    best_label = np.zeros(n, np.int64)
    nuc_area = np.zeros(n)
    oy = np.full(n, (h - 1) / 2.0, np.float32)
    ox = np.full(n, (w - 1) / 2.0, np.float32)
    if n_lab > 0:
        # per cluster: nucleus area and centroid, from the nucleus pixels only
        idx = np.flatnonzero(nmask)
        img_i, rest = np.divmod(idx, npx)
        y_i, x_i = np.divmod(rest, w)
        lab_i = lab2[img_i, y_i // 2, x_i // 2]
        area = np.bincount(lab_i, minlength=n_lab + 1)[1:].astype(np.float64)
        safe = np.maximum(area, 1.0)
        cy = np.bincount(lab_i, y_i, n_lab + 1)[1:] / safe
        cx = np.bincount(lab_i, x_i, n_lab + 1)[1:] / safe
        comp_img = np.zeros(n_lab, np.int64)
        comp_img[lab_i - 1] = img_i
        d2 = ((cy - (h - 1) / 2) ** 2 + (cx - (w - 1) / 2) ** 2) / (0.25 * min(h, w)) ** 2
        score = np.where(area > 0, area / (1.0 + d2), -1.0)
        top = np.full(n, -np.inf)
        np.maximum.at(top, comp_img, score)
        winners = np.flatnonzero((score == top[comp_img]) & (score > 0))
        best_label[comp_img[winners]] = winners + 1
        has = best_label > 0
        bi = best_label[has] - 1
        nuc_area[has] = area[bi]
        oy[has], ox[has] = cy[bi], cx[bi]
    region2 = (lab2 == best_label[:, None, None]) & (best_label > 0)[:, None, None]
    sel = region2.repeat(2, axis=1).repeat(2, axis=2)[:, :h, :w] & nmask

    # cell outline: two passes of the dynamic programme, the second from the first outline's centroid
    t_fg = np.maximum(FG_FRAC * f1, 0.08).astype(np.float32)
    radii = np.arange(0.0, RAY_LENGTH * max(h, w), 1.0, dtype=np.float32)
    fg_pad = np.zeros((n, h + 2, w + 2), np.float32)
    np.divide(fg_cue, t_fg[:, None, None], out=fg_pad[:, 1:-1, 1:-1])
    sel_pad = np.zeros((n, h + 2, w + 2), bool)
    sel_pad[:, 1:-1, 1:-1] = sel
    for n_rays in (FIRST_PASS_ANGLES, N_ANGLES):
        ang = np.arange(n_rays) * (_TWO_PI / n_rays)
        sin = np.sin(ang).astype(np.float32)[None, :, None]
        cos = np.cos(ang).astype(np.float32)[None, :, None]
        origin_y, origin_x = oy, ox
        r, on_edge = _outline(origin_y, origin_x, fg_pad, sel_pad, radii, sin, cos)
        area_c, oy, ox = _polygon(origin_y, origin_x, r, sin[..., 0], cos[..., 0])
    # focus: the nucleus edge's width (the cue's rise from the ring around the nucleus to the
    # nucleus's peak, over the steepest gradient there) relative to the nucleus's diameter; on every
    # other row and column, gradients between neighbouring samples (2 pixels apart)
    cue_s = nuc_cue[:, ::2, ::2]
    ring = region2 & ~nmask[:, ::2, ::2]
    outside = (cue_s * ring).sum(axis=(1, 2)) / np.maximum(ring.sum(axis=(1, 2)), 1)
    peak = np.where(region2, cue_s, -np.inf).reshape(n, -1).max(axis=1)
    span = np.maximum(peak - outside, 1e-3)
    grad = np.zeros_like(cue_s)
    grad[:, :-1] = np.abs(cue_s[:, 1:] - cue_s[:, :-1])
    grad[:, :, :-1] += np.abs(cue_s[:, :, 1:] - cue_s[:, :, :-1])
    steepest = 0.5 * np.where(region2, grad, 0.0).reshape(n, -1).max(axis=1)
    d_nuc = 2.0 * np.sqrt(nuc_area / math.pi)
    blur = np.where(best_label > 0, (span / np.maximum(steepest, 1e-6)) / np.maximum(d_nuc, 1.0), np.nan)

    off = _offset(k)
    ys = origin_y[:, None] + r * sin[0, :, 0]
    xs = origin_x[:, None] + r * cos[0, :, 0]
    top = np.maximum(ys.min(axis=1) * k + off + 0.5, 0.0).tolist()
    left = np.maximum(xs.min(axis=1) * k + off + 0.5, 0.0).tolist()
    bottom = np.minimum(ys.max(axis=1) * k + off + 0.5, hh).tolist()
    right = np.minimum(xs.max(axis=1) * k + off + 0.5, ww).tolist()
    cen_y = (oy * k + off).tolist()
    cen_x = (ox * k + off).tolist()
    diam = (2.0 * np.sqrt(np.maximum(area_c, 0.0) / math.pi) * k).tolist()
    diam_n = (d_nuc * k).tolist()
    edge_frac = on_edge.mean(axis=1).tolist()
    bgl = bg.tolist()
    blurl = blur.tolist()
    o_y, o_x = origin_y.tolist(), origin_x.tolist()
    thr = t_nuc.tolist()
    results = []
    for i in range(n):
        reason = ""
        if saturated[i] > SATURATED_MAX:
            reason = f"blank or overexposed: {saturated[i]:.0%} of the pixels are saturated white"
        elif bg_level[i] < DARK_MIN:
            reason = f"too dark: the brightest tenth of the image averages {bg_level[i]:.0f}/255"
        elif contrast[i] < CONTRAST_MIN:
            reason = f"uniform image: no stained object (stain contrast {contrast[i]:.2f} < {CONTRAST_MIN})"
        elif noise_share[i] > NOISE_MAX:
            reason = (
                f"noise: {noise_share[i]:.0%} of the image's stain variation is from pixel to pixel "
                f"(at most {NOISE_MAX:.0%} in a cell image)"
            )
        elif nuc_max[i] <= NUCLEUS_FLOOR or best_label[i] == 0:
            reason = (
                f"no nucleus-like object: the nuclear-stain cue peaks at {nuc_max[i]:.2f}, "
                f"below {NUCLEUS_FLOOR} (red cells alone stay below it)"
            )
        elif nuc_area[i] < MIN_NUCLEUS_FRAC * npx:
            reason = (
                f"the largest nucleus-like object covers {nuc_area[i] / npx:.2%} of the image, "
                f"below {MIN_NUCLEUS_FRAC:.1%}: too small for a WBC's nucleus"
            )
        elif blurl[i] > BLUR_MAX:
            reason = f"out of focus: the nucleus edge is {blurl[i]:.2f} of its diameter wide (at most {BLUR_MAX})"
        if reason:
            results.append(_not_found(reason, (hh, ww), k, (h, w), bg[i], blur=blurl[i]))
            continue
        results.append(
            LocatedCell(
                found=True,
                reason="",
                image_shape=(hh, ww),
                stride=k,
                work_shape=(h, w),
                centre=(cen_y[i], cen_x[i]),
                bbox=(top[i], left[i], bottom[i], right[i]),
                diameter_px=diam[i],
                nucleus_diameter_px=diam_n[i],
                background=(bgl[i][0], bgl[i][1], bgl[i][2]),
                edge_fraction=edge_frac[i],
                blur=blurl[i],
                origin=(o_y[i], o_x[i]),
                radii=r[i],
                nucleus_cue=nuc_cue[i],
                nucleus_threshold=thr[i],
            )
        )
    return results


# 4-connectivity within each image, none across the batch axis
_STRUCT: Final[np.ndarray] = np.zeros((3, 3, 3), bool)
_STRUCT[1] = ndi.generate_binary_structure(2, 1)


def _outline(
    oy: np.ndarray,
    ox: np.ndarray,
    fg_pad: np.ndarray,
    sel_pad: np.ndarray,
    radii: np.ndarray,
    sin: np.ndarray,
    cos: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Radii (N, A) of each cell's outline about (oy, ox), and which rays end on the image border.

    ``fg_pad`` is the stain cue in units of each image's background threshold and ``sel_pad`` the
    cell's nucleus, both with a one-pixel border of background around the image (N, h + 2, w + 2):
    ray samples beyond the image are clipped onto that border and read as background.
    """
    n, hp, wp = fg_pad.shape
    nr = radii.size
    py = np.clip(oy[:, None, None] + sin * radii + np.float32(1.5), 0, hp - 1).astype(np.int32)
    px = np.clip(ox[:, None, None] + cos * radii + np.float32(1.5), 0, wp - 1).astype(np.int32)
    flat = py * wp
    flat += px
    flat += (np.arange(n, dtype=np.int32) * (hp * wp))[:, None, None]
    f = fg_pad.reshape(-1)[flat]
    pn = sel_pad.reshape(-1)[flat]
    # the outline lies beyond the last nucleus sample of each ray
    n_ext = np.where(pn.any(axis=2), nr - 1 - np.argmax(pn[:, :, ::-1], axis=2), 0)
    g = np.zeros_like(f)
    np.subtract(f[:, :, :-2], f[:, :, 2:], out=g[:, :, 1:-1])
    g *= 0.5
    np.clip(g, -1.0, 1.0, out=g)
    # max(g, 0) + RISE_W * max(-g, 0), plus BG_W where the next two samples are background
    evidence = np.abs(g)
    if RISE_W != 1.0:
        evidence *= 0.5 * (1.0 + RISE_W)
        evidence += (0.5 * (1.0 - RISE_W)) * g
    is_bg = f <= 1.0
    evidence[:, :, :-2] += BG_W * (is_bg[:, :, 1:-1] & is_bg[:, :, 2:])
    cost = np.maximum(1.0 - f, 0.0)  # background-ness (the cue is never negative)
    np.cumsum(cost, axis=2, out=cost)
    cost *= REG_W
    cost -= evidence
    cost[np.arange(nr)[None, None, :] <= n_ext[:, :, None]] = 1e3
    path = _dp_closed(cost)
    r = radii[path]
    nxt = np.take_along_axis(flat, np.minimum(path + 1, nr - 1)[:, :, None], axis=2)[:, :, 0] % (hp * wp)
    y, x = np.divmod(nxt, wp)
    edge = (y == 0) | (y == hp - 1) | (x == 0) | (x == wp - 1)
    return r, edge


def _polygon(
    oy: np.ndarray, ox: np.ndarray, r: np.ndarray, sin: np.ndarray, cos: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area and centroid (shoelace formulae) of each polygon with vertices origin + r * (sin, cos)."""
    vy = oy[:, None] + r * sin
    vx = ox[:, None] + r * cos
    ny, nx = np.roll(vy, -1, axis=1), np.roll(vx, -1, axis=1)
    cross = vx * ny - nx * vy
    area2 = cross.sum(axis=1)
    ok = np.abs(area2) > 1e-9
    safe = np.where(ok, 3.0 * area2, 1.0)
    cy = np.where(ok, ((vy + ny) * cross).sum(axis=1) / safe, oy)
    cx = np.where(ok, ((vx + nx) * cross).sum(axis=1) / safe, ox)
    return 0.5 * np.abs(area2), cy, cx


def _not_found(
    reason: str,
    image_shape: tuple[int, int],
    k: int,
    work_shape: tuple[int, int],
    bg: np.ndarray,
    blur: float = math.nan,
) -> LocatedCell:
    nan = math.nan
    return LocatedCell(
        found=False,
        reason=reason,
        image_shape=image_shape,
        stride=k,
        work_shape=work_shape,
        centre=(nan, nan),
        bbox=(nan, nan, nan, nan),
        diameter_px=nan,
        nucleus_diameter_px=nan,
        background=(float(bg[0]), float(bg[1]), float(bg[2])),
        edge_fraction=nan,
        blur=blur,
        origin=(nan, nan),
        radii=np.zeros(N_ANGLES, np.float32),
        nucleus_cue=np.zeros(work_shape, np.float32),
        nucleus_threshold=nan,
    )


@dataclass(frozen=True, eq=False)
class CellCrop:
    """A square crop in which the cell, not the image, has a fixed size."""

    pixels: np.ndarray = field(repr=False)  # (out_size, out_size, 3) uint8
    diameter_px: float  # the cell's equivalent diameter in the original image, pixels
    diameter_um: float | None  # the same in micrometres, when the pixel size was given
    scale: float  # output pixels per original pixel
    padded: bool  # the crop reached beyond the image; the rest is the image's background colour


def crop_to_cell(
    image: np.ndarray,
    located: LocatedCell,
    out_size: int,
    cell_fraction: float = CELL_FRACTION,
    um_per_px: float | None = None,
) -> CellCrop:
    """The square around the cell's centre whose side is ``diameter / cell_fraction``, resized to ``out_size``.

    Whatever the laboratory's magnification, the cell's diameter becomes ``cell_fraction *
    out_size`` pixels: the classifier sees cells at one scale, and the scale the cell had (its
    diameter, in pixels and, with ``um_per_px``, micrometres) is returned as a feature instead.
    Where the square leaves the image it is filled with the image's background colour. Resizing
    is bilinear with antialiasing (Pillow). Raises ``CellRejected`` when no cell was found.
    """
    if not located.found:
        raise CellRejected(f"no white blood cell found: {located.reason}")
    if not 0.05 <= cell_fraction <= 1.0:
        raise ValueError(f"cell_fraction must lie in [0.05, 1], got {cell_fraction}")
    if out_size < 1:
        raise ValueError(f"out_size must be positive, got {out_size}")
    a = np.asarray(image)
    if a.shape[:2] != located.image_shape:
        raise ValueError(f"image is {a.shape[:2]}, but the cell was located in an image of {located.image_shape}")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    a = a[..., :3]
    hh, ww = a.shape[:2]
    side = max(located.diameter_px / cell_fraction, 2.0)
    cy, cx = located.centre
    # box in continuous coordinates (pixel i spans [i, i + 1))
    top, left = cy + 0.5 - side / 2, cx + 0.5 - side / 2
    bottom, right = top + side, left + side
    # only the box and a margin for the resampling filter's support are copied out of the image
    margin = math.ceil(side / out_size) + 2
    y0, x0 = math.floor(top) - margin, math.floor(left) - margin
    y1, x1 = math.ceil(bottom) + margin, math.ceil(right) + margin
    padded = top < 0 or left < 0 or bottom > hh or right > ww
    if y0 < 0 or x0 < 0 or y1 > hh or x1 > ww:
        region = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        region[...] = np.clip(np.rint(located.background), 0, 255).astype(np.uint8)
        sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, hh), min(x1, ww)
        if sy1 > sy0 and sx1 > sx0:
            region[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = a[sy0:sy1, sx0:sx1]
    else:
        region = np.ascontiguousarray(a[y0:y1, x0:x1])
    box = (left - x0, top - y0, right - x0, bottom - y0)
    out = Image.fromarray(region).resize((out_size, out_size), Image.Resampling.BILINEAR, box=box)
    return CellCrop(
        pixels=np.asarray(out),
        diameter_px=located.diameter_px,
        diameter_um=None if um_per_px is None else located.diameter_px * um_per_px,
        scale=out_size / side,
        padded=padded,
    )
