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

Both are fitted on the cells as they are *and* on ``AUGMENTED_COPIES`` draws of each under the
augmentation the model was trained with (its card's recipe; ``nuisance_features``), thresholds
likewise: they are to refuse new kinds of object, not the acquisition variation the classifier
was trained to tolerate. Only images in which the locator finds a cell reach the gate, in fitting
as in use. The card records every folder with its file count and the sha256 of its listing
(``adapt.listing_sha256``).
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
from wbcv.inference.acquisition import SampleCorrection
from wbcv.inference.adapt import listing_sha256, unlabelled_files
from wbcv.inference.artifact import CARD_FILE, LoadedModel, load_artifact, read_card, save_gate, save_ood
from wbcv.inference.domain_fit import read_split, split_cells
from wbcv.inference.nuisance import AUGMENTED_COPIES, fit_nuisance_ood, nuisance_features, recipe_augmentation
from wbcv.inference.predict import decode_files, sample_correction
from wbcv.inference.wbc_gate import GATE_QUANTILE, fit_gate, with_threshold


def framed_pixels(
    model: LoadedModel,
    paths: Sequence[Path],
    labels: Sequence[int] | None = None,
    batch: int = 512,
    correction: SampleCorrection | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The framed pixels of the images in which a cell is found (those that reach the heads), their
    ``labels`` (-1 when none are given), and how many images were decoded; each batch is framed as
    one sample, or with ``correction`` when given."""
    tags = np.asarray(labels if labels is not None else [-1] * len(paths), np.int64)
    kept, kept_tags, decoded_n = [], [], 0
    for start in range(0, len(paths), batch):
        decoded = decode_files(model, paths[start : start + batch], correction=correction)
        found = ~decoded.no_cell
        read = [start + i for i in range(len(paths[start : start + batch])) if i not in decoded.rejected]
        kept.append(decoded.pixels[found])
        kept_tags.append(tags[read][found])
        decoded_n += len(decoded.pixels)
    size = model.input.size
    if not kept:
        return np.empty((0, size, size, 3), np.uint8), np.empty(0, np.int64), 0
    return np.concatenate(kept), np.concatenate(kept_tags), decoded_n


def folder_pixels(
    model: LoadedModel, folders: Sequence[Path], correction: SampleCorrection | None = None
) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Per folder: the framed pixels of its images that reach the gate, and what was read."""
    pixels, record = [], []
    for folder in folders:
        files = unlabelled_files(Path(folder))
        found, _, decoded_n = framed_pixels(model, files, correction=correction)
        pixels.append(found)
        record.append(
            {
                "folder": str(Path(folder).resolve()),
                "files": len(files),
                "decoded": decoded_n,
                "reached_gate": len(found),
                "listing_sha256": listing_sha256(files),
            }
        )
    return pixels, record


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
    cfg = recipe_augmentation(card)
    split = read_split(model_dir, card)
    train_pixels, train_labels, _ = framed_pixels(model, *split_cells(model_dir, split, cells_dir, "train"))
    train = (train_pixels, train_labels)
    validation, _, _ = framed_pixels(model, *split_cells(model_dir, split, cells_dir, "validation"))
    if model.ood is None:
        density, figures = fit_nuisance_ood(model.net, train, validation, cfg)
        card["ood"] = save_ood(density, model_dir, figures)
    neg_pixels, neg_record = folder_pixels(model, negatives)
    pos_pixels, pos_record = folder_pixels(model, other_lab_wbc)
    if other_lab_wbc and model.input.acquisition_reference is not None:
        # in a run, a red cell or platelet is framed with its sample's correction, measured on the
        # sample's white cells: the negatives are also shown as in a sample of the other labs' white cells
        lab_cells = [f for folder in other_lab_wbc for f in unlabelled_files(Path(folder))]
        in_lab, _ = folder_pixels(model, negatives, sample_correction(model, lab_cells))
        neg_pixels = neg_pixels + in_lab
    if not sum(len(n) for n in neg_pixels):
        raise WbcvError(f"no image of the negatives folders {[str(n) for n in negatives]} reaches the gate")
    pos = [nuisance_features(model.net, p, cfg, seed=10 + i) for i, p in enumerate([train[0], *pos_pixels])]
    neg = np.concatenate([nuisance_features(model.net, p, cfg, seed=20 + i) for i, p in enumerate(neg_pixels)])
    val = nuisance_features(model.net, validation, cfg, seed=3)
    gate = fit_gate(pos, neg)
    gate = with_threshold(gate, gate.logit(val))
    refused = {
        "validation_wbc": round(float(np.mean(gate.refuses(val[: len(validation)]))), 5),
        "negatives_in_sample": round(float(np.mean(gate.refuses(neg))), 5),
    }
    if pos_pixels:
        refused["other_lab_wbc_in_sample"] = round(float(np.mean(gate.refuses(np.concatenate(pos[1:])))), 5)
    card["wbc_gate"] = save_gate(
        gate,
        model_dir,
        {
            "quantile": GATE_QUANTILE,
            "augmented_copies": AUGMENTED_COPIES if cfg is not None else 0,
            "refused": refused,
            "positives": {"training_split_cells": len(train[1]), "other_lab_wbc": pos_record},
            "negatives": neg_record,
        },
    )
    atomic_write_bytes(model_dir / CARD_FILE, (json.dumps(card, indent=2) + "\n").encode())
    return card
