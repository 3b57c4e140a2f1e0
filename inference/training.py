"""Training the reference OVA + 3-class ensemble on a labelled cell library.

Recipe (every number is in ``Recipe`` and recorded in the model card):

1. **Data.** Read the library (``wbcv.inference.library``), hash every file, and deduplicate by
   content: byte-identical copies count once; copies that carry different labels are dropped
   altogether (the label is in doubt) and listed in the card. Only the five classes are trained;
   other labels are kept out and counted.
2. **Split.** Stratified by class with a fixed seed: train / validation / test. The split is
   written next to the weights as ``split.csv`` (sha256, path, label, split); the card holds its
   hash and the hash of the whole training manifest.
3. **Cache.** Every image is decoded once exactly as inference decodes it (``decode_cell`` with the
   model's input spec); a second copy of each training image is decoded after JPEG
   re-compression at a random quality (30..90), standing in for other scanners' encoders.
   Background crops from the image corners (red cells, platelets, no white cell) are cached as
   negatives: every OVA head must stay silent on them ("outlier exposure").
4. **Training.** Class-balanced sampling (each class equally likely per draw), augmentation
   (``wbcv.inference.augment``), AdamW with a one-cycle cosine schedule. Loss = BCE over the five OVA
   heads + CE of the lineage head + CE of the plain softmax head (trained jointly on the same
   backbone for the ablation only; inference does not use it). The shipped weights are an
   exponential moving average of the trained ones (buffers included).
5. **Calibration** on the validation split: Platt scaling per OVA head (a_c, b_c minimising the
   one-vs-all log loss) and a temperature for the lineage head (minimising its NLL).
6. **Abstention threshold** from the validation risk-coverage curve by Chow's rule: the threshold
   minimising errors + ``abstention_cost`` x abstentions on validation, within the unclassified
   budget ``max_unclassified`` (see ``choose_threshold``); the curve is stored in the card.

Deterministic for a seed on one machine: seeded generators for split, sampling and
augmentation, a fixed thread count, and deterministic torch algorithms.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import platform
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

from wbcv.base.atomic import atomic_write_bytes
from wbcv.base.csvsafe import spreadsheet_original, spreadsheet_safe
from wbcv.base.errors import WbcvError
from wbcv.base.software import cpu_name
from wbcv.base.taxonomy import CELL_CLASSES, LINEAGE_INDEX_OF_CLASS
from wbcv.inference.artifact import CARD_FILE, InputSpec, make_card, save_artifact, save_ood
from wbcv.inference.augment import AugmentConfig, augment
from wbcv.inference.combine import Calibration, Thresholds, calibrated_scores, combine
from wbcv.inference.decode import IMAGE_EXTENSIONS, CellRejected, decode_cell, max_file_bytes, read_cell_file
from wbcv.inference.domain_fit import add_domain_profile
from wbcv.inference.ensemble import EnsembleLogits, WbcEnsembleNet
from wbcv.inference.framing import frame_cells, ring_mask, work_size
from wbcv.inference.library import LabelledCell, read_cell_library
from wbcv.inference.nuisance import fit_nuisance_ood
from wbcv.inference.res2net import Res2NetConfig, variant
from wbcv.inference.stain import StainStats, stain_target

SPLIT_FILE = "split.csv"
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Recipe:
    seed: int = 20261125
    variant: str = "res2net_wbc_small"
    # cell framing: the located cell fills 0.7 of the input's side; the stain target is computed
    # from the training split's surroundings of the cells when ``stain_normalise``
    input: InputSpec = field(default_factory=lambda: InputSpec(size=64, framing="cell", cell_fraction=0.7))
    stain_normalise: bool = True
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    epochs: int = 80
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.05
    negatives_fraction: float = 0.1  # background crops per training image
    jpeg_copy_quality: tuple[int, int] = (30, 90)
    jpeg_copy_p: float = 0.3  # chance a draw uses the re-compressed copy
    max_unclassified: float = 0.015  # on validation, when choosing the confidence threshold
    abstention_cost: float = 0.5  # an unclassified cell costs half a wrong call (Chow's rule)
    threads: int = 2
    ema_decay: float = 0.998  # exponential moving average of the weights (and BN buffers) is what ships
    ema_warmup: bool = False  # decay min(ema_decay, (1+t)/(10+t)): needed for short schedules
    # wider stain and colour jitter than AugmentConfig's defaults (v3): other labs' stains
    augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(
            stain_scale=0.2,
            stain_shift=0.05,
            hue_degrees=25.0,
            saturation=(0.4, 1.7),
            grayscale_p=0.1,
            channel_gain=0.12,
        )
    )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input"] = asdict(self.input)
        return d


@dataclass(frozen=True)
class Example:
    sha256: str
    path: Path
    label: str


@dataclass
class PreparedData:
    splits: dict[str, list[Example]]
    dropped_conflicts: list[dict[str, Any]]
    duplicates_merged: int
    out_of_scope: dict[str, int]
    manifest_sha256: str


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_data(cells: Sequence[LabelledCell], recipe: Recipe, root: Path) -> PreparedData:
    """Steps 1 and 2 of the recipe: hash, deduplicate, stratified split."""
    by_hash: dict[str, list[LabelledCell]] = defaultdict(list)
    for c in cells:
        by_hash[_sha(c.path)].append(c)
    manifest = "".join(
        f"{h}  {c.label}  {c.path.relative_to(root).as_posix()}\n"
        for h, group in sorted(by_hash.items())
        for c in group
    )
    examples: list[Example] = []
    conflicts: list[dict[str, Any]] = []
    out_of_scope: Counter[str] = Counter()
    merged = 0
    for h, group in sorted(by_hash.items()):
        labels = {c.label for c in group}
        if len(labels) > 1:
            conflicts.append({"sha256": h, "copies": [[c.path.relative_to(root).as_posix(), c.label] for c in group]})
            continue
        merged += len(group) - 1
        first = min(group, key=lambda c: c.path.as_posix())
        if first.label not in CELL_CLASSES:
            out_of_scope[first.label] += 1
            continue
        examples.append(Example(h, first.path, first.label))
    rng = random.Random(recipe.seed)
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for cls in CELL_CLASSES:
        members = sorted((e for e in examples if e.label == cls), key=lambda e: e.sha256)
        if len(members) < 10:
            raise WbcvError(f"class {cls!r} has {len(members)} distinct images; at least 10 are needed to train")
        rng.shuffle(members)
        n_train = round(len(members) * recipe.fractions[0])
        n_val = round(len(members) * recipe.fractions[1])
        splits["train"] += members[:n_train]
        splits["validation"] += members[n_train : n_train + n_val]
        splits["test"] += members[n_train + n_val :]
    return PreparedData(splits, conflicts, merged, dict(out_of_scope), hashlib.sha256(manifest.encode()).hexdigest())


def _decode(data: bytes, spec: InputSpec) -> np.ndarray:
    """The image decoded as inference decodes it, before framing (``wbcv.inference.framing``)."""
    return decode_cell(data, work_size(spec), crop=spec.crop if spec.framing == "image" else 1.0).pixels


def _recompressed(data: bytes, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _corner_crop(data: bytes, corner: int, spec: InputSpec) -> np.ndarray:
    """A square from one corner, 30 % of the image side: slide background without the white cell."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    side = int(0.3 * min(w, h))
    x0 = 0 if corner in (0, 2) else w - side
    y0 = 0 if corner in (0, 1) else h - side
    return np.asarray(im.resize((spec.size, spec.size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side, y0 + side)))


