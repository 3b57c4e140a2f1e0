"""Scoring labelled cells outside the run store (evaluation, ablation, stress tests).

``score_pixels`` runs decoded cells through the network and the combination rule and keeps the
raw head outputs too, which the ablation needs; ``decode_files`` decodes files exactly as the
batch runner does (the model's input spec), in parallel threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wbcv.inference.artifact import LoadedModel
from wbcv.inference.combine import CombinedOutput, combine
from wbcv.inference.decode import CellRejected, decode_cell, max_file_bytes, read_cell_file
from wbcv.inference.ensemble import EnsembleLogits


@dataclass(frozen=True)
class Scored:
    logits: EnsembleLogits
    combined: CombinedOutput


def score_pixels(model: LoadedModel, pixels: np.ndarray | torch.Tensor, batch: int = 256) -> Scored:
    """Head outputs and combined decisions for uint8 (N, S, S, 3) cells, in order (N may be 0)."""
    x = torch.as_tensor(pixels)
    chunks = [x[i : i + batch] for i in range(0, len(x), batch)] or [x]  # no cells: one empty batch
    with torch.inference_mode():
        parts = [model.net(chunk) for chunk in chunks]
    soft = [p.softmax5 for p in parts if p.softmax5 is not None]
    logits = EnsembleLogits(
        torch.cat([p.ova for p in parts]),
        torch.cat([p.lineage for p in parts]),
        torch.cat(soft) if len(soft) == len(parts) else None,
    )
    return Scored(logits, combine(logits, model.calibration, model.thresholds))


def decode_files(
    model: LoadedModel,
    paths: Sequence[Path],
    transform: Callable[[bytes], bytes] | None = None,
    workers: int = 2,
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode ``paths`` (optionally after ``transform`` of the file bytes) with the model's input
    spec. Returns the stacked pixels of the decodable ones and {index: reason} for the rest."""
    spec = model.input

    def one(path: Path) -> np.ndarray | str:
        try:
            data = read_cell_file(path, max_file_bytes())
            if transform is not None:
                data = transform(data)
            return decode_cell(data, spec.size, crop=spec.crop).pixels
        except CellRejected as e:
            return str(e)
        except OSError as e:
            return f"cannot read file: {e.strerror}"

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, paths))
    rejected = {i: r for i, r in enumerate(results) if isinstance(r, str)}
    images = [r for r in results if not isinstance(r, str)]
    empty = np.empty((0, spec.size, spec.size, 3), dtype=np.uint8)
    return (np.stack(images) if images else empty), rejected
