"""Adapting a model artifact to a new site (``wbcv adapt``): its scanner, stain and lab.

A lab gives images of its own (unlabelled, and optionally a few hundred labelled cells); the result
is a new artifact whose card records its parent (model id and weights sha256), the adaptation
data (file listings' sha256), the method and the recipe. Three steps, each used when its data is
there:

1. **Normalisation statistics** (unlabelled and labelled images): every batch-normalisation layer's
   running mean and variance are re-estimated on the site's framed cells (AdaBN: Li et al. 2016,
   "Revisiting batch normalization for practical domain adaptation", arXiv:1603.04779): the
   features of another scanner and stain are re-centred without a single label.
2. **Supervised fine-tuning** (labelled cells): the whole network is fine-tuned at a low learning
   rate on the labelled cells, with the training augmentation, class-balanced sampling, and the
   training loss (``wbcv.inference.training``); then the statistics of step 1 again.
3. **Self-training** (unlabelled images): the best model so far (after step 2 when there are
   labelled cells: a teacher that has seen the site's labels) labels the site's cells; those it
   calls with calibrated confidence ≥ ``pseudo_label_confidence`` become training cells, and the
   network is fine-tuned on them with the labelled ones (each labelled cell ``labelled_weight``
   times as likely to be drawn) (confidence-filtered pseudo-labelling: Lee 2013; Xie et al. 2020
   "Self-training with Noisy Student", arXiv:1911.04252, whose augmented student this follows).

The parent's calibration and abstention threshold are kept (a few hundred cells cannot re-fit them
reliably; the evaluation on held-out labelled cells shows how well they still hold). The
out-of-distribution density and the operating-domain profile describe the *new* site: both are
re-fitted on the adaptation cells (labelled, and pseudo-labelled as the adapted model calls them),
the profile only when there are at least ``MIN_PROFILE_CELLS`` of them (fewer: the domain check
of the adapted model says it cannot be done). The adapted artifact must be re-qualified: its card
says so until ``wbcv adapt --evaluate`` (or ``wbcv qualify``) has written figures on labelled cells
it did not see.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn

from wbcv.base.errors import WbcvError
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.inference.artifact import LoadedModel, load_artifact, save_artifact, save_ood
from wbcv.inference.augment import AugmentConfig, augment
from wbcv.inference.combine import UNCLASSIFIED_INDEX
from wbcv.inference.decode import IMAGE_EXTENSIONS
from wbcv.inference.domain import CellSample, fit_profile, save_profile
from wbcv.inference.ensemble import WbcEnsembleNet
from wbcv.inference.library import LabelledCell
from wbcv.inference.ood import QUANTILE, FeatureDensity, distances, fit_density, threshold_for
from wbcv.inference.predict import DecodedFiles, decode_files, score_pixels
from wbcv.inference.training import _loss, predict_logits

#: Fewer adaptation cells than this: no operating-domain profile (its threshold would rest on too
#: few cells); the adapted model's domain check then says it cannot be done.
MIN_PROFILE_CELLS: Final[int] = 200
#: At most this many unlabelled images are read (a folder is a sample of a site, not an archive).
MAX_UNLABELLED: Final[int] = 20_000


@dataclass(frozen=True)
class AdaptRecipe:
    """Every number of an adaptation (recorded in the card)."""

    seed: int = 20261201
    epochs: int = 10  # passes over the adaptation cells (at least MIN_STEPS optimiser steps)
    min_steps: int = 60
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    pseudo_label_confidence: float = 0.9
    labelled_weight: float = 3.0  # sampling weight of a labelled cell relative to a pseudo-labelled one
    self_training: bool = True
    threads: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SiteData:
    """The adaptation data: framed pixels of the site's cells and a label per cell (-1: unlabelled)."""

    pixels: torch.Tensor  # (N, S, S, 3) uint8, framed like inference frames them
    labels: torch.Tensor  # (N,) class index, -1 for an unlabelled cell
    surround_lab: np.ndarray  # (N, 3) for the domain profile
    diameter_px: np.ndarray  # (N,)
    record: dict[str, Any]  # what was read: counts, cells without a located cell, listing hashes


