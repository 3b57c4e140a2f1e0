"""What the per-sample acquisition correction (inference/acquisition.py) buys, same weights with and without.

    python benchmarks/eval_acquisition.py --model models/wbc-res2net-small-v3 --cells ../shared/data/pbc \\
        [--split validation] [--lab tecom=../shared/data/tecom] [--json benchmarks/results/acquisition_eval.json]

* **Shift grid**: the model's split (validation for choosing, test for the card) under each synthetic
  acquisition shift of the stress test, the whole shifted split taken as one sample (one scanner).
* **Case mix**: the correction measures the median cell of a sample, so a sample rich in small
  lymphocytes or large monocytes could be mis-scaled. Samples of 100 cells are drawn from the split
  with the class mixes of ``MIXES`` (5 samples each, seeded), each corrected on its own; accuracy and
  per-class sensitivity pooled per mix, with and without the correction.
* **Other laboratories** (``--lab``), each folder as one sample: reported, never tuned on.

Figures count unclassified cells as errors, as the model card does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wbcv.base.taxonomy import CELL_CLASSES  # noqa: E402
from wbcv.inference.artifact import LoadedModel, load_artifact  # noqa: E402
from wbcv.inference.library import LabelledCell, read_cell_library  # noqa: E402
from wbcv.inference.predict import decode_files, score_pixels  # noqa: E402
from wbcv.inference.training import read_split  # noqa: E402
from wbcv.validation.model_evaluation import (  # noqa: E402
    STRESS_SHIFTS,
    class_report,
    without_acquisition_correction,
)

#: Class shares (neutrophil, lymphocyte, monocyte, eosinophil, basophil) of the case-mix samples.
MIXES: dict[str, tuple[int, ...]] = {
    "normal": (60, 30, 6, 3, 1),
    "lymphocytosis": (20, 70, 6, 3, 1),
    "neutrophilia": (85, 10, 3, 1, 1),
    "monocytosis": (50, 25, 20, 4, 1),
    "eosinophilia": (50, 20, 5, 24, 1),
}
KEEP = ("n", "balanced_accuracy", "accuracy", "unclassified_rate", "ece")


def evaluate(model: LoadedModel, cells: list[LabelledCell], transform: Any = None) -> dict[str, Any]:
    decoded = decode_files(model, [c.path for c in cells], transform=transform)
    keep = [c for i, c in enumerate(cells) if i not in decoded.rejected]
    y = np.array([CELL_CLASSES.index(c.label) for c in keep])
    scored = score_pixels(model, decoded.pixels, decoded.no_cell)
    r = class_report(y, scored.combined.predicted.numpy(), scored.combined.confidence.numpy())
    out = {k: r[k] for k in KEEP}
    out["sensitivity"] = {c: r["per_class"][c]["sensitivity"] for c in CELL_CLASSES}
    out["correction"] = decoded.correction.to_dict() if decoded.correction else None
    return out


def mix_samples(cells: list[LabelledCell], seed: int = 0, n_samples: int = 5) -> dict[str, list[list[LabelledCell]]]:
    rng = np.random.default_rng(seed)
    by_class = {c: [x for x in cells if x.label == c] for c in CELL_CLASSES}
    out: dict[str, list[list[LabelledCell]]] = {}
    for name, shares in MIXES.items():
        out[name] = []
        for _ in range(n_samples):
            sample: list[LabelledCell] = []
            for c, k in zip(CELL_CLASSES, shares, strict=True):
                sample += [by_class[c][int(i)] for i in rng.choice(len(by_class[c]), k, replace=False)]
            out[name].append(sample)
    return out


def pooled(model: LoadedModel, samples: list[list[LabelledCell]]) -> dict[str, Any]:
    """Per-sample correction, figures pooled over the samples of one mix."""
    y_all, p_all, conf_all, scales = [], [], [], []
    for sample in samples:
        decoded = decode_files(model, [c.path for c in sample])
        scored = score_pixels(model, decoded.pixels, decoded.no_cell)
        y_all.append([CELL_CLASSES.index(c.label) for i, c in enumerate(sample) if i not in decoded.rejected])
        p_all.append(scored.combined.predicted.numpy())
        conf_all.append(scored.combined.confidence.numpy())
        scales.append(decoded.correction.scale if decoded.correction else 1.0)
    r = class_report(np.concatenate(y_all), np.concatenate(p_all), np.concatenate(conf_all))
    out = {k: r[k] for k in ("n", "accuracy", "balanced_accuracy", "unclassified_rate")}
    out["sensitivity"] = {c: r["per_class"][c]["sensitivity"] for c in CELL_CLASSES}
    out["scales"] = [round(s, 3) for s in scales]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--cells", required=True, type=Path, help="the library the model was trained on")
    ap.add_argument("--split", default="validation", choices=("validation", "test"))
    ap.add_argument("--lab", action="append", default=[], help="NAME=DIR: another laboratory's labelled cells")
    ap.add_argument("--no-grid", action="store_true", help="skip the shift grid (the slow part)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model = load_artifact(args.model)
    if model.input.acquisition_reference is None:
        sys.exit(f"{args.model}: the model has no acquisition reference (input.acquisition_reference)")
    variants = {"corrected": model, "uncorrected": without_acquisition_correction(model)}
    cells = [c for c in read_split(args.model, args.cells, args.split) if c.label in CELL_CLASSES]
    t0 = time.perf_counter()
    result: dict[str, Any] = {"model": model.model_id, "split": args.split, "n": len(cells)}
    shifts = {"clean": None} if args.no_grid else {"clean": None, **STRESS_SHIFTS}
    result["shifts"] = {}
    for name, transform in shifts.items():
        result["shifts"][name] = {v: evaluate(m, cells, transform) for v, m in variants.items()}
        row = result["shifts"][name]
        print(f"{name:40s} " + "  ".join(f"{v} {row[v]['balanced_accuracy']:.3f}" for v in variants), flush=True)
    result["case_mix"] = {}
    for name, samples in mix_samples(cells).items():
        result["case_mix"][name] = {v: pooled(m, samples) for v, m in variants.items()}
        row = result["case_mix"][name]
        print(f"mix {name:36s} " + "  ".join(f"{v} {row[v]['accuracy']:.3f}" for v in variants), flush=True)
    result["labs"] = {}
    for spec in args.lab:
        name, _, folder = spec.partition("=")
        lab_cells = [c for c in read_cell_library(folder) if c.label in CELL_CLASSES]
        result["labs"][name] = {v: evaluate(m, lab_cells) for v, m in variants.items()}
        row = result["labs"][name]
        print(f"lab {name:36s} " + "  ".join(f"{v} {row[v]['balanced_accuracy']:.3f}" for v in variants), flush=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
