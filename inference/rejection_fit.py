"""Adding the refusal of what is not a mature white cell to a model artifact, without retraining.

``add_rejection(model_dir, cells_dir, negatives, other_lab_wbc)`` gives an artifact the three
refusals of ``wbcv.inference.predict.decide`` that it lacks, each fitted on data named in its card:

1. **the locator's verdict** (image framing: ``input.locate_check``): an image without a white
   cell (blank, red cells only, out of focus) is ``no_cell_found``;
2. **the out-of-distribution score** (``wbcv.inference.ood``), when the card has none: the
   training split's feature density, its threshold on the validation split;
3. **the white-cell gate** (``wbcv.inference.wbc_gate``): fitted on the training split's cells
   and the ``other_lab_wbc`` folders (white cells of other laboratories) against the
   ``negatives`` folders (red cells, platelets, debris), threshold on the validation split.

Only images in which the locator finds a cell reach the gate, in fitting as in use. The card
records every folder with its file count and the sha256 of its listing (``adapt.listing_sha256``).
``wbcv fit-rejection MODEL_DIR --cells LIBRARY --negatives DIR ... [--other-lab-wbc DIR ...]``
calls it; so does ``wbcv train`` when given negatives.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wbcv.base.atomic import atomic_write_bytes
from wbcv.base.errors import WbcvError
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.inference.adapt import listing_sha256, unlabelled_files
from wbcv.inference.artifact import CARD_FILE, LoadedModel, load_artifact, read_card, save_gate, save_ood
from wbcv.inference.domain import CellSample
from wbcv.inference.domain_fit import cell_sample, read_split, split_sample
from wbcv.inference.ood import QUANTILE, FeatureDensity, distances, fit_density, threshold_for
from wbcv.inference.wbc_gate import GATE_QUANTILE, fit_gate, with_threshold


def _found(sample: CellSample) -> np.ndarray:
    """Features of the cells in which the locator found a white cell (those that reach the heads)."""
    return sample.features[~sample.no_cell]


def folder_features(model: LoadedModel, folders: Sequence[Path]) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Per folder: the features of its images that reach the gate, and what was read."""
    feats, record = [], []
    for folder in folders:
        files = unlabelled_files(Path(folder))
        sample = cell_sample(model, files, [-1] * len(files))
        feats.append(_found(sample))
        record.append(
            {
                "folder": str(Path(folder).resolve()),
                "files": len(files),
                "decoded": len(sample.labels),
                "reached_gate": len(feats[-1]),
                "listing_sha256": listing_sha256(files),
            }
        )
    return feats, record


def fit_missing_ood(model: LoadedModel, train: CellSample, validation: CellSample) -> dict[str, Any]:
    """The card's ``ood`` section of a density fitted on the training split's located cells."""
    keep = ~train.no_cell
    means, precision = fit_density(train.features[keep], train.labels[keep], len(CELL_CLASSES))
    val_d = distances(torch.from_numpy(_found(validation)), means, precision)
    density = FeatureDensity(means, precision, threshold_for(val_d))
    rejected = float(np.mean(val_d > density.threshold))
    return save_ood(density, model.path, {"quantile": QUANTILE, "validation_rejected": round(rejected, 5)})


def add_rejection(
    model_dir: Path | str,
    cells_dir: Path | str,
    negatives: Sequence[Path],
    other_lab_wbc: Sequence[Path] = (),
    locate_check: bool = True,
) -> dict[str, Any]:
    """Fit and store the refusals the artifact lacks (module docstring); returns the updated card.
    ``locate_check=False`` leaves an image-framing artifact without the locator's verdict (the gate
    then sees every decoded image)."""
    model_dir, cells_dir = Path(model_dir), Path(cells_dir)
    if not negatives:
        raise WbcvError("the white-cell gate needs at least one folder of negatives (red cells, platelets, debris)")
    if not cells_dir.is_dir():
        raise WbcvError(f"{cells_dir}: not a folder; expected the labelled cell library the model was trained on")
    torch.set_num_threads(1)
    card = read_card(model_dir)
    model = load_artifact(model_dir, with_domain=False)
    if model.input.framing == "image":
        model = dataclasses.replace(model, input=dataclasses.replace(model.input, locate_check=locate_check))
        card["input"]["locate_check"] = locate_check
    split = read_split(model_dir, card)
    train = split_sample(model, split, cells_dir, "train")
    validation = split_sample(model, split, cells_dir, "validation")
    if model.ood is None:
        card["ood"] = fit_missing_ood(model, train, validation)
    neg, neg_record = folder_features(model, negatives)
    pos, pos_record = folder_features(model, other_lab_wbc)
    if not sum(len(n) for n in neg):
        raise WbcvError(f"no image of the negatives folders {[str(n) for n in negatives]} reaches the gate")
    gate = fit_gate([_found(train), *pos], np.concatenate(neg))
    gate = with_threshold(gate, gate.logit(_found(validation)))
    refused = {
        "validation_wbc": round(float(np.mean(gate.refuses(_found(validation)))), 5),
        "negatives_in_sample": round(float(np.mean(gate.refuses(np.concatenate(neg)))), 5),
    }
    if pos:
        refused["other_lab_wbc_in_sample"] = round(float(np.mean(gate.refuses(np.concatenate(pos)))), 5)
    card["wbc_gate"] = save_gate(
        gate,
        model_dir,
        {
            "quantile": GATE_QUANTILE,
            "refused": refused,
            "positives": {"training_split_cells": len(_found(train)), "other_lab_wbc": pos_record},
            "negatives": neg_record,
        },
    )
    atomic_write_bytes(model_dir / CARD_FILE, (json.dumps(card, indent=2) + "\n").encode())
    return card