def unlabelled_files(folder: Path) -> list[Path]:
    """The image files under ``folder`` (recursively, sorted), at most ``MAX_UNLABELLED``."""
    if not folder.is_dir():
        raise WbcvError(f"{folder}: not a folder; expected a folder of unlabelled cell images {IMAGE_EXTENSIONS}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise WbcvError(f"{folder}: no cell images; expected files named {IMAGE_EXTENSIONS}")
    if len(files) > MAX_UNLABELLED:
        raise WbcvError(f"{folder}: {len(files)} images; at most {MAX_UNLABELLED} are read for an adaptation")
    return files


def listing_sha256(paths: Sequence[Path], labels: Sequence[str] | None = None) -> str:
    """sha256 over 'file sha256  label' lines in the given order: the identity of an adaptation set."""
    lines = []
    for i, p in enumerate(paths):
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        lines.append(f"{digest}  {labels[i] if labels is not None else ''}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def read_site(model: LoadedModel, unlabelled: Sequence[Path], labelled: Sequence[LabelledCell]) -> SiteData:
    """Decode and frame the site's images as a batch run does; images that cannot be read, or in
    which no cell is found, are left out and counted (inference leaves them unclassified)."""
    unknown = sorted({c.label for c in labelled} - set(CELL_CLASSES))
    if unknown:
        raise WbcvError(f"labelled adaptation cells with label(s) {unknown}; expected only {list(CELL_CLASSES)}")
    paths = list(unlabelled) + [c.path for c in labelled]
    labels = [-1] * len(unlabelled) + [CELL_CLASSES.index(c.label) for c in labelled]
    decoded: DecodedFiles = decode_files(model, paths)
    read_ok = np.array([i not in decoded.rejected for i in range(len(paths))])
    keep = ~decoded.no_cell
    y = np.asarray(labels)[read_ok][keep]
    if not len(y):
        raise WbcvError("no cell could be located in any adaptation image; nothing to adapt on")
    surround = decoded.surround_lab if decoded.surround_lab is not None else np.full((len(keep), 3), np.nan)
    diameter = decoded.diameter_px if decoded.diameter_px is not None else np.full(len(keep), np.nan)
    record = {
        "unlabelled_images": len(unlabelled),
        "labelled_cells": len(labelled),
        "unreadable": len(decoded.rejected),
        "no_cell_found": int((~keep).sum()),
        "used_unlabelled": int((y < 0).sum()),
        "used_labelled": int((y >= 0).sum()),
        "unlabelled_listing_sha256": listing_sha256(unlabelled) if unlabelled else None,
        "labelled_listing_sha256": (
            listing_sha256([c.path for c in labelled], [c.label for c in labelled]) if labelled else None
        ),
    }
    return SiteData(
        torch.from_numpy(decoded.pixels[keep]), torch.from_numpy(y).long(), surround[keep], diameter[keep], record
    )


def renormalise_batchnorm(net: nn.Module, pixels: torch.Tensor, batch: int = 128) -> int:
    """Re-estimate every BatchNorm layer's running statistics on ``pixels`` (AdaBN); returns the
    number of layers. A cumulative average (momentum None) over the whole set, in evaluation mode
    for everything else (dropout stays off)."""
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in layers]
    net.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for i in range(0, len(pixels), batch):
            net(pixels[i : i + batch])
    for m, momentum in zip(layers, saved, strict=True):
        m.momentum = momentum
    net.eval()
    return len(layers)


def pseudo_labels(model: LoadedModel, pixels: torch.Tensor, confidence: float) -> torch.Tensor:
    """The adapted model's class for each cell where it is sure (calibrated confidence ≥
    ``confidence`` and not unclassified), else -1."""
    scored = score_pixels(model, pixels)
    pred = scored.combined.predicted.clone()
    unsure = (scored.combined.confidence < confidence) | (pred == UNCLASSIFIED_INDEX)
    pred[unsure] = -1
    return pred.long()


def fine_tune(
    net: WbcEnsembleNet, pixels: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, recipe: AdaptRecipe
) -> list[float]:
    """Fine-tune ``net`` in place on the cells with a label (≥ 0); each draw picks a class uniformly
    among those present, then a cell of it with probability ∝ ``weight``. Returns the loss per epoch."""
    g = torch.Generator().manual_seed(recipe.seed)
    present = [c for c in range(len(CELL_CLASSES)) if (labels == c).any()]
    pools = [torch.nonzero(labels == c).flatten() for c in present]
    n = int((labels >= 0).sum())
    steps_per_epoch = max(1, math.ceil(n / recipe.batch_size))
    epochs = max(recipe.epochs, math.ceil(recipe.min_steps / steps_per_epoch))
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    losses = []
    for _ in range(epochs):
        net.train()
        running = 0.0
        for _ in range(steps_per_epoch):
            cls = torch.randint(len(present), (recipe.batch_size,), generator=g)
            idx = torch.stack([pools[c][torch.multinomial(weight[pools[c]], 1, generator=g)][0] for c in cls.tolist()])
            x = augment(pixels[idx], recipe.augment, g)
            y = labels[idx]
            loss = _loss(net(x), y, torch.zeros(len(y), dtype=torch.bool), recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach())
        losses.append(round(running / steps_per_epoch, 4))
    net.eval()
    return losses


def site_features(model: LoadedModel, site: SiteData) -> np.ndarray:
    """(N, D) float32 backbone features of every site cell under the adapted network."""
    feats = predict_logits(model.net, site.pixels).features
    assert feats is not None  # WbcEnsembleNet always returns its features
    return feats.numpy()


def refit_ood(features: np.ndarray, labels: torch.Tensor, out_dir: Path) -> dict[str, Any] | None:
    """The feature density of the site's labelled and pseudo-labelled cells (half fitted, half for
    the threshold) over the classes they hold, or None when fewer than 20 cells carry a label. A
    class absent from the site's cells has no density: its cells come out out_of_distribution,
    unclassified (a refusal, never a miscount); the card lists such classes. ``features``: the
    adapted network's features of every site cell (``site_features``)."""
    has = torch.nonzero(labels >= 0).flatten()
    if len(has) < 20:
        return None
    order = has[torch.randperm(len(has), generator=torch.Generator().manual_seed(0))]
    feats = features[order.numpy()]
    y = labels[order].numpy()
    half = len(order) // 2
    present = sorted(set(y[:half].tolist()))  # the classes of the half the density is fitted on
    dense = np.searchsorted(present, y[:half])  # class index -> index among the present classes
    means, precision = fit_density(feats[:half], dense, len(present))
    density = FeatureDensity(means, precision, threshold_for(distances(feats[half:], means, precision)))
    figures = {
        "quantile": QUANTILE,
        "fitted_on": "adaptation cells, labelled and pseudo-labelled (half fitted, half for the threshold)",
        "cells": len(has),
        "classes_absent": [CELL_CLASSES[c] for c in range(len(CELL_CLASSES)) if c not in present],
    }
    return save_ood(density, out_dir, figures)


def refit_profile(site: SiteData, features: np.ndarray, labels: torch.Tensor, out_dir: Path) -> dict[str, Any]:
    """The operating-domain profile of the site (``wbcv.inference.domain``) from its labelled and
    pseudo-labelled cells (half for the class densities, half for the threshold), or the reason
    there is none (too few cells, or a class missing from either half)."""
    has = torch.nonzero(labels >= 0).flatten()
    if len(has) < MIN_PROFILE_CELLS:
        return {"reason": f"{len(has)} labelled or pseudo-labelled cells; a profile needs {MIN_PROFILE_CELLS}"}
    idx = has.numpy()[np.random.default_rng(0).permutation(len(has))]
    halves = idx[: len(idx) // 2], idx[len(idx) // 2 :]
    samples = [
        CellSample(
            features[part],
            site.surround_lab[part],
            site.diameter_px[part],
            np.zeros(len(part), bool),
            labels.numpy()[part],
        )
        for part in halves
    ]
    missing = [CELL_CLASSES[c] for c in range(len(CELL_CLASSES)) if any(not (s.labels == c).any() for s in samples)]
    if missing:
        return {"reason": f"no adaptation cell (labelled or pseudo-labelled) of class(es) {missing} in both halves"}
    profile = fit_profile(samples[0], samples[1], len(CELL_CLASSES))
    return save_profile(
        profile, out_dir, {"fitted_on": "adaptation cells, labelled and pseudo-labelled", "cells": len(has)}
    )


def method_name(site: SiteData, recipe: AdaptRecipe) -> str:
    """The steps applied, in order: 'batchnorm-statistics', '+supervised-fine-tuning', '+self-training'."""
    steps = ["batchnorm-statistics"]
    if site.record["used_labelled"]:
        steps.append("supervised-fine-tuning")
    if recipe.self_training and site.record["used_unlabelled"]:
        steps.append("self-training")
    return "+".join(steps)


def adapt(
    parent: Path | str,
    out_dir: Path,
    unlabelled: Sequence[Path] = (),
    labelled: Sequence[LabelledCell] = (),
    recipe: AdaptRecipe | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Adapt the ``parent`` artifact to the site of ``unlabelled`` and ``labelled`` cells; write the
    new artifact to ``out_dir``, which must not exist yet (module docstring). Returns ``out_dir``."""
    recipe = recipe or AdaptRecipe()
    if not unlabelled and not labelled:
        raise WbcvError("nothing to adapt on: give unlabelled images (--unlabelled) and/or labelled cells (--labelled)")
    if out_dir.exists():  # never write over (or delete) a folder: it may be the parent or a qualified model
        raise WbcvError(f"{out_dir}: already exists; give a new folder for the adapted model")
    t0 = time.perf_counter()
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    model = load_artifact(parent, fold=False)  # the BatchNorm layers are re-estimated and trained
    site = read_site(model, unlabelled, labelled)
    log(f"site: {site.record}")
    layers = renormalise_batchnorm(model.net, site.pixels)
    log(f"re-estimated the statistics of {layers} batch-normalisation layers on {len(site.pixels)} cells")
    labels, pseudo, losses = train_on_site(model, site, recipe, log)
    card = adapted_card(model, site, recipe, pseudo, losses, time.perf_counter() - t0)
    write_adapted(model, site, labels, card, out_dir)
    log(f"saved {out_dir} ({time.perf_counter() - t0:.0f} s); it must be re-qualified on labelled cells it did not see")
    return out_dir


def train_on_site(
    model: LoadedModel, site: SiteData, recipe: AdaptRecipe, log: Callable[[str], None]
) -> tuple[torch.Tensor, int, list[float]]:
    """Steps 2 and 3 of the module docstring, in place on ``model.net``: (labels with the
    pseudo-labels filled in, the number of pseudo-labelled cells, the loss per epoch)."""
    labels = site.labels.clone()
    losses: list[float] = []
    if site.record["used_labelled"]:  # supervised first: the teacher of the self-training is the best model so far
        losses += fine_tune(model.net, site.pixels, labels, torch.ones(len(labels)), recipe)
        renormalise_batchnorm(model.net, site.pixels)  # the fine-tuned layers' statistics on the site
        log(f"fine-tuned on the labelled cells: loss per epoch {losses}")
    if not (recipe.self_training and site.record["used_unlabelled"]):
        return labels, 0, losses
    guess = pseudo_labels(model, site.pixels, recipe.pseudo_label_confidence)
    take = (labels < 0) & (guess >= 0)
    labels[take] = guess[take]
    pseudo = int(take.sum())
    log(f"self-training: {pseudo} of {site.record['used_unlabelled']} unlabelled cells pseudo-labelled")
    if pseudo:
        weight = torch.where(site.labels >= 0, recipe.labelled_weight, 1.0)
        losses += fine_tune(model.net, site.pixels, labels, weight, recipe)
        renormalise_batchnorm(model.net, site.pixels)
        log(f"fine-tuned on labelled and pseudo-labelled cells: loss per epoch {losses}")
    return labels, pseudo, losses


def write_adapted(
    model: LoadedModel, site: SiteData, labels: torch.Tensor, card: dict[str, Any], out_dir: Path
) -> None:
    """Weights, card, site density and profile into a staging folder beside ``out_dir``, then
    renamed into place: an interrupted adaptation leaves no half-written artifact under its name."""
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)  # our own leftover of an interrupted run
    staging.mkdir(parents=True)
    features = site_features(model, site)  # once, for the density and the profile
    card["ood"] = refit_ood(features, labels, staging)
    card.pop("domain_profile", None)
    profile = refit_profile(site, features, labels, staging)
    if "sha256" in profile:
        card["domain_profile"] = profile
    else:
        card["adaptation"]["domain_profile_not_fitted"] = profile["reason"]
    save_artifact(model.net.eval(), card, staging)
    os.rename(staging, out_dir)


#: Card sections that describe the parent's qualification: not true of the adapted weights.
PARENT_ONLY: Final[tuple[str, ...]] = (
    "metrics",
    "ablation",
    "stress_test",
    "other_labs",
    "rejection",
    "pipeline_ablation",
    "qualification",
)


def adapted_card(
    model: LoadedModel, site: SiteData, recipe: AdaptRecipe, pseudo: int, losses: list[float], seconds: float
) -> dict[str, Any]:
    """The parent's card with its qualification figures removed and the adaptation's lineage added."""
    card = json.loads(json.dumps(model.card))
    for key in PARENT_ONLY:
        card.pop(key, None)
    gate = card.pop("wbc_gate", None)  # fitted on the parent's features, which adaptation changes
    card["name"] = f"{model.name}-adapted"
    card["description"] = (
        f"{model.card.get('description', '')} Adapted to a new site by `wbcv adapt` (inference/adapt.py)."
    )
    card["adaptation"] = {
        "parent": {"model_id": model.model_id, "weights_sha256": model.sha256, "path": str(model.path)},
        "method": method_name(site, recipe),
        "data": site.record,
        "pseudo_labelled_cells": pseudo,
        "recipe": recipe.to_dict(),
        "fine_tuning_loss_per_epoch": losses,
        "seconds": round(seconds, 1),
        "kept_from_parent": ["calibration", "thresholds", "input (framing and stain target)"],
        "requalified": False,  # set by the evaluation on held-out labelled cells (wbcv adapt --evaluate)
    }
    if gate is not None:
        card["adaptation"]["wbc_gate_dropped"] = (
            "the parent's white-cell gate was fitted on the parent's features, which adaptation changes; the "
            "adapted model refuses non-white objects by the locator check and its site density only"
        )
    return card