@dataclass
class Cache:
    images: torch.Tensor  # (N, S, S, 3) uint8
    labels: torch.Tensor  # (N,) class index
    jpeg_copies: torch.Tensor | None = None  # (N, S, S, 3) uint8, same order
    no_cell: tuple[str, ...] = ()  # paths of the images in which the locator found no cell (left out)


def _read_decoded(examples: Sequence[Example], spec: InputSpec) -> tuple[list[bytes], list[np.ndarray]]:
    blobs, decoded = [], []
    for e in examples:
        try:
            data = read_cell_file(e.path, max_file_bytes())
            decoded.append(_decode(data, spec))
        except CellRejected as err:
            raise WbcvError(f"{e.path}: training image cannot be decoded: {err}") from None
        blobs.append(data)
    return blobs, decoded


def ring_stain_target(decoded: Sequence[np.ndarray], spec: InputSpec) -> StainStats:
    """The Reinhard target of cell framing: mean lαβ statistics of the pixels around the cell
    (``framing.ring_mask``) over the given (training) images, framed without normalisation."""
    plain = replace(spec, stain_mean=None, stain_std=None)
    framed = frame_cells(list(decoded), plain)
    found = framed.pixels[~framed.no_cell]
    return stain_target(list(found), [ring_mask(spec.size, spec.cell_fraction)] * len(found))


