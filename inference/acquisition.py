"""Per-sample correction of magnification, illumination and stain hue, fitted on the sample's own cells.

A model that frames the image (``InputSpec.framing == "image"``) learned how large a white cell is
in the training laboratory's pixels and what colour its slide background has. Another scanner
shows the same cells larger or smaller and under another light: on PBC validation cells shown at
half the magnification the bundled model fell from 0.98 to 0.54 balanced accuracy; on Tecom's
cells (a cell fills 0.6 of the image against PBC's 0.4) lymphocytes were called monocytes.

Cells of one sample come from one scanner, so the correction is fitted per sample, not per cell,
from what the locator (``wbcv.inference.locate``) measures on each image:

* **scale**: located cell diameters as a share of the image's short side, against the training
  library's. The crop each image is framed with becomes ``spec.crop * scale``: the cells of the
  sample then have the training size in the network's input, while each cell keeps its size
  relative to the others of its sample (a lymphocyte stays smaller than a monocyte; cell framing
  loses that). A crop above 1 is padded with the image's border colour. The first estimate is
  the sample's median diameter over the training library's; but a median depends on the case mix
  (a lymphocytosis sample's median cell is a small lymphocyte: on PBC validation cells the
  lymphocytosis mix fell from 0.972 to 0.910 accuracy with it), so it is refined
  ``REFINE_STEPS`` times: the measured cells are classified at the current scale and the scale
  becomes the median over cells of ``diameter / training median diameter of the class called``.
* **illumination**: the median background optical density, per channel (the locator's brightest
  tenth of the image). Each pixel's OD is shifted by ``reference - sample`` (a per-channel gain
  on the intensity): a yellow or dim light is undone. Matching the nucleus colour channel by
  channel as well (a two-point stain mapping) was tried and lost accuracy on validation shifts
  (haematoxylin x1.6: 0.94 to 0.85; grayscale 0.81 to 0.45).
* **stain hue**: Romanowsky stains (May-Grünwald-Giemsa, Wright, rapid stains) differ in hue, and
  nucleus and granules move together. The median nucleus colour's chroma angle (YIQ I/Q plane,
  after the light correction) is turned to the training library's: a rotation of the I/Q plane
  that keeps each pixel's luma and the colour differences between cells (an eosinophil stays more
  orange than a neutrophil of the same sample). Not applied to an image without enough chroma
  (grayscale) nor within ``HUE_DEAD_ZONE``.

Why per sample and not per image: a per-image scale would make every cell the same size, and a
per-image colour match would take away the colour of the cell's own granules (an eosinophil's
orange). The median of many cells is robust to the one odd image.

Below ``MIN_CELLS`` measured cells the sample is framed as the model was trained (no correction)
and the correction says why. The factor is bounded by ``SCALE_BOUNDS``: beyond it the images are
not of the kind the model knows, and the out-of-distribution score, not the framing, must say so.

Measured with the bundled model's weights on the PBC validation split, each shifted copy as one sample
(``benchmarks/eval_acquisition.py``, ``benchmarks/results/acquisition_validation.json``): clean
0.978 with and without; mean over the 21 stress shifts 0.941 against 0.878 (half magnification
0.975 against 0.546, x1.6 0.975 against 0.555, 20 % darker 0.977 against 0.936, hue +40 degrees
0.959 against 0.591); haematoxylin x1.6 / eosin x0.5 0.923 against 0.935, 20 % brighter 0.920
against 0.934 (a background clipped at white hides the light's change) and grayscale 0.788
against 0.805 lose a little; 100-cell samples of five case mixes as accurate as uncorrected (the
dead zones). Tecom (never tuned on) is in the model card.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from PIL import Image

from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.inference.decode import CellRejected, DecodedCell, decode_cell
from wbcv.inference.locate import locate_cells

if TYPE_CHECKING:
    from wbcv.inference.artifact import InputSpec

#: Side of the whole-image decode on which cells are measured (a PBC cell is then about 25 px
#: across: enough for a median; 96 px and 128 cells measured 747 cells/s end to end on 2 cores,
#: below the 1,000 target, while the measurement still ran in the main thread).
MEASURE_SIZE: Final[int] = 64
#: Fewer located cells than this: no correction (a median of a handful of cells is noise).
MIN_CELLS: Final[int] = 20
#: At most this many cells of a sample are measured (evenly spaced over its list): the median of
#: 64 cells whose diameters spread by about 15 % has a standard error near 1.25 x 15 % / 8 = 2 %,
#: and measuring costs a second decode.
MAX_MEASURED: Final[int] = 64
#: The framing crop may change by at most these factors.
SCALE_BOUNDS: Final[tuple[float, float]] = (0.4, 2.5)
#: Corrections smaller than these are not applied: they are measurement noise, not a scanner.
#: 100-cell samples of the PBC validation split measured scales of 0.97-1.03 with 64 cells (and
#: lost up to 0.01 accuracy when corrected by them: the network is trained at one magnification,
#: zoom-augmented only 0.8-1.25), and a 5 % change of light is within its brightness augmentation.
SCALE_DEAD_ZONE: Final[float] = 0.05
OD_DEAD_ZONE: Final[float] = 0.05
#: Refinements of the scale by the classes the model calls (two, chosen before measuring; the
#: case-mix figures of ``benchmarks/results/acquisition_validation.json`` were measured with them).
REFINE_STEPS: Final[int] = 2
#: The stain's hue: the nucleus's mean chroma angle in the YIQ plane (median over cells) is
#: rotated to the training library's when the two differ by at least ``HUE_DEAD_ZONE`` degrees,
#: and only when the sample's nucleus chroma is at least ``MIN_CHROMA_SHARE`` of the training
#: one (a grayscale or washed-out image has no hue to measure).
HUE_DEAD_ZONE: Final[float] = 10.0
MIN_CHROMA_SHARE: Final[float] = 0.5
#: RGB -> YIQ (NTSC); a hue rotation turns the I/Q plane and keeps the luma Y.
_YIQ: Final[np.ndarray] = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_OD_FLOOR: Final[float] = 1.0 / 255.0


@dataclass(frozen=True)
class CellMeasure:
    """One image as the locator saw it (None fields: no cell found)."""

    diameter_fraction: float | None  # cell diameter / the image's short side
    background_od: tuple[float, float, float]  # per channel, -ln(background / 255)
    nucleus_rgb: tuple[float, float, float] | None = None  # mean colour of the nucleus pixels


@dataclass(frozen=True)
class SampleCorrection:
    """How one sample's images are framed: ``crop`` (share of the short side; above 1 padded), the
    per-channel OD shift and the hue rotation; ``n_measured`` the cells it was fitted on, ``note``
    why there is none or why it was bounded."""

    crop: float
    od_shift: tuple[float, float, float]
    n_measured: int
    scale: float = 1.0
    note: str = ""
    hue_degrees: float = 0.0  # rotation of the I/Q plane (YIQ) after the OD shift

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and not any(self.od_shift) and self.hue_degrees == 0.0

    def to_dict(self) -> dict[str, object]:
        return {
            "crop": self.crop,  # exact: the Ray engine frames with the driver's values, bit for bit
            "scale": self.scale,
            "od_shift": list(self.od_shift),
            "hue_degrees": self.hue_degrees,
            "n_measured": self.n_measured,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SampleCorrection:
        shift = [float(v) for v in d["od_shift"]]
        return cls(
            float(d["crop"]),
            (shift[0], shift[1], shift[2]),
            int(d["n_measured"]),
            float(d["scale"]),
            str(d["note"]),
            float(d["hue_degrees"]),
        )


def identity(spec: InputSpec, n_measured: int = 0, note: str = "") -> SampleCorrection:
    return SampleCorrection(spec.crop, (0.0, 0.0, 0.0), n_measured, 1.0, note)


def _od(rgb: Sequence[float]) -> tuple[float, float, float]:
    v = -np.log(np.clip(np.asarray(rgb, np.float64) / 255.0, _OD_FLOOR, 1.0))
    return (float(v[0]), float(v[1]), float(v[2]))


def measure_images(images: Sequence[np.ndarray]) -> list[CellMeasure]:
    """Locate the cell in each whole image (uint8 RGB, square)."""
    out = []
    for image, where in zip(images, locate_cells(images), strict=True):
        fraction = where.diameter_px / min(image.shape[:2]) if where.found else None
        nucleus = where.nucleus_mask_at(image.shape[:2]) if where.found else None
        colour = None
        if nucleus is not None and nucleus.any():
            mean = image[nucleus].astype(np.float64).mean(axis=0)
            colour = (float(mean[0]), float(mean[1]), float(mean[2]))
        out.append(CellMeasure(fraction, _od(where.background), colour))
    return out


def nucleus_chroma(colours: Sequence[tuple[float, float, float]], od_shift: Sequence[float]) -> tuple[float, float]:
    """Angle (degrees) and magnitude of the median nucleus colour's I/Q chroma, after ``od_shift``."""
    rgb = np.asarray(colours, np.float64) * np.exp(-np.asarray(od_shift, np.float64))
    yiq = rgb @ _YIQ.T
    i, q = float(np.median(yiq[:, 1])), float(np.median(yiq[:, 2]))
    return math.degrees(math.atan2(q, i)), math.hypot(i, q)


