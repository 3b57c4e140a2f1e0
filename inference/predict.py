"""Scoring labelled cells outside the run store (evaluation, ablation, stress tests).

``score_pixels`` runs decoded cells through the network and the combination rule and keeps the
raw head outputs too, which the ablation needs; ``decode_files`` decodes files exactly as the
batch runner does (the model's input spec), in parallel threads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wbcv.inference.acquisition import (
    SampleCorrection,
    decode_corrected,
    decode_measured,
    evenly_spaced,
    fit_correction,
    identity,
)
from wbcv.inference.artifact import LoadedModel
from wbcv.inference.combine import (
    NO_CELL_FOUND,
    NOT_A_WBC,
    OUT_OF_DISTRIBUTION,
    CombinedOutput,
    combine,
    force_unclassified,
)
from wbcv.inference.decode import DEFAULT_MAX_PIXELS, CellRejected, decode_cell, max_file_bytes, read_cell_file
from wbcv.inference.ensemble import EnsembleLogits
from wbcv.inference.framing import frame_cells, work_size
from wbcv.inference.ood import distances


@dataclass(frozen=True)
class Scored:
    logits: EnsembleLogits
    combined: CombinedOutput


def score_pixels(
    model: LoadedModel, pixels: np.ndarray | torch.Tensor, no_cell: np.ndarray | None = None, batch: int = 256
) -> Scored:
    """Head outputs and combined decisions for uint8 (N, S, S, 3) cells, in order (N may be 0);
    ``no_cell`` (bool, N) marks images in which the cell-framing model found no white cell."""
    x = torch.as_tensor(pixels)
    chunks = [x[i : i + batch] for i in range(0, len(x), batch)] or [x]  # no cells: one empty batch
    with torch.inference_mode():
        parts = [model.net(chunk) for chunk in chunks]
    soft = [p.softmax5 for p in parts if p.softmax5 is not None]
    logits = EnsembleLogits(
        torch.cat([p.ova for p in parts]),
        torch.cat([p.lineage for p in parts]),
        torch.cat(soft) if len(soft) == len(parts) else None,
        torch.cat([p.features for p in parts if p.features is not None]),
    )
    return Scored(logits, decide(model, logits, no_cell))


def decide(model: LoadedModel, logits: EnsembleLogits, no_cell: np.ndarray | None = None) -> CombinedOutput:
    """The combination rule, then the rules after it, each overriding the one before: a cell far
    from every class in feature space is ``out_of_distribution`` (when the artifact has a feature
    density), one the white-cell gate refuses is ``not_a_wbc`` (when it has a gate: the more
    specific reason), and an image in which no white cell was found is ``no_cell_found`` (the last
    word: it was never a cell)."""
    out = combine(logits, model.calibration, model.thresholds)
    if model.ood is not None and logits.features is not None:
        far = distances(logits.features, model.ood.means, model.ood.precision) > model.ood.threshold
        out = force_unclassified(out, torch.from_numpy(far), OUT_OF_DISTRIBUTION)
    if model.gate is not None and logits.features is not None:
        out = force_unclassified(out, torch.from_numpy(model.gate.refuses(logits.features)), NOT_A_WBC)
    return force_unclassified(out, None if no_cell is None else torch.from_numpy(no_cell), NO_CELL_FOUND)


@dataclass(frozen=True)
class DecodedFiles:
    pixels: np.ndarray  # (N, S, S, 3) uint8 of the decodable files, in order
    rejected: dict[int, str]  # index into the paths given -> why the file could not be decoded
    no_cell: np.ndarray  # (N,) bool, aligned with pixels: no white cell found (cell framing)
    diameter_px: np.ndarray | None = None  # (N,) float32, the locator's cell diameter (NaN: none)
    surround_lab: np.ndarray | None = None  # (N, 3) float32, the surroundings' colour as scanned
    correction: SampleCorrection | None = None  # the files' acquisition correction, as one sample


def _read(path: Path, transform: Callable[[bytes], bytes] | None) -> bytes:
    data = read_cell_file(path, max_file_bytes())
    return data if transform is None else transform(data)


def sample_correction(
    model: LoadedModel,
    paths: Sequence[Path],
    transform: Callable[[bytes], bytes] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> SampleCorrection:
    """The acquisition correction (``wbcv.inference.acquisition``) of ``paths`` taken as one sample."""
    return correction_of(model, [functools.partial(_read, p, transform) for p in paths], max_pixels)


def correction_of(model: LoadedModel, readers: Sequence[Callable[[], bytes]], max_pixels: int) -> SampleCorrection:
    """The correction of one sample whose files ``readers`` read, measured on up to ``MAX_MEASURED``
    of them; the identity for a model without a reference. A file that cannot be read is left to
    the framing pass, which records why."""
    if model.input.acquisition_reference is None or model.input.framing != "image":
        return identity(model.input)
    datas = []
    for i in evenly_spaced(len(readers)):
        try:
            datas.append(readers[i]())
        except (CellRejected, OSError):
            continue
    return fit_correction(decode_measured(datas, max_pixels), model.input, lambda px: called_classes(model, px))


def called_classes(model: LoadedModel, pixels: np.ndarray) -> np.ndarray:
    """The class each framed cell is closest to (argmax of the combined probabilities; refusals ignored)."""
    with torch.inference_mode():
        logits = model.net(torch.from_numpy(np.ascontiguousarray(pixels)))
    return combine(logits, model.calibration, model.thresholds).probabilities.argmax(dim=1).numpy()


def decode_files(
    model: LoadedModel,
    paths: Sequence[Path],
    transform: Callable[[bytes], bytes] | None = None,
    workers: int = 2,
    correction: SampleCorrection | None = None,
) -> DecodedFiles:
    """Decode ``paths`` (optionally after ``transform`` of the file bytes) and frame them with the
    model's input spec, exactly as the batch runner does (the files being one sample, unless
    ``correction`` gives the acquisition correction to frame them with)."""
    spec = model.input
    size = work_size(spec)
    crop = spec.crop if spec.framing == "image" else 1.0
    if correction is None:
        correction = sample_correction(model, paths, transform)

    def one(path: Path) -> np.ndarray | str:
        try:
            data = _read(path, transform)
            if not correction.is_identity:
                return decode_corrected(data, spec, correction, DEFAULT_MAX_PIXELS).pixels
            return decode_cell(data, size, crop=crop).pixels
        except CellRejected as e:
            return str(e)
        except OSError as e:
            return f"cannot read file: {e.strerror}"

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, paths))
    rejected = {i: r for i, r in enumerate(results) if isinstance(r, str)}
    framed = frame_cells([r for r in results if not isinstance(r, str)], spec)
    return DecodedFiles(framed.pixels, rejected, framed.no_cell, framed.diameter_px, framed.surround_lab, correction)
