"""Fitting an image-framing artifact's acquisition reference (``wbcv fit-acquisition``; end of ``wbcv train``).

The reference (``wbcv.inference.acquisition.AcquisitionReference``) is measured on the training
split of the library the model was trained on: the median located cell diameter as a share of the
image's short side, overall and per class, and the median background OD. It is written into the
card's ``input.acquisition_reference``; the weights are unchanged, so the model id is too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wbcv.base.atomic import atomic_write_bytes
from wbcv.base.errors import WbcvError
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.inference.acquisition import AcquisitionReference, decode_measured, measure_images, reference_from
from wbcv.inference.artifact import CARD_FILE, read_card
from wbcv.inference.decode import DEFAULT_MAX_PIXELS, CellRejected, max_file_bytes, read_cell_file
from wbcv.inference.domain_fit import read_split, split_cells


def fit_reference(paths: list[Path], labels: list[str]) -> AcquisitionReference:
    """The reference of labelled cells; an unreadable file is an error naming it."""
    datas = []
    for path in paths:
        try:
            datas.append(read_cell_file(path, max_file_bytes()))
        except (CellRejected, OSError) as e:
            raise WbcvError(f"{path}: cannot read the training cell: {e}") from None
    images = decode_measured(datas, DEFAULT_MAX_PIXELS)
    if len(images) != len(datas):
        raise WbcvError(
            f"{len(datas) - len(images)} training cell(s) cannot be decoded; run `wbcv check` on the library"
        )
    try:
        return reference_from(measure_images(images), labels)
    except ValueError as e:
        raise WbcvError(f"acquisition reference: {e}") from None


def add_acquisition_reference(model_dir: Path | str, cells_dir: Path | str) -> dict[str, Any]:
    """Measure the training split's reference and store it in the card; returns the card's ``input``."""
    model_dir, cells_dir = Path(model_dir), Path(cells_dir)
    if not cells_dir.is_dir():
        raise WbcvError(f"{cells_dir}: not a folder; expected the labelled cell library the model was trained on")
    card = read_card(model_dir)
    if card["input"].get("framing", "image") != "image":
        raise WbcvError(
            f"{model_dir}: frames each cell itself (cell framing); the acquisition correction is for image framing"
        )
    paths, indices = split_cells(model_dir, read_split(model_dir, card), cells_dir, "train")
    reference = fit_reference(paths, [CELL_CLASSES[i] for i in indices])
    card["input"]["acquisition_reference"] = reference.to_list()
    atomic_write_bytes(model_dir / CARD_FILE, (json.dumps(card, indent=2) + "\n").encode())
    return card["input"]