def decode_measured(datas: Sequence[bytes], max_pixels: int) -> list[np.ndarray]:
    """Whole images at ``MEASURE_SIZE``; undecodable files are left out (the framing pass reports them)."""
    images = []
    for data in datas:
        try:
            images.append(decode_cell(data, MEASURE_SIZE, max_pixels).pixels)
        except CellRejected:  # the framing pass reports the reason for each file
            continue
    return images


def evenly_spaced(n: int, at_most: int = MAX_MEASURED) -> list[int]:
    """Indices of at most ``at_most`` items spread evenly over ``n`` (all of them when n <= at_most)."""
    if n <= at_most:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, at_most).round()})


@dataclass(frozen=True)
class AcquisitionReference:
    """The training library's median cell diameter (share of the short side), overall and per
    class (``CELL_CLASSES`` order), its median background OD per channel, and its nucleus chroma
    (angle in degrees and magnitude, ``nucleus_chroma``).

    Flattened (``to_list``) into ``InputSpec.acquisition_reference``: overall, 5 classes, 3 ODs,
    hue angle, chroma."""

    diameter_fraction: float
    class_diameter_fraction: tuple[float, ...]
    background_od: tuple[float, float, float]
    nucleus_hue: float
    nucleus_chroma: float

    def to_list(self) -> list[float]:
        return [
            self.diameter_fraction,
            *self.class_diameter_fraction,
            *self.background_od,
            self.nucleus_hue,
            self.nucleus_chroma,
        ]

    @classmethod
    def from_list(cls, values: Sequence[float]) -> AcquisitionReference:
        k = 1 + len(CELL_CLASSES)
        n = k + 5
        ok = len(values) == n and all(math.isfinite(v) for v in values)
        if not ok or not all(0 < v <= 1 for v in values[:k]) or values[-1] <= 0:
            raise ValueError(
                f"acquisition reference must be {n} numbers: the median diameter share (0, 1], one per class "
                f"{list(CELL_CLASSES)}, 3 background ODs, the nucleus hue (degrees) and chroma (> 0); "
                f"got {list(values)}"
            )
        od = (float(values[k]), float(values[k + 1]), float(values[k + 2]))
        return cls(float(values[0]), tuple(float(v) for v in values[1:k]), od, float(values[-2]), float(values[-1]))


