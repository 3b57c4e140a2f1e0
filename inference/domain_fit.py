"""Adding a domain profile (``wbcv.inference.domain``) to a model artifact, with or without retraining.

``add_domain_profile(model_dir, cells_dir)`` reads the artifact's split file (which cells of the
labelled library were train / validation / test), runs the train and validation cells through the
model exactly as a batch run frames them, fits the profile, writes it beside the weights and adds
its section (with its sha256) to the model card. ``wbcv profile MODEL_DIR --cells LIBRARY`` calls
it; so can the end of ``wbcv train``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from wbcv.base.atomic import atomic_write_bytes
from wbcv.base.errors import WbcvError
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.inference.artifact import CARD_FILE, LoadedModel, load_artifact, read_card
from wbcv.inference.domain import REF_CELLS, CellSample, fit_profile, save_profile
from wbcv.inference.predict import decode_files

SPLIT_COLUMNS = ("path", "label", "split")


def read_split(model_dir: Path, card: dict[str, Any]) -> pl.DataFrame:
    """The artifact's split file (path, label, split), checked for its columns and known labels."""
    name = str(card.get("training", {}).get("split_file", "split.csv"))
    path = model_dir / name
    if not path.is_file():
        raise WbcvError(f"{model_dir}: split file {name} is missing; a domain profile needs the train/validation split")
    try:
        split = pl.read_csv(path, infer_schema_length=0)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise WbcvError(f"{path}: unreadable split file: {e}") from None
    missing = [c for c in SPLIT_COLUMNS if c not in split.columns]
    if missing:
        raise WbcvError(f"{path}: split file lacks column(s) {missing}; expected {list(SPLIT_COLUMNS)}")
    unknown = split.filter(~pl.col("label").is_in(list(CELL_CLASSES)))
    if unknown.height:
        raise WbcvError(
            f"{path}: row {unknown.row(0, named=True)['path']!r} has label {unknown['label'][0]!r}; "
            f"expected one of {list(CELL_CLASSES)}"
        )
    return split


def cell_sample(
    model: LoadedModel,
    paths: list[Path],
    labels: list[int],
    batch: int = 256,
    transform: Callable[[bytes], bytes] | None = None,
) -> CellSample:
    """Features and image statistics of ``paths`` as a batch run would frame them (chunks of
    ``batch``; ``transform``: applied to each file's bytes first, as in the stress test)."""
    feats, surround, diameter, no_cell, kept = [], [], [], [], []
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        decoded = decode_files(model, chunk, transform=transform)
        with torch.inference_mode():
            out = model.net(torch.from_numpy(decoded.pixels))
        assert out.features is not None and decoded.surround_lab is not None and decoded.diameter_px is not None
        feats.append(out.features.double().numpy())
        surround.append(decoded.surround_lab)
        diameter.append(decoded.diameter_px)
        no_cell.append(decoded.no_cell)
        kept += [labels[start + i] for i in range(len(chunk)) if i not in decoded.rejected]
    return CellSample(
        np.concatenate(feats).astype(np.float32),
        np.concatenate(surround),
        np.concatenate(diameter),
        np.concatenate(no_cell),
        np.array(kept, np.int64),
    )


def split_cells(model_dir: Path, split: pl.DataFrame, cells_dir: Path, which: str) -> tuple[list[Path], list[int]]:
    """Paths and class indices of the split's ``which`` cells; an error when there are none or
    one of them is missing from ``cells_dir``."""
    rows = split.filter(pl.col("split") == which)
    if rows.height == 0:
        raise WbcvError(f"{model_dir}: the split file has no {which!r} cells; they are needed here")
    paths = [cells_dir / p for p in rows["path"]]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        raise WbcvError(f"{cells_dir}: {len(absent)} {which} cell(s) of the split are missing, e.g. {absent[0]}")
    return paths, [CELL_CLASSES.index(label) for label in rows["label"]]


def split_sample(model: LoadedModel, split: pl.DataFrame, cells_dir: Path, which: str) -> CellSample:
    return cell_sample(model, *split_cells(model.path, split, cells_dir, which))


def add_domain_profile(model_dir: Path | str, cells_dir: Path | str, seed: int = 0) -> dict[str, Any]:
    """Fit the profile on ``cells_dir`` (the model's training library), store it, update the card.

    Returns the card's new ``domain_profile`` section. Call at the end of ``wbcv train`` as
    ``add_domain_profile(out_dir, library)``.
    """
    model_dir, cells_dir = Path(model_dir), Path(cells_dir)
    if not cells_dir.is_dir():
        raise WbcvError(f"{cells_dir}: not a folder; expected the labelled cell library the model was trained on")
    torch.set_num_threads(1)
    model = load_artifact(model_dir, with_domain=False)  # a profile there is being replaced
    card = read_card(model_dir)
    split = read_split(model_dir, card)
    train = split_sample(model, split, cells_dir, "train")
    absent = [c for i, c in enumerate(CELL_CLASSES) if not np.any(train.scored(False).labels == i)]
    if absent:
        raise WbcvError(
            f"{model_dir}: the split's train cells hold no usable cell of class(es) {absent}; "
            "a domain profile needs every class"
        )
    validation = split_sample(model, split, cells_dir, "validation")
    profile = fit_profile(train, validation, len(CELL_CLASSES), seed=seed)
    section = save_profile(
        profile,
        model_dir,
        {
            "fitted_on": {"library": str(cells_dir), "train_cells": len(train.labels), "seed": seed},
            "threshold_from": (
                f"validation split: {len(validation.labels)} cells resampled into {REF_CELLS}-cell slides"
            ),
        },
    )
    card["domain_profile"] = section
    atomic_write_bytes(model_dir / CARD_FILE, (json.dumps(card, indent=2) + "\n").encode())
    return section
