"""Evaluating a model artifact on expert-labelled cells: metrics, ablation and stress test.

``evaluate_cells`` gives the report that ``wbcv evaluate`` prints and writes as JSON; its keys are
fixed (see ``EVALUATION_KEYS``). Labels outside ``CELL_CLASSES`` (platelet, erythroblast, ig,
smudge ...) are out of scope: they are not in the class metrics, and their own section says how
many of them came out ``unclassified`` (all of them should) and what the rest were called.

``ablation`` compares decision rules on the same cells and the same network: the OVA heads alone,
the shipped OVA + lineage combination, and the plain 5-way softmax head trained beside them.
``stress_test`` re-scores cells after synthetic acquisition shifts applied to the image files.
"""

from __future__ import annotations

import dataclasses
import io
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from wbcv.base.errors import WbcvError
from wbcv.base.taxonomy import CELL_CLASSES, OUTCOMES, UNCLASSIFIED
from wbcv.inference.adapt import listing_sha256
from wbcv.inference.artifact import LoadedModel, load_artifact, read_card
from wbcv.inference.combine import ABSTAIN_REASONS, UNCLASSIFIED_INDEX
from wbcv.inference.decode import ACCEPTED_FORMATS_TEXT, IMAGE_EXTENSIONS
from wbcv.inference.library import LabelledCell, read_cell_library
from wbcv.inference.predict import Scored, decode_files, score_pixels
from wbcv.inference.training import read_split, update_card
from wbcv.validation import cell_metrics as cm

EVALUATION_KEYS: Final[tuple[str, ...]] = (
    "n",
    "accuracy",
    "balanced_accuracy",
    "selective_accuracy",
    "unclassified_rate",
    "macro_f1",
    "cohen_kappa",
    "ece",
    "per_class",
    "confusion_matrix",
    "out_of_scope",
)


def _r(x: float) -> float | None:
    return None if x != x else round(float(x), 6)


def class_report(y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray) -> dict[str, Any]:
    """Every in-scope metric of the evaluation JSON from true and predicted indices (definitions:
    ``cell_metrics``, scikit-learn's with zero_division=0, so a per-class sensitivity, PPV or F1 with
    a zero denominator is 0; the per-class unclassified rate, not a scikit-learn metric, is None for
    a class without cells)."""
    k = len(CELL_CLASSES)
    m = cm.confusion_matrix(y_true, y_pred, k)
    committed = y_pred != UNCLASSIFIED_INDEX
    sens, ppv, f1 = cm.sensitivity(m), cm.ppv(m), cm.f1(m)
    n_c = m.sum(axis=1)
    return {
        "n": int(m.sum()),
        "accuracy": _r(cm.accuracy(m)),
        "balanced_accuracy": _r(cm.balanced_accuracy(m)),
        "selective_accuracy": _r(cm.selective_accuracy(m)),
        "unclassified_rate": _r(cm.unclassified_rate(m)),
        "macro_f1": _r(cm.macro_f1(m)),
        "cohen_kappa": _r(cm.cohen_kappa(m)),
        "ece": _r(cm.expected_calibration_error(confidence[committed], (y_pred == y_true)[committed])),
        "per_class": {
            c: {
                "n": int(n_c[i]),
                "sensitivity": _r(sens[i]),
                "ppv": _r(ppv[i]),
                "f1": _r(f1[i]),
                "unclassified_rate": _r(m[i, -1] / n_c[i]) if n_c[i] else None,
            }
            for i, c in enumerate(CELL_CLASSES)
        },
        "confusion_matrix": {"labels": list(OUTCOMES), "counts": m.tolist()},
    }