def read_negatives(folders: Sequence[Path], spec: InputSpec) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Framed pixels of the images in ``folders`` in which the locator finds a cell (the others
    never reach the network: inference leaves them unclassified), and per folder what was read:
    files, found, and the sha256 of its sorted listing of file hashes."""
    pixels: list[np.ndarray] = []
    record: list[dict[str, Any]] = []
    for folder in folders:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            raise WbcvError(f"{folder}: no images to use as negatives; expected a folder of {IMAGE_EXTENSIONS}")
        blobs = [read_cell_file(p, max_file_bytes()) for p in files]
        framed = frame_cells([_decode(b, spec) for b in blobs], spec)
        pixels.append(framed.pixels[~framed.no_cell])
        listing = "".join(f"{hashlib.sha256(b).hexdigest()}  {p.name}\n" for p, b in zip(files, blobs, strict=True))
        record.append(
            {
                "folder": str(Path(folder).resolve()),
                "files": len(files),
                "cell_found_used": int((~framed.no_cell).sum()),
                "listing_sha256": hashlib.sha256(listing.encode()).hexdigest(),
            }
        )
    size = spec.size
    return (np.concatenate(pixels) if pixels else np.empty((0, size, size, 3), np.uint8)), record


def build_cache(
    examples: Sequence[Example],
    spec: InputSpec,
    rng: random.Random | None,
    q: tuple[int, int],
    read: tuple[list[bytes], list[np.ndarray]] | None = None,
) -> Cache:
    """Decode and frame every example as inference does (and a re-compressed copy when ``rng``);
    images in which no cell is found are left out and listed (inference leaves them unclassified)."""
    blobs, decoded = read or _read_decoded(examples, spec)  # ``read``: the examples already read and decoded
    framed = frame_cells(decoded, spec)
    keep = ~framed.no_cell
    labels = torch.tensor([CELL_CLASSES.index(e.label) for e in examples])[torch.from_numpy(keep)]
    jpeg = None
    if rng is not None:
        copies = [_decode(_recompressed(b, rng.randint(*q)), spec) for b in blobs]
        jpeg = torch.from_numpy(frame_cells(copies, spec).pixels[keep])
    lost = tuple(str(e.path) for e, k in zip(examples, keep, strict=True) if not k)
    return Cache(torch.from_numpy(framed.pixels[keep]), labels, jpeg, lost)


def _loss(logits: EnsembleLogits, y: torch.Tensor, is_negative: torch.Tensor, smoothing: float) -> torch.Tensor:
    n_cls = len(CELL_CLASSES)
    onehot = F.one_hot(y.clamp_min(0), n_cls).float()
    onehot[is_negative] = 0.0  # background crops: every OVA head must stay silent
    ova_target = onehot * (1 - smoothing) + smoothing / n_cls
    loss = F.binary_cross_entropy_with_logits(logits.ova, ova_target)
    pos = ~is_negative
    if pos.any():
        lineage = torch.tensor(LINEAGE_INDEX_OF_CLASS)[y[pos]]
        loss = loss + F.cross_entropy(logits.lineage[pos], lineage, label_smoothing=smoothing)
        if logits.softmax5 is not None:
            loss = loss + F.cross_entropy(logits.softmax5[pos], y[pos], label_smoothing=smoothing)
    return loss


def fit_calibration(ova_logits: torch.Tensor, lineage_logits: torch.Tensor, y: torch.Tensor) -> Calibration:
    """Platt scaling per OVA head and a lineage temperature, by maximum likelihood (LBFGS)."""
    scales, biases = [], []
    for c in range(len(CELL_CLASSES)):
        z, t = ova_logits[:, c], (y == c).float()
        # Scale as exp(log a), so calibration can sharpen or soften a head but never invert it.
        ab = torch.tensor([0.0, 0.0], requires_grad=True)
        opt = torch.optim.LBFGS([ab], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

        def closure(z: torch.Tensor = z, t: torch.Tensor = t, ab: torch.Tensor = ab, opt: Any = opt) -> torch.Tensor:
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(ab[0].exp() * z + ab[1], t)
            loss.backward()
            return loss

        opt.step(closure)
        a, b = float(ab[0].detach().exp()), float(ab[1].detach())
        if not (
            math.isfinite(a) and math.isfinite(b) and a > 0
        ):  # LBFGS diverged (near-constant logits): no calibration
            a, b = 1.0, 0.0
        scales.append(a)
        biases.append(b)
    log_t = torch.zeros(1, requires_grad=True)
    lin_y = torch.tensor(LINEAGE_INDEX_OF_CLASS)[y]
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure_t() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lineage_logits / log_t.exp(), lin_y)
        loss.backward()
        return loss

    opt.step(closure_t)
    temperature = float(log_t.detach().exp())
    return Calibration(
        tuple(scales), tuple(biases), temperature if math.isfinite(temperature) and temperature > 0 else 1.0
    )


def choose_threshold(
    logits: EnsembleLogits, y: torch.Tensor, cal: Calibration, max_unclassified: float, abstention_cost: float
) -> tuple[Thresholds, list[dict[str, float]]]:
    """The confidence threshold from the validation risk-coverage curve (Chow's rule).

    For each candidate tau the validation cells give an error rate e(tau) (committed and wrong) and
    an abstention rate a(tau). The chosen tau minimises e + abstention_cost x a (Chow 1970: an
    unclassified cell, which goes to human review, costs a fraction of a wrong call), among the
    tau whose abstention rate stays within ``max_unclassified``; ties go to the lower tau.
    """
    curve = []
    best, best_cost = Thresholds(min_confidence=0.0), float("inf")
    for tau in np.round(np.arange(0.0, 0.99, 0.01), 2):
        thr = Thresholds(min_confidence=float(tau))
        out = combine(logits, cal, thr)
        committed = out.predicted != -1
        coverage = float(committed.float().mean())
        wrong = float((committed & (out.predicted != y)).float().mean())
        risk = float((out.predicted[committed] != y[committed]).float().mean()) if committed.any() else 0.0
        curve.append({"min_confidence": float(tau), "coverage": round(coverage, 5), "selective_risk": round(risk, 5)})
        cost = wrong + abstention_cost * (1 - coverage)
        if 1 - coverage <= max_unclassified and cost < best_cost - 1e-12:
            best, best_cost = thr, cost
    return best, curve


def predict_logits(net: WbcEnsembleNet, images: torch.Tensor, batch: int = 512) -> EnsembleLogits:
    net.eval()
    outs: list[EnsembleLogits] = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            outs.append(net(images[i : i + batch]))
    soft = [o.softmax5 for o in outs if o.softmax5 is not None]
    return EnsembleLogits(
        torch.cat([o.ova for o in outs]),
        torch.cat([o.lineage for o in outs]),
        torch.cat(soft) if len(soft) == len(outs) else None,
        torch.cat([o.features for o in outs if o.features is not None]),
    )


def _averaged_net(ema: torch.optim.swa_utils.AveragedModel) -> WbcEnsembleNet:
    """The EMA copy of the network (AveragedModel types it as a plain Module)."""
    net = ema.module
    assert isinstance(net, WbcEnsembleNet)
    return net


def fit_ood(
    net: WbcEnsembleNet, train_cache: Cache, val_cache: Cache, out_dir: Path, cfg: AugmentConfig
) -> dict[str, Any]:
    """The feature density of the training split and its threshold on the validation split, both
    with augmented draws under the training augmentation (``wbcv.inference.nuisance``), written
    beside the weights; returns the card's ``ood`` section."""
    density, figures = fit_nuisance_ood(
        net, (train_cache.images.numpy(), train_cache.labels.numpy()), val_cache.images.numpy(), cfg
    )
    return save_ood(density, out_dir, figures)


def write_split(path: Path, data: PreparedData, root: Path) -> str:
    rows = [
        (e.sha256, spreadsheet_safe(e.path.relative_to(root).as_posix()), spreadsheet_safe(e.label), s)
        for s in SPLITS
        for e in data.splits[s]
    ]  # a file named "=cmd.jpg" stays inert when split.csv is opened in a spreadsheet (wbcv.base.csvsafe)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["sha256", "path", "label", "split"])
    w.writerows(rows)
    path.write_text(buf.getvalue())
    return hashlib.sha256(buf.getvalue().encode()).hexdigest()


def read_split(model_dir: Path, library_root: Path, split: str) -> list[LabelledCell]:
    """The cells of one split of a trained model, resolved against the library it was trained on."""
    path = model_dir / SPLIT_FILE
    if not path.is_file():
        raise WbcvError(f"{model_dir}: no {SPLIT_FILE}; the model does not record its training split")
    with open(path, newline="") as f:
        return [
            LabelledCell(library_root / spreadsheet_original(r["path"]), spreadsheet_original(r["label"]), r["sha256"])
            for r in csv.DictReader(f)
            if r["split"] == split
        ]


def train(
    cells_dir: Path,
    out_dir: Path,
    recipe: Recipe | None = None,
    name: str | None = None,
    log: Callable[[str], None] = print,
    limit_per_class: int | None = None,
    negative_folders: Sequence[Path] = (),
    other_lab_wbc_folders: Sequence[Path] = (),
) -> Path:
    """Train, calibrate and save an artifact (weights, card, split). Returns the artifact path.

    ``limit_per_class`` keeps only that many images per class (for quick tests of the loop).
    ``negative_folders``: images that are not white cells (red cells, platelets, debris),
    framed as inference frames them; those in which a cell is found join the background crops as
    negatives on which every OVA head must stay silent (see ``read_negatives``); with
    ``other_lab_wbc_folders`` (other laboratories' white cells) they also fit the white-cell gate
    (``wbcv.inference.rejection_fit``).
    """
    recipe = recipe or Recipe()
    t_start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    torch.set_num_threads(recipe.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    root = Path(cells_dir)
    cells = read_cell_library(root)
    if limit_per_class:
        per: dict[str, list[LabelledCell]] = defaultdict(list)
        for c in cells:
            per[c.label].append(c)
        cells = [
            c
            for label in sorted(per)
            for c in random.Random(recipe.seed).sample(per[label], min(limit_per_class, len(per[label])))
        ]
    data = prepare_data(cells, recipe, root)
    log(
        f"data: {sum(len(v) for v in data.splits.values())} distinct images "
        f"({data.duplicates_merged} duplicate copies merged, {len(data.dropped_conflicts)} conflicting dropped); "
        + ", ".join(f"{s} {len(data.splits[s])}" for s in SPLITS)
    )
    rng = random.Random(recipe.seed)
    train_read = _read_decoded(data.splits["train"], recipe.input)  # once: for the stain target and the cache
    if recipe.stain_normalise and recipe.input.framing == "cell":
        target = ring_stain_target(train_read[1], recipe.input)
        recipe = replace(recipe, input=replace(recipe.input, stain_mean=target.mean, stain_std=target.std))
        log(f"stain target (around the cells of the training split): {target}")
    train_cache = build_cache(data.splits["train"], recipe.input, rng, recipe.jpeg_copy_quality, train_read)
    val_cache = build_cache(data.splits["validation"], recipe.input, None, recipe.jpeg_copy_quality)
    n_neg = max(1, int(recipe.negatives_fraction * len(data.splits["train"])))
    neg_sources = rng.sample(data.splits["train"], min(n_neg, len(data.splits["train"])))
    negatives = torch.from_numpy(
        np.stack([_corner_crop(e.path.read_bytes(), rng.randrange(4), recipe.input) for e in neg_sources])
    )
    log(f"no cell found in {len(train_cache.no_cell)} training and {len(val_cache.no_cell)} validation images")
    extra, negatives_record = read_negatives(negative_folders, recipe.input)
    if len(extra):
        negatives = torch.cat([negatives, torch.from_numpy(extra)])
        log(f"negatives: {negatives_record}")
    log(
        f"cache: {len(train_cache.labels)} training images (+ JPEG copies), {len(negatives)} background negatives "
        f"({time.perf_counter() - t_start:.0f} s)"
    )

    cfg: Res2NetConfig = variant(recipe.variant)
    net = WbcEnsembleNet(cfg, recipe.input.mean, recipe.input.std, with_softmax_head=True)
    net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing from torch's overloads
    g = torch.Generator().manual_seed(recipe.seed)
    by_class = [torch.nonzero(train_cache.labels == c).flatten() for c in range(len(CELL_CLASSES))]
    steps_per_epoch = max(1, len(train_cache.labels) // recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total_steps, pct_start=0.15)

    if recipe.ema_warmup:

        def ema_avg(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
            decay = min(recipe.ema_decay, (1 + int(n)) / (10 + int(n)))
            return decay * averaged + (1 - decay) * current

        ema = torch.optim.swa_utils.AveragedModel(net, avg_fn=ema_avg, use_buffers=True)
    else:
        ema = torch.optim.swa_utils.AveragedModel(
            net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(recipe.ema_decay), use_buffers=True
        )
    n_neg_batch = max(1, round(recipe.batch_size * recipe.negatives_fraction))
    n_pos_batch = recipe.batch_size - n_neg_batch
    for epoch in range(recipe.epochs):
        net.train()
        t_epoch, running = time.perf_counter(), 0.0
        for _ in range(steps_per_epoch):
            cls = torch.randint(len(CELL_CLASSES), (n_pos_batch,), generator=g)
            idx = torch.stack(
                [by_class[c][torch.randint(len(by_class[c]), (1,), generator=g)][0] for c in cls.tolist()]
            )
            use_jpeg = torch.rand(n_pos_batch, generator=g) < recipe.jpeg_copy_p
            pos = torch.where(use_jpeg.view(-1, 1, 1, 1), train_cache.jpeg_copies[idx], train_cache.images[idx])  # type: ignore[index]
            neg = negatives[torch.randint(len(negatives), (n_neg_batch,), generator=g)]
            x = augment(torch.cat([pos, neg]), recipe.augment, g)
            y = torch.cat([cls, torch.full((n_neg_batch,), -1)])
            loss = _loss(net(x), y, y < 0, recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            ema.update_parameters(net)
            running += float(loss.detach())
        val = predict_logits(_averaged_net(ema), val_cache.images)
        val_acc = float((val.ova.argmax(1) == val_cache.labels).float().mean())
        log(
            f"epoch {epoch + 1}/{recipe.epochs}: loss {running / steps_per_epoch:.4f}, "
            f"validation OVA-argmax accuracy {val_acc:.4f} ({time.perf_counter() - t_epoch:.0f} s)"
        )

    net = _averaged_net(ema)
    val = predict_logits(net, val_cache.images)
    cal = fit_calibration(val.ova, val.lineage, val_cache.labels)
    thr, curve = choose_threshold(val, val_cache.labels, cal, recipe.max_unclassified, recipe.abstention_cost)
    s, q = calibrated_scores(val, cal)
    log(f"calibration: {cal}; threshold {thr}")
    out_dir.mkdir(parents=True, exist_ok=True)
    split_hash = write_split(out_dir / SPLIT_FILE, data, root)
    training = {
        "library": str(root.resolve()),
        "training_data_manifest_sha256": data.manifest_sha256,
        "split_file": SPLIT_FILE,
        "split_sha256": split_hash,
        "split_counts": {sp: dict(Counter(e.label for e in data.splits[sp])) for sp in SPLITS},
        "duplicates_merged": data.duplicates_merged,
        "conflicting_duplicates_dropped": data.dropped_conflicts,
        "out_of_scope_labels_excluded": data.out_of_scope,
        "no_cell_found_left_out": {"train": list(train_cache.no_cell), "validation": list(val_cache.no_cell)},
        "negatives": negatives_record,
        "recipe": recipe.to_dict(),
        "risk_coverage_validation": curve,
        "training_seconds": round(time.perf_counter() - t_start, 1),
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_name(),
            "threads": recipe.threads,
            "torch": torch.__version__,
        },
        "validation_ova_mean_score": [round(float(v), 4) for v in s.mean(0)],
        "validation_lineage_mean_probability": [round(float(v), 4) for v in q.mean(0)],
    }
    card = make_card(
        name or out_dir.name,
        cfg,
        recipe.input,
        calibration=cal,
        thresholds=thr,
        with_softmax_head=True,
        training=training,
        description="Res2Net-style OVA + 3-class ensemble trained by `wbcv train` (inference/training.py)",
    )
    card["ood"] = fit_ood(net, train_cache, val_cache, out_dir, recipe.augment)
    log(f"out-of-distribution threshold {card['ood']['threshold']:.1f}: {card['ood']['validation_rejected']}")
    save_artifact(net.eval(), card, out_dir)
    log(f"saved {out_dir} ({training['training_seconds']} s)")
    if recipe.input.framing == "image":  # each sample's magnification and light are corrected to the library's
        from wbcv.inference.acquisition_fit import add_acquisition_reference

        try:
            reference = add_acquisition_reference(out_dir, root)["acquisition_reference"]
            log(f"acquisition reference: median cell {reference[0]:.3f} of the short side")
        except WbcvError as e:  # a library too small to measure: runs frame without correction
            log(f"no acquisition reference: {e}")
    try:  # what the model was qualified on: every later run checks its batch against it
        profile = add_domain_profile(out_dir, root)
        log(f"domain profile: threshold {profile['threshold']:.3f} ({profile['threshold_from']})")
    except WbcvError as e:  # the weights are good; the card says the check cannot be done
        log(f"no domain profile: {e}")
    if negative_folders:  # the same negatives, and other labs' white cells, fit the white-cell gate
        from wbcv.inference.rejection_fit import add_rejection  # imports adapt, which imports this module

        gate = add_rejection(out_dir, root, negative_folders, other_lab_wbc_folders)["wbc_gate"]
        log(f"white-cell gate: threshold {gate['threshold']:.3f}, refused {gate['refused']}")
    return out_dir


def update_card(model_dir: Path, key: str, value: Any) -> None:
    """Add a section (metrics, ablation, stress test) to a card; the weights hash is untouched."""
    card = json.loads((model_dir / CARD_FILE).read_text())
    card[key] = value
    atomic_write_bytes(model_dir / CARD_FILE, (json.dumps(card, indent=2) + "\n").encode())