def reference_from(measures: Sequence[CellMeasure], labels: Sequence[str]) -> AcquisitionReference:
    """The reference of labelled training cells (every class needs ``MIN_CELLS`` located cells)."""
    found = [(m.diameter_fraction, m.background_od, lab) for m, lab in zip(measures, labels, strict=True)]
    found = [f for f in found if f[0] is not None]
    sizes = np.array([d for d, _, _ in found], dtype=np.float64)
    called = np.array([lab for _, _, lab in found], dtype=object)
    per_class = []
    for c in CELL_CLASSES:
        mine = sizes[called == c]
        if len(mine) < MIN_CELLS:
            raise ValueError(f"a reference needs {MIN_CELLS} located cells of each class; {c} has {len(mine)}")
        per_class.append(float(np.median(mine)))
    bg = np.median(np.array([b for _, b, _ in found]), axis=0)
    overall = float(np.median(sizes))
    hue, chroma = nucleus_chroma([m.nucleus_rgb for m in measures if m.nucleus_rgb is not None], (0.0, 0.0, 0.0))
    od = (float(bg[0]), float(bg[1]), float(bg[2]))
    return AcquisitionReference(overall, tuple(per_class), od, hue, chroma)


#: Class called by the model for each framed cell (an index into CELL_CLASSES): the combined
#: probabilities' argmax, refusals ignored (a cell refused at the wrong scale still has a size).
Classifier = Callable[[np.ndarray], np.ndarray]