def evaluate_cells(model: LoadedModel, cells: Sequence[LabelledCell], workers: int = 2) -> dict[str, Any]:
    """The evaluation report (keys ``EVALUATION_KEYS``) plus ``skipped`` for undecodable files and,
    for a model with an acquisition reference, ``acquisition_correction`` (the cells as one sample).
    Raises WbcvError, with the reasons, when not one cell could be decoded."""
    decoded = decode_files(model, [c.path for c in cells], workers=workers)
    rejected = decoded.rejected
    if cells and len(rejected) == len(cells):
        raise WbcvError(nothing_decoded(cells, rejected))
    kept = [c for i, c in enumerate(cells) if i not in rejected]
    scored = score_pixels(model, decoded.pixels, decoded.no_cell)
    pred = scored.combined.predicted.numpy()
    conf = scored.combined.confidence.numpy()
    labels = np.array([c.label for c in kept], dtype=object)
    in_scope = np.isin(labels, CELL_CLASSES)
    y_true = np.array([CELL_CLASSES.index(lab) for lab in labels[in_scope]], dtype=np.int64)
    report: dict[str, Any] = (
        class_report(y_true, pred[in_scope], conf[in_scope])
        if in_scope.any()
        else {key: None for key in EVALUATION_KEYS if key != "out_of_scope"}
    )
    out_of_scope: dict[str, Any] = {}
    for label in sorted(set(labels[~in_scope])):
        mine = pred[labels == label]
        named = Counter(UNCLASSIFIED if p == UNCLASSIFIED_INDEX else CELL_CLASSES[p] for p in mine)
        out_of_scope[label] = {
            "n": len(mine),
            "unclassified_rate": _r(float(np.mean(mine == UNCLASSIFIED_INDEX))),
            "predicted": {o: int(named.get(o, 0)) for o in OUTCOMES},
        }
    report["out_of_scope"] = out_of_scope
    ordered = {key: report[key] for key in EVALUATION_KEYS}
    ordered["skipped"] = {cells[i].path.as_posix(): reason for i, reason in sorted(rejected.items())}
    if decoded.correction is not None and model.input.acquisition_reference is not None:
        ordered["acquisition_correction"] = decoded.correction.to_dict()  # the cells taken as one sample
    return ordered


def nothing_decoded(cells: Sequence[LabelledCell], rejected: dict[int, str]) -> str:
    """The message for a labelled set of which no cell could be decoded: each distinct reason with
    how many files gave it and one of them."""
    by_reason: dict[str, list[Path]] = {}
    for i, reason in sorted(rejected.items()):
        by_reason.setdefault(reason, []).append(cells[i].path)
    reasons = "; ".join(
        f"{len(paths)} file(s), e.g. {paths[0]}: {reason}"
        for reason, paths in sorted(by_reason.items(), key=lambda item: -len(item[1]))
    )
    return (
        f"none of the {len(cells)} labelled cells could be decoded, so there is nothing to evaluate; expected at "
        f"least one readable single-cell image ({ACCEPTED_FORMATS_TEXT}). Reasons: {reasons}"
    )


# --- ablation -----------------------------------------------------------------------------


def _rule_predictions(scored: Scored, model: LoadedModel) -> dict[str, np.ndarray]:
    """Predicted indices of each decision rule on the same forward pass."""
    s = torch.sigmoid(
        scored.logits.ova * torch.tensor(model.calibration.ova_scale) + torch.tensor(model.calibration.ova_bias)
    )
    fired = (s >= model.thresholds.ova_fire).sum(1)
    ova_alone = torch.where(fired == 1, s.argmax(1), torch.full_like(fired, UNCLASSIFIED_INDEX))
    rules = {
        "ova_alone (exactly one head fires, else unclassified)": ova_alone.numpy(),
        "ova_plus_lineage (shipped rule)": scored.combined.predicted.numpy(),
    }
    if scored.logits.softmax5 is not None:
        rules["softmax5 (plain 5-way head, argmax, never abstains)"] = scored.logits.softmax5.argmax(1).numpy()
    return rules


def ablation(model: LoadedModel, cells: Sequence[LabelledCell]) -> dict[str, dict[str, Any]]:
    scope = [c for c in cells if c.label in CELL_CLASSES]
    decoded = decode_files(model, [c.path for c in scope])
    y = np.array([CELL_CLASSES.index(c.label) for i, c in enumerate(scope) if i not in decoded.rejected])
    scored = score_pixels(model, decoded.pixels, decoded.no_cell)
    conf = scored.combined.confidence.numpy()
    out = {}
    for name, pred in _rule_predictions(scored, model).items():
        r = class_report(y, pred, conf)
        out[name] = {
            k: r[k]
            for k in ("n", "balanced_accuracy", "accuracy", "selective_accuracy", "unclassified_rate", "macro_f1")
        }
    return out


# --- stress test --------------------------------------------------------------------------


def _pil_shift(fn: Callable[[Image.Image], Image.Image], jpeg_quality: int | None = None) -> Callable[[bytes], bytes]:
    def transform(data: bytes) -> bytes:
        im = fn(Image.open(io.BytesIO(data)).convert("RGB"))
        buf = io.BytesIO()
        if jpeg_quality is None:
            im.save(buf, format="PNG", compress_level=1)
        else:
            im.save(buf, format="JPEG", quality=jpeg_quality)
        return buf.getvalue()

    return transform


