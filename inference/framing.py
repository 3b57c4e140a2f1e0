"""What the network sees: the image as stored, or the cell framed at one scale and one stain.

A model's input spec (``wbcv.inference.artifact.InputSpec``) names its framing:

* ``image`` (models before v4): the centre of the image, ``crop`` of its short side, resized to
  ``size``. How large the cell is in the input then depends on the scanner's magnification.
* ``cell``: the image is decoded to ``work_size(spec)`` pixels, the white cell is located
  (``wbcv.inference.locate``), and the square around it whose side is ``diameter / cell_fraction``
  is resized to ``size`` (``crop_to_cell``): a lymphocyte and a monocyte keep their size relative to
  each other, not to the camera. With ``stain_mean``/``stain_std`` set, each crop is then
  Reinhard-normalised (``wbcv.inference.stain``, means only) so that the pixels *outside* the cell
  disc (slide background and red cells) have the training laboratory's mean colour (matching their
  spread too stretched the contrast of a pale, even background up to the gain limit and turned
  Tecom cells black); taking them from the
  surroundings, not from the cell, keeps the class colour (an eosinophil's orange granules) that
  the cell's own statistics would remove (``benchmarks/eval_stain.py``: mean cell colour told the
  class 74 % of the time raw, 69 % after ring normalisation, 53 % after normalising on the cell).

An image in which no cell is found (blank, only red cells, noise, out of focus, a nucleus too small
for a WBC) is not guessed at: it is framed as the plain centre crop so that the batch keeps its
shape, and flagged ``no_cell`` with the locator's reason; the combination rule then marks it
unclassified with reason ``no_cell_found`` (``wbcv.inference.combine.force_unclassified``). Image
framing does the same when the spec's ``locate_check`` is set: the locator then runs on the
decoded image (at the input's size) only for this verdict, and the image is shown as it is.

Training and inference call the same function (``frame_cells``), so the network is trained on
exactly what it will be shown.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
from PIL import Image

from wbcv.inference.locate import crop_to_cell, locate_cells
from wbcv.inference.stain import StainStats, disc_mask, normalise_stain, stain_stats

if TYPE_CHECKING:
    from wbcv.inference.artifact import InputSpec

FRAMINGS: Final[tuple[str, ...]] = ("image", "cell")
#: The decode size for cell framing, as a multiple of the input size (120 px for 64): a PBC cell
#: (diameter about 0.45 of the image) framed at cell_fraction 0.7 is then downsampled, not
#: upsampled. The locator works at half of it (``LOCATE_STRIDE``), where its constants were
#: chosen (60-80 px, each working pixel the mean of a 2 x 2 block or more): located at full 90 px
#: instead, Tecom cells' diameters agreed with the full-resolution ones within 10 % in 73 % of
#: cells, at 120 / 2 in 95 % (PBC 95 %).
WORK_FACTOR: Final[float] = 1.875
LOCATE_STRIDE: Final[int] = 2


def work_size(spec: InputSpec) -> int:
    """Side of the square each image is decoded to before framing."""
    return spec.size if spec.framing == "image" else math.ceil(spec.size * WORK_FACTOR)


@dataclass(frozen=True)
class FramedCells:
    pixels: np.ndarray  # (N, size, size, 3) uint8, one per input image, in order
    no_cell: np.ndarray  # (N,) bool: no white cell was found; the pixels are the plain centre crop
    reasons: tuple[str, ...]  # the locator's reason where no_cell, else ""
    diameter_px: np.ndarray  # (N,) float32 cell diameter in decoded pixels; NaN where no_cell
    # (N, 3) float32 mean lαβ colour of the surroundings (``ring_mask``) before stain normalisation:
    # what the slide looked like as scanned (the domain check, wbcv.inference.domain)
    surround_lab: np.ndarray | None = None


#: Diameters of mature white cells on a smear, µm (small lymphocytes about 7, monocytes up to 20;
#: spread on the slide a little larger): outside these bounds, with a known pixel size, the object
#: is not a white cell (a platelet is 2-3 µm, a clump or a smudge can be far larger).
WBC_DIAMETER_UM: Final[tuple[float, float]] = (5.0, 30.0)


def wbc_size_reason(diameter_um: float) -> str | None:
    """Why an object of this diameter is not a white cell, or None when the size fits one."""
    low, high = WBC_DIAMETER_UM
    if low <= diameter_um <= high:
        return None
    return f"object of {diameter_um:.1f} µm: not the size of a white blood cell ({low:g}-{high:g} µm)"


def ring_mask(size: int, cell_fraction: float) -> np.ndarray:
    """(size, size) bool: the crop outside the cell disc, whose colour statistics are normalised."""
    return ~disc_mask(size, min(1.0, cell_fraction * 1.1))  # a margin: the outline is not a circle


def _centre(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


#: Pixel stride of the surroundings' colour statistics: every 4th pixel of each row and column (a
#: 64-px crop gives about 150 ring pixels) costs a sixteenth of the whole crop, as much as the mean needs.
SURROUND_STRIDE: Final[int] = 4


def surround_colour(pixels: np.ndarray, cell_fraction: float) -> np.ndarray:
    """(N, 3) float32 mean lαβ of each crop's pixels outside the cell disc (``ring_mask``), on a
    ``SURROUND_STRIDE`` grid."""
    if len(pixels) == 0:
        return np.empty((0, 3), np.float32)
    k = SURROUND_STRIDE
    mask = ring_mask(pixels.shape[1], cell_fraction)[::k, ::k]
    stats = stain_stats(np.ascontiguousarray(pixels[:, ::k, ::k]), mask)
    return np.array([s.mean for s in stats], np.float32)


def frame_cells(images: Sequence[np.ndarray], spec: InputSpec) -> FramedCells:
    """Frame decoded images (uint8 RGB, any sizes) as ``spec`` says; see the module docstring."""
    n, size = len(images), spec.size
    if spec.framing == "image" or n == 0:
        pixels = np.stack(images) if n else np.empty((0, size, size, 3), np.uint8)
        surround = surround_colour(pixels, spec.cell_fraction)
        no_cell, reasons = np.zeros(n, bool), ("",) * n
        if spec.locate_check and n:  # only the verdict: the image is shown as it is
            located = locate_cells(images, work_size=size)
            no_cell = np.array([not where.found for where in located])
            reasons = tuple(where.reason if not where.found else "" for where in located)
        return FramedCells(pixels, no_cell, reasons, np.full(n, np.nan, np.float32), surround)
    located = locate_cells(images, work_size=max(16, work_size(spec) // LOCATE_STRIDE))
    out = np.empty((n, size, size, 3), np.uint8)
    no_cell = np.zeros(n, bool)
    diameter = np.full(n, np.nan, np.float32)
    for i, (image, where) in enumerate(zip(images, located, strict=True)):
        if where.found:
            out[i] = crop_to_cell(image, where, size, spec.cell_fraction).pixels
            diameter[i] = where.diameter_px
        else:
            out[i], no_cell[i] = _centre(image, size), True
    surround = surround_colour(out, spec.cell_fraction)
    if spec.stain_mean is not None and spec.stain_std is not None:
        target = StainStats(spec.stain_mean, spec.stain_std)
        out = normalise_stain(out, ring_mask(size, spec.cell_fraction), target, spread=False)
    reasons = tuple(where.reason if not where.found else "" for where in located)
    return FramedCells(out, no_cell, reasons, diameter, surround)