def fit_correction(images: Sequence[np.ndarray], spec: InputSpec, classify: Classifier) -> SampleCorrection:
    """The correction of a sample from its measured whole images (``decode_measured``) against
    ``spec.acquisition_reference`` (identity without one); see the module docstring."""
    if spec.acquisition_reference is None:
        return identity(spec)
    ref = AcquisitionReference.from_list(spec.acquisition_reference)
    measures = measure_images(images)
    kept = [(im, m) for im, m in zip(images, measures, strict=True) if m.diameter_fraction is not None]
    if len(kept) < MIN_CELLS:
        note = f"{len(kept)} cells located in the sample, fewer than {MIN_CELLS}: framed without correction"
        return identity(spec, len(kept), note)
    sizes = np.array([m.diameter_fraction for _, m in kept])
    bg = np.median(np.array([m.background_od for _, m in kept]), axis=0)
    shift = (
        float(ref.background_od[0] - bg[0]),
        float(ref.background_od[1] - bg[1]),
        float(ref.background_od[2] - bg[2]),
    )
    scale = float(np.median(sizes)) / ref.diameter_fraction
    hue = _hue_rotation(ref, [m.nucleus_rgb for _, m in kept if m.nucleus_rgb is not None], shift)
    class_sizes = np.asarray(ref.class_diameter_fraction)
    for _ in range(REFINE_STEPS):
        trial = _as_applied(spec, scale, shift, len(kept), hue)
        called = classify(np.stack([frame_measured(im, trial, spec.size) for im, _ in kept]))
        scale = float(np.median(sizes / class_sizes[called]))
    return _as_applied(spec, scale, shift, len(kept), hue)


def _hue_rotation(
    ref: AcquisitionReference, colours: Sequence[tuple[float, float, float]], shift: tuple[float, float, float]
) -> float:
    """Degrees to turn the sample's I/Q plane by, measured after the light correction that will be
    applied (0: too few nuclei, too little chroma, or within the dead zone)."""
    if len(colours) < MIN_CELLS:
        return 0.0
    angle, chroma = nucleus_chroma(colours, shift if _applied_shift(shift) else (0.0, 0.0, 0.0))
    if chroma < MIN_CHROMA_SHARE * ref.nucleus_chroma:
        return 0.0
    turn = (ref.nucleus_hue - angle + 180.0) % 360.0 - 180.0
    return turn if abs(turn) >= HUE_DEAD_ZONE else 0.0


def _applied_shift(shift: Sequence[float]) -> bool:
    return max(abs(v) for v in shift) >= OD_DEAD_ZONE