def _hue(degrees: float) -> Callable[[Image.Image], Image.Image]:
    def fn(im: Image.Image) -> Image.Image:
        h, s, v = im.convert("HSV").split()
        shift = round(degrees / 360 * 255)
        h = h.point(lambda x: (x + shift) % 256)
        return Image.merge("HSV", (h, s, v)).convert("RGB")

    return fn


def _channel_gain(gains: tuple[float, float, float]) -> Callable[[Image.Image], Image.Image]:
    def fn(im: Image.Image) -> Image.Image:
        a = np.asarray(im, dtype=np.float32) * np.asarray(gains, dtype=np.float32)
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))

    return fn


def _stain(scale_h: float, scale_e: float) -> Callable[[Image.Image], Image.Image]:
    """Change haematoxylin and eosin concentrations (Ruifrok-Johnston vectors)."""
    rgb_from_hed = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
    hed_from_rgb = np.linalg.inv(rgb_from_hed)

    def fn(im: Image.Image) -> Image.Image:
        od = -np.log(np.clip(np.asarray(im, dtype=np.float64), 1, 255) / 255.0)
        hed = od @ hed_from_rgb
        hed[..., 0] *= scale_h
        hed[..., 1] *= scale_e
        rgb = 255.0 * np.exp(-(hed @ rgb_from_hed))
        return Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8))

    return fn


def _zoom(factor: float) -> Callable[[Image.Image], Image.Image]:
    """factor < 1: the cell looks smaller (lower magnification), padded with the border colour;
    factor > 1: a central crop enlarged (higher magnification)."""

    def fn(im: Image.Image) -> Image.Image:
        w, h = im.size
        if factor >= 1:
            cw, ch = w / factor, h / factor
            return im.resize(
                (w, h), Image.Resampling.BILINEAR, box=((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
            )
        small = im.resize((round(w * factor), round(h * factor)), Image.Resampling.BILINEAR)
        edge = np.asarray(im)
        border = tuple(int(v) for v in np.median(np.concatenate([edge[0], edge[-1], edge[:, 0], edge[:, -1]]), axis=0))
        canvas = Image.new("RGB", (w, h), border)
        canvas.paste(small, ((w - small.width) // 2, (h - small.height) // 2))
        return canvas

    return fn


STRESS_SHIFTS: Final[dict[str, Callable[[bytes], bytes]]] = {
    "hue +20 degrees": _pil_shift(_hue(20)),
    "hue -20 degrees": _pil_shift(_hue(-20)),
    "saturation x0.5": _pil_shift(lambda im: ImageEnhance.Color(im).enhance(0.5)),
    "saturation x1.5": _pil_shift(lambda im: ImageEnhance.Color(im).enhance(1.5)),
    "stain: haematoxylin x1.3, eosin x0.7": _pil_shift(_stain(1.3, 0.7)),
    "stain: haematoxylin x0.7, eosin x1.3": _pil_shift(_stain(0.7, 1.3)),
    "brightness x0.8": _pil_shift(lambda im: ImageEnhance.Brightness(im).enhance(0.8)),
    "brightness x1.2": _pil_shift(lambda im: ImageEnhance.Brightness(im).enhance(1.2)),
    "blur sigma 2 px (full resolution)": _pil_shift(lambda im: im.filter(ImageFilter.GaussianBlur(2))),
    "JPEG quality 20": _pil_shift(lambda im: im, jpeg_quality=20),
    "rescale 0.75 (lower magnification)": _pil_shift(_zoom(0.75)),
    "rescale 1.33 (higher magnification)": _pil_shift(_zoom(1.33)),
    "grayscale": _pil_shift(lambda im: im.convert("L").convert("RGB")),
    # the wider grid (issue 14): shifts of the size other laboratories show
    "hue +40 degrees": _pil_shift(_hue(40)),
    "saturation x0.3": _pil_shift(lambda im: ImageEnhance.Color(im).enhance(0.3)),
    "stain: haematoxylin x1.6, eosin x0.5": _pil_shift(_stain(1.6, 0.5)),
    "yellow cast (blue x0.8)": _pil_shift(_channel_gain((1.0, 1.0, 0.8))),
    "rescale 0.5 (half the magnification)": _pil_shift(_zoom(0.5)),
    "rescale 1.6": _pil_shift(_zoom(1.6)),
    "blur sigma 4 px (full resolution)": _pil_shift(lambda im: im.filter(ImageFilter.GaussianBlur(4))),
    "JPEG quality 10": _pil_shift(lambda im: im, jpeg_quality=10),
}


def stress_test(model: LoadedModel, cells: Sequence[LabelledCell]) -> dict[str, dict[str, Any]]:
    """Accuracy under each synthetic shift of the image files, next to the clean figure. Each
    shifted set is one sample (one scanner): a model with an acquisition reference corrects it as such."""
    scope = [c for c in cells if c.label in CELL_CLASSES]
    y_all = np.array([CELL_CLASSES.index(c.label) for c in scope])
    results: dict[str, dict[str, Any]] = {}
    for name, transform in {"clean": None, **STRESS_SHIFTS}.items():
        decoded = decode_files(model, [c.path for c in scope], transform=transform)
        keep = np.array([i not in decoded.rejected for i in range(len(scope))])
        scored = score_pixels(model, decoded.pixels, decoded.no_cell)
        r = class_report(y_all[keep], scored.combined.predicted.numpy(), scored.combined.confidence.numpy())
        results[name] = {
            k: r[k] for k in ("n", "balanced_accuracy", "accuracy", "selective_accuracy", "unclassified_rate")
        }
        why = Counter(ABSTAIN_REASONS[int(i)] for i in scored.combined.abstain_reason if int(i))
        results[name]["unclassified_reasons"] = dict(sorted(why.items()))
        if decoded.correction is not None and model.input.acquisition_reference is not None:
            results[name]["acquisition_scale"] = round(decoded.correction.scale, 4)
    return results


# --- qualification of a freshly trained model ----------------------------------------------


def other_lab_figures(model: LoadedModel, cells: Sequence[LabelledCell]) -> dict[str, Any]:
    """The evaluation of labelled cells of another laboratory, as the card keeps it."""
    report = evaluate_cells(model, cells)
    keep = ("n", "balanced_accuracy", "accuracy", "selective_accuracy", "unclassified_rate", "ece", "per_class")
    out = {
        **{k: report[k] for k in keep},
        "confusion_matrix": report["confusion_matrix"],
        "skipped": len(report["skipped"]),
    }
    if "acquisition_correction" in report:
        out["acquisition_correction"] = report["acquisition_correction"]
    return out


def rejection_figures(model: LoadedModel, folders: Mapping[str, Path]) -> dict[str, dict[str, Any]]:
    """Per kind of object that is not a mature white cell (a folder of its images): how many
    images, the share left unclassified (the target), and the reasons; undecodable files count as
    unclassified (they never reach a differential)."""
    out: dict[str, dict[str, Any]] = {}
    for kind, folder in folders.items():
        paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise WbcvError(f"{folder}: no images of kind {kind!r}; expected a folder of {IMAGE_EXTENSIONS}")
        decoded = decode_files(model, paths)
        combined = score_pixels(model, decoded.pixels, decoded.no_cell).combined
        reasons = Counter(ABSTAIN_REASONS[int(r)] or "classified" for r in combined.abstain_reason)
        reasons.update({"undecodable": len(decoded.rejected)})
        out[kind] = {
            "n": len(paths),
            "unclassified_share": _r(1 - reasons["classified"] / len(paths)),
            "reasons": dict(sorted((k, v) for k, v in reasons.items() if v)),
            "folder": str(Path(folder).resolve()),
        }
    return out


def without_acquisition_correction(model: LoadedModel) -> LoadedModel:
    return dataclasses.replace(model, input=dataclasses.replace(model.input, acquisition_reference=None))


def _variants(model: LoadedModel) -> dict[str, LoadedModel]:
    """The model as shipped and with one part of its input path or its rejection switched off."""
    out = {"as shipped": model}
    if model.input.stain_mean is not None:
        out["without stain normalisation"] = dataclasses.replace(
            model, input=dataclasses.replace(model.input, stain_mean=None, stain_std=None)
        )
    if model.ood is not None:
        out["without the out-of-distribution score"] = dataclasses.replace(model, ood=None)
    if model.gate is not None:
        out["without the white-cell gate"] = dataclasses.replace(model, gate=None)
    if model.input.acquisition_reference is not None:
        out["without the acquisition correction"] = without_acquisition_correction(model)
    if model.input.locate_check:
        out["without the locator check"] = dataclasses.replace(
            model, input=dataclasses.replace(model.input, locate_check=False)
        )
    return out


def pipeline_ablation(
    model: LoadedModel, sets: Mapping[str, Sequence[LabelledCell]], non_wbc: Mapping[str, Path]
) -> dict[str, dict[str, Any]]:
    """What each part of the input path and of the rejection buys, at inference (same weights):
    per variant (``_variants``), balanced accuracy and unclassified rate on each labelled set and
    the unclassified share of each kind of non-WBC object."""
    out: dict[str, dict[str, Any]] = {}
    for name, variant in _variants(model).items():
        row: dict[str, Any] = {}
        for set_name, cells in sets.items():
            r = evaluate_cells(variant, cells)
            row[set_name] = {k: r[k] for k in ("n", "balanced_accuracy", "unclassified_rate", "ece")}
        for kind, figures in rejection_figures(variant, non_wbc).items():
            row[kind] = {"n": figures["n"], "unclassified_share": figures["unclassified_share"]}
        out[name] = row
    return out


def qualify_model(
    model_dir: Path,
    cells_dir: Path,
    log: Callable[[str], None] = print,
    other_labs: Mapping[str, Path] | None = None,
    non_wbc: Mapping[str, Path] | None = None,
) -> dict[str, Any]:
    """Evaluate a trained artifact and record the results in its card: ``metrics`` (held-out test
    split, the evaluation JSON), ``ablation``, ``stress_test``, and when given ``other_labs``
    (name -> labelled library of another laboratory, never trained on) and ``non_wbc`` (kind ->
    folder of images that are not white cells, never trained on): their figures."""
    model = load_artifact(model_dir)
    test = read_split(model_dir, Path(cells_dir), "test")
    log(f"evaluating on the held-out test split ({len(test)} cells)")
    metrics = evaluate_cells(model, test)
    metrics.pop("skipped")
    update_card(model_dir, "metrics", {"split": "test", **metrics})
    log("ablation of the decision rule")
    update_card(model_dir, "ablation", ablation(model, test))
    log("stress test under synthetic acquisition shifts")
    update_card(model_dir, "stress_test", stress_test(model, test))
    if model.input.acquisition_reference is not None:
        log("stress test without the acquisition correction (what it buys)")
        update_card(model_dir, "stress_test_uncorrected", stress_test(without_acquisition_correction(model), test))
    if other_labs:
        log(f"other laboratories: {', '.join(other_labs)}")
        labs = {name: other_lab_figures(model, read_cell_library(d)) for name, d in other_labs.items()}
        update_card(model_dir, "other_labs", labs)
    if non_wbc:
        log(f"objects that are not white cells: {', '.join(non_wbc)}")
        update_card(model_dir, "rejection", rejection_figures(model, non_wbc))
    if len(_variants(model)) > 1:
        log("ablation of the input path and the rejection rules")
        sets = {"test split": test, **{name: read_cell_library(d) for name, d in (other_labs or {}).items()}}
        update_card(model_dir, "pipeline_ablation", pipeline_ablation(model, sets, non_wbc or {}))
    card = read_card(model_dir)
    (model_dir / "MODEL_CARD.md").write_text(render_model_card(card))
    return metrics


def requalify_adapted(
    model_dir: Path, cells: Sequence[LabelledCell], log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Evaluate an adapted artifact (``wbcv adapt``) and, when it still loads, its parent on the same
    labelled cells, which the adaptation never saw; record both in the card (``metrics`` and
    ``adaptation.evaluation``), mark it re-qualified, rewrite MODEL_CARD.md. Returns the section."""
    model = load_artifact(model_dir)
    lineage = model.card.get("adaptation")
    if not isinstance(lineage, dict):
        raise WbcvError(f"{model_dir}: not an adapted model (its card has no 'adaptation' section)")
    adapted = evaluate_cells(model, cells)
    adapted.pop("skipped")
    parent_path = Path(lineage["parent"]["path"])
    try:
        parent = load_artifact(parent_path)
    except WbcvError as e:
        parent, why = None, str(e)
    if parent is not None and parent.sha256 != lineage["parent"]["weights_sha256"]:
        parent, why = None, f"{parent_path}: weights changed since the adaptation"
    before = None
    if parent is not None:
        before = evaluate_cells(parent, cells)
        before.pop("skipped")
    section = {
        "cells": len(cells),
        "labelled_listing_sha256": listing_sha256([c.path for c in cells], [c.label for c in cells]),
        "adapted": adapted,
        "parent": before if before is not None else {"not_evaluated": why},
    }
    log(
        f"adapted balanced accuracy {adapted['balanced_accuracy']}, unclassified {adapted['unclassified_rate']}"
        + (f"; parent {before['balanced_accuracy']}, unclassified {before['unclassified_rate']}" if before else "")
    )
    update_card(model_dir, "metrics", {"split": "held-out labelled cells of the adaptation site", **adapted})
    update_card(model_dir, "adaptation", {**lineage, "evaluation": section, "requalified": True})
    (model_dir / "MODEL_CARD.md").write_text(render_model_card(read_card(model_dir)))
    return section


def format_report(report: dict[str, Any]) -> str:
    """The evaluation as a readable table."""

    def pct(x: float | None) -> str:
        return "    -" if x is None else f"{100 * x:5.1f}"

    lines = [
        f"cells (in scope): {report['n']}",
        f"accuracy {pct(report['accuracy'])} %   balanced accuracy {pct(report['balanced_accuracy'])} %   "
        f"selective accuracy {pct(report['selective_accuracy'])} %",
        f"unclassified {pct(report['unclassified_rate'])} %   macro-F1 {pct(report['macro_f1'])} %   "
        f"Cohen's kappa {report['cohen_kappa']}   ECE {report['ece']}",
        "",
        f"{'class':<12} {'n':>6} {'sens %':>7} {'PPV %':>7} {'F1 %':>7} {'uncl %':>7}",
    ]
    for c, r in (report["per_class"] or {}).items():
        lines.append(
            f"{c:<12} {r['n']:>6} {pct(r['sensitivity']):>7} {pct(r['ppv']):>7} {pct(r['f1']):>7} "
            f"{pct(r['unclassified_rate']):>7}"
        )
    if report.get("confusion_matrix"):
        labels = report["confusion_matrix"]["labels"]
        lines += ["", "confusion (rows: expert, columns: model)", " " * 12 + "".join(f"{lab[:6]:>8}" for lab in labels)]
        for c, row in zip(CELL_CLASSES, report["confusion_matrix"]["counts"], strict=True):
            lines.append(f"{c:<12}" + "".join(f"{v:>8}" for v in row))
    if report["out_of_scope"]:
        lines += ["", "out-of-scope labels (should all be unclassified):"]
        for label, r in report["out_of_scope"].items():
            called = ", ".join(f"{k} {v}" for k, v in r["predicted"].items() if v and k != UNCLASSIFIED)
            lines.append(
                f"  {label:<14} n={r['n']:<5} unclassified {pct(r['unclassified_rate'])} %"
                + (f"   called: {called}" if called else "")
            )
    if report.get("skipped"):
        lines += ["", f"{len(report['skipped'])} file(s) could not be decoded:"]
        lines += [f"  {p}: {reason}" for p, reason in report["skipped"].items()]
    return "\n".join(lines)


def render_model_card(card: dict[str, Any]) -> str:
    """A human-readable MODEL_CARD.md from model.json (which stays the machine-readable truth)."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f} %"

    t, m = card.get("training", {}), card.get("metrics", {})
    lines = [
        f"# {card['name']}",
        "",
        card.get("description", ""),
        "",
        f"- weights: `{card['weights']['file']}`, sha256 `{card['weights']['sha256']}` "
        f"({card['weights']['bytes']:,} bytes)",
        f"- architecture: {card['architecture']['family']}, backbone {json_inline(card['architecture']['backbone'])}",
        f"- input: {json_inline(card['input'])}",
        f"- thresholds: {json_inline(card['thresholds'])}; calibration: {json_inline(card['calibration'])}",
    ]
    if t:
        lines += [
            f"- training library: `{t.get('library')}`; training-data manifest sha256 "
            f"`{t.get('training_data_manifest_sha256')}`",
            f"- split: `{t.get('split_file')}` (sha256 `{t.get('split_sha256')}`), "
            f"counts {json_inline(t.get('split_counts'))}",
            f"- duplicates merged: {t.get('duplicates_merged')}; conflicting duplicates dropped: "
            f"{json_inline(t.get('conflicting_duplicates_dropped'))}",
            f"- training time: {t.get('training_seconds')} s on {json_inline(t.get('machine'))}",
            f"- recipe: {json_inline(t.get('recipe'))}",
        ]
    if m:
        lines += [
            "",
            f"## Held-out {'test split' if m.get('split', 'test') == 'test' else m['split']} ({m.get('n')} cells)",
            "",
            "| metric | value |",
            "|---|---|",
            *(
                f"| {k} | {pct(m.get(k)) if k != 'cohen_kappa' and k != 'ece' else m.get(k)} |"
                for k in (
                    "balanced_accuracy",
                    "accuracy",
                    "selective_accuracy",
                    "unclassified_rate",
                    "macro_f1",
                    "cohen_kappa",
                    "ece",
                )
            ),
            "",
            "| class | n | sensitivity | PPV | F1 | unclassified |",
            "|---|---|---|---|---|---|",
            *(
                f"| {c} | {r['n']} | {pct(r['sensitivity'])} | {pct(r['ppv'])} | {pct(r['f1'])} | "
                f"{pct(r['unclassified_rate'])} |"
                for c, r in m.get("per_class", {}).items()
            ),
        ]
    for key, title in (
        ("ablation", "Ablation (same test split, same network)"),
        ("stress_test", "Stress test (test split under synthetic acquisition shifts)"),
    ):
        if card.get(key):
            lines += [
                "",
                f"## {title}",
                "",
                "| rule / shift | n | balanced accuracy | accuracy | selective accuracy | unclassified |",
                "|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {name} | {r['n']} | {pct(r['balanced_accuracy'])} | {pct(r['accuracy'])} | "
                f"{pct(r['selective_accuracy'])} | {pct(r['unclassified_rate'])} |"
                for name, r in card[key].items()
            ]
    lines += _correction_section(card.get("stress_test"), card.get("stress_test_uncorrected"))
    lines += _other_labs_section(card.get("other_labs")) + _rejection_section(card.get("rejection"), card.get("ood"))
    lines += _gate_section(card.get("wbc_gate"))
    lines += _pipeline_ablation_section(card.get("pipeline_ablation"))
    lines += _adaptation_section(card.get("adaptation"))
    return "\n".join(lines) + "\n"


def _adaptation_section(adaptation: dict[str, Any] | None) -> list[str]:
    """Lineage of an adapted model (``wbcv adapt``) and, once re-qualified, adapted against parent."""
    if not adaptation:
        return []
    parent = adaptation["parent"]
    lines = [
        "",
        "## Adaptation to a new site",
        "",
        f"- parent: {parent['model_id']} (weights sha256 `{parent['weights_sha256']}`)",
        f"- method: {adaptation['method']}; data: {json_inline(adaptation['data'])}",
        f"- pseudo-labelled cells: {adaptation['pseudo_labelled_cells']}; recipe: {json_inline(adaptation['recipe'])}",
    ]
    evaluation = adaptation.get("evaluation")
    if not adaptation.get("requalified") or not evaluation:
        return [*lines, "", "**Not re-qualified**: no figures on labelled cells of the site that it did not see."]
    lines += ["", f"Held-out labelled cells of the site: {evaluation['cells']}", ""]
    lines += ["| model | balanced accuracy | accuracy | unclassified | ECE |", "|---|---|---|---|---|"]
    for who in ("adapted", "parent"):
        r = evaluation[who]
        if "balanced_accuracy" in r:
            lines.append(
                f"| {who} | {r['balanced_accuracy']} | {r['accuracy']} | {r['unclassified_rate']} | {r['ece']} |"
            )
        else:
            lines.append(f"| {who} | not evaluated: {r['not_evaluated']} | | | |")
    return lines


def _correction_section(corrected: dict[str, Any] | None, uncorrected: dict[str, Any] | None) -> list[str]:
    """The stress test with and without the per-sample acquisition correction (same weights)."""
    if not corrected or not uncorrected:
        return []
    lines = [
        "",
        "## What the acquisition correction buys (stress test, balanced accuracy, same weights)",
        "",
        "| shift | corrected | uncorrected | scale measured |",
        "|---|---|---|---|",
    ]
    for name, r in corrected.items():
        u = uncorrected.get(name, {}).get("balanced_accuracy")
        shown = "-" if u is None else f"{100 * u:.2f} %"
        lines.append(f"| {name} | {100 * r['balanced_accuracy']:.2f} % | {shown} | {r.get('acquisition_scale', '-')} |")
    return lines


def _other_labs_section(labs: dict[str, Any] | None) -> list[str]:
    if not labs:
        return []

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f} %"

    lines = [
        "",
        "## Other laboratories (never trained or tuned on)",
        "",
        "| laboratory | n | balanced accuracy | accuracy | unclassified | ECE | sensitivity per class |"
        " acquisition correction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in labs.items():
        sens = ", ".join(f"{c} {pct(v['sensitivity'])}" for c, v in (r.get("per_class") or {}).items())
        correction = _correction_text(r.get("acquisition_correction"))
        lines.append(
            f"| {name} | {r['n']} | {pct(r['balanced_accuracy'])} | {pct(r['accuracy'])} | "
            f"{pct(r['unclassified_rate'])} | {r['ece']} | {sens} | {correction} |"
        )
    return lines


def _correction_text(c: dict[str, Any] | None) -> str:
    if not c:
        return "-"
    shift = ", ".join(f"{v:+.2f}" for v in c["od_shift"])
    hue = f", hue {c['hue_degrees']:+.1f} degrees"
    return f"scale {c['scale']:.2f}, OD shift ({shift}){hue}, {c['n_measured']} cells" + (
        f"; {c['note']}" if c["note"] else ""
    )


def _rejection_section(rejection: dict[str, Any] | None, ood: dict[str, Any] | None) -> list[str]:
    lines: list[str] = []
    if ood:
        lines += [
            "",
            "## Out-of-distribution score",
            "",
            f"{ood['method']}: threshold {ood['threshold']:.1f} (the {ood.get('quantile')} quantile on the "
            f"validation split; {100 * ood.get('validation_rejected', 0):.2f} % of validation cells above it); "
            f"file `{ood['file']}`, sha256 `{ood['sha256']}`.",
        ]
    if rejection:
        lines += [
            "",
            "## Objects that are not white cells (never trained on)",
            "",
            "| kind | n | unclassified | reasons | images |",
            "|---|---|---|---|---|",
        ]
        for kind, r in rejection.items():
            reasons = ", ".join(f"{k} {v}" for k, v in r["reasons"].items())
            share = "-" if r["unclassified_share"] is None else f"{100 * r['unclassified_share']:.1f} %"
            lines.append(f"| {kind} | {r['n']} | {share} | {reasons} | `{r['folder']}` |")
    return lines


def _gate_section(gate: dict[str, Any] | None) -> list[str]:
    """How the white-cell gate was fitted: its threshold and every folder with its listing hash."""
    if not gate:
        return []
    pos = gate["positives"]
    folders = [*pos.get("other_lab_wbc", []), *gate.get("negatives", [])]
    return [
        "",
        "## White-cell gate (`not_a_wbc`)",
        "",
        f"{gate['method']}: threshold {gate['threshold']:.3f} (the {gate.get('quantile')} quantile on the validation "
        f"split's white cells); refused {json_inline(gate.get('refused'))} (negatives and other labs' white cells: "
        f"in sample, the cells it was fitted on); file `{gate['file']}`, sha256 `{gate['sha256']}`.",
        f"Positives: {pos['training_split_cells']} training-split cells and the other labs' white cells below; "
        "negatives below (only images in which the locator finds a cell reach the gate).",
        "",
        "| folder | files | reached the gate | listing sha256 |",
        "|---|---|---|---|",
        *(f"| `{f['folder']}` | {f['files']} | {f['reached_gate']} | `{f['listing_sha256']}` |" for f in folders),
    ]


def _pipeline_ablation_section(ablation: dict[str, dict[str, Any]] | None) -> list[str]:
    if not ablation:
        return []
    columns = list(next(iter(ablation.values())))

    def cell(r: dict[str, Any]) -> str:
        if "balanced_accuracy" in r:
            ba, un = r["balanced_accuracy"], r["unclassified_rate"]
            return "-" if ba is None else f"{100 * ba:.1f} % ({100 * un:.1f} % uncl.)"
        share = r["unclassified_share"]
        return "-" if share is None else f"{100 * share:.1f} % uncl."

    return [
        "",
        "## Ablation of the input path and the rejection (same weights; balanced accuracy, or unclassified share)",
        "",
        "| variant | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
        *(f"| {name} | " + " | ".join(cell(row[c]) for c in columns) + " |" for name, row in ablation.items()),
    ]


def json_inline(value: Any) -> str:
    import json

    return f"`{json.dumps(value, separators=(', ', ': '))}`"