def _as_applied(
    spec: InputSpec, scale: float, shift: tuple[float, float, float], n: int, hue: float = 0.0
) -> SampleCorrection:
    """The correction with the dead zones and the bounds applied."""
    low, high = SCALE_BOUNDS
    note = ""
    if abs(scale - 1.0) < SCALE_DEAD_ZONE:
        scale = 1.0
    if not _applied_shift(shift):
        shift = (0.0, 0.0, 0.0)
    if not low <= scale <= high:
        note = f"cells {scale:.2f} x the training size: bounded to {min(max(scale, low), high):g}"
        scale = min(max(scale, low), high)
    return SampleCorrection(spec.crop * scale, shift, n, scale, note, hue)


def frame_measured(image: np.ndarray, correction: SampleCorrection, size: int) -> np.ndarray:
    """A whole measured image framed as ``decode_corrected`` frames the file (from fewer pixels)."""
    if correction.crop <= 1.0:
        side = image.shape[0] * max(0.1, correction.crop)
        left = (image.shape[0] - side) / 2
        pil = Image.fromarray(image).resize(
            (size, size), Image.Resampling.BILINEAR, box=(left, left, left + side, left + side)
        )
        pixels = np.asarray(pil)
    else:
        inner = _inner_side(size, correction.crop)
        pixels = _pad_to(np.asarray(Image.fromarray(image).resize((inner, inner), Image.Resampling.BILINEAR)), size)
    return apply_colour(pixels, correction)


def _inner_side(size: int, crop: float) -> int:
    """Side of the image inside a ``size`` input framed with a crop wider than it (``crop`` > 1)."""
    return max(8, round(size / crop))


@functools.lru_cache(maxsize=16)  # one per sample: built once, not once per cell
def _od_lut(shift: tuple[float, float, float]) -> np.ndarray:
    """(3, 256) uint8: each channel's intensity with its OD shifted by ``shift`` (a gain exp(-shift))."""
    levels = np.arange(256, dtype=np.float64)
    gains = np.exp(-np.asarray(shift, np.float64))[:, None]
    return np.clip(np.rint(levels[None, :] * gains), 0, 255).astype(np.uint8)


def apply_colour(pixels: np.ndarray, correction: SampleCorrection) -> np.ndarray:
    """The pixels (…, 3) uint8 with the correction's OD shift, then its hue rotation (unchanged without either)."""
    if any(correction.od_shift):
        lut = _od_lut(correction.od_shift)
        pixels = np.stack([lut[c][pixels[..., c]] for c in range(3)], axis=-1)
    if correction.hue_degrees:
        turned = pixels.astype(np.float32) @ _hue_matrix(correction.hue_degrees).T
        pixels = np.clip(np.rint(turned), 0, 255).astype(np.uint8)
    return pixels


@functools.lru_cache(maxsize=16)
def _hue_matrix(degrees: float) -> np.ndarray:
    """(3, 3) float32 RGB -> RGB: the I/Q plane of YIQ turned by ``degrees``, the luma kept."""
    t = math.radians(degrees)
    turn = np.array([[1.0, 0.0, 0.0], [0.0, math.cos(t), -math.sin(t)], [0.0, math.sin(t), math.cos(t)]])
    return (np.linalg.inv(_YIQ) @ turn @ _YIQ).astype(np.float32)


def decode_corrected(data: bytes, spec: InputSpec, correction: SampleCorrection, max_pixels: int) -> DecodedCell:
    """``decode_cell`` at the sample's crop (padded with the border colour above 1), then its light and hue."""
    size = spec.size
    if correction.crop <= 1.0:
        cell = decode_cell(data, size, max_pixels, max(0.1, correction.crop))
        pixels = cell.pixels
    else:
        cell = decode_cell(data, _inner_side(size, correction.crop), max_pixels)
        pixels = _pad_to(cell.pixels, size)
    pixels = apply_colour(pixels, correction)
    return DecodedCell(pixels, cell.source_mode, cell.source_width, cell.source_height)


def _pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` centred on a ``size`` square of its border's median colour."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[...] = np.median(border, axis=0).astype(np.uint8)
    h, w = image.shape[:2]
    top, left = (size - h) // 2, (size - w) // 2
    canvas[top : top + h, left : left + w] = image
    return canvas
