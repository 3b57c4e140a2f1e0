"""How much a site adaptation (``wbcv adapt``) buys on another laboratory's cells: the learning curve.

    python benchmarks/eval_adapt.py [--model M] [--splits 5] [--sizes 0 25 50 100 200] --json OUT

The only labelled second-lab set is ``../shared/data/tecom`` (300 cells). For each random split
(seed = split number) a stratified third of it is held out for evaluation and never used to adapt;
from the other two thirds (the "site pool") the first ``n`` cells of a stratified shuffle are the
labelled adaptation cells, and the rest of the pool is given *without labels* (a lab has more
unlabelled images than labelled ones). ``n = 0`` is the unsupervised path (batch-normalisation
statistics + self-training); ``bn-only`` is the first step alone. The parent model is evaluated
on the same held-out cells. Reported: balanced accuracy (unclassified counted as errors),
unclassified rate and ECE per split, and their mean and SD over the splits.

With ``--raabin-unlabelled DIR --raabin-test DIR`` (WBC crops of ``python -m wbcv.fixtures.field_crops``,
train and test splits of ``../shared/data/raabin_fields``: no class labels), the unsupervised path
is also measured on a third lab: the unclassified rate of its test WBC crops and the operating-domain
verdict of them as one batch, before and after adapting on its train crops.

Nothing here tunes the adaptation: the recipe is ``AdaptRecipe()``'s defaults, fixed before this ran.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wbcv.inference.adapt import AdaptRecipe, adapt, unlabelled_files  # noqa: E402
from wbcv.inference.artifact import load_artifact, resolve_model_path  # noqa: E402
from wbcv.inference.combine import UNCLASSIFIED_INDEX  # noqa: E402
from wbcv.inference.domain import check, feature_cells, image_cells  # noqa: E402
from wbcv.inference.domain_fit import cell_sample  # noqa: E402
from wbcv.inference.library import LabelledCell, read_cell_library  # noqa: E402
from wbcv.inference.predict import decode_files, score_pixels  # noqa: E402
from wbcv.validation.model_evaluation import evaluate_cells  # noqa: E402

KEYS = ("balanced_accuracy", "accuracy", "unclassified_rate", "ece")


def stratified_order(cells: list[LabelledCell], seed: int) -> list[LabelledCell]:
    """Cells interleaved class by class after a seeded shuffle: every prefix is near-stratified."""
    rng = random.Random(seed)
    by: dict[str, list[LabelledCell]] = defaultdict(list)
    for c in cells:
        by[c.label].append(c)
    for v in by.values():
        rng.shuffle(v)
    # each class's cells spread evenly over the sequence (cell i of n at position (i + U(0, 1)) / n)
    keyed = [((i + rng.random()) / len(v), c) for v in by.values() for i, c in enumerate(v)]
    return [c for _, c in sorted(keyed, key=lambda t: t[0])]


def figures(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report[k] for k in KEYS}


def one_split(model_path: Path, cells: list[LabelledCell], split: int, sizes: list[int], work: Path) -> dict[str, Any]:
    order = stratified_order(cells, split)
    held_out = order[::3]
    pool = [c for i, c in enumerate(order) if i % 3]
    parent = load_artifact(model_path)
    out: dict[str, Any] = {"held_out": len(held_out), "parent": figures(evaluate_cells(parent, held_out))}
    runs: list[tuple[str, int, bool]] = [("bn-only", 0, False)] + [(f"n={n}", n, True) for n in sizes]
    for name, n, self_train in runs:
        labelled = pool[:n]
        unlabelled = [c.path for c in pool[n:]]
        t0 = time.perf_counter()
        art = adapt(
            model_path,
            work / f"s{split}-{name}",
            unlabelled,
            labelled,
            AdaptRecipe(self_training=self_train),
            log=lambda _m: None,
        )
        r = figures(evaluate_cells(load_artifact(art), held_out))
        r["seconds"] = round(time.perf_counter() - t0, 1)
        out[name] = r
        print(f"split {split} {name}: {r} (parent {out['parent']['balanced_accuracy']})", flush=True)
    return out


def summary(splits: list[dict[str, Any]]) -> dict[str, Any]:
    names = [k for k in splits[0] if k != "held_out"]
    out = {}
    for name in names:
        out[name] = {}
        for k in KEYS:
            vals = [s[name][k] for s in splits if s[name][k] is not None]
            out[name][k] = {
                "mean": round(statistics.fmean(vals), 4) if vals else None,
                "sd": round(statistics.stdev(vals), 4) if len(vals) > 1 else None,
            }
    return out


def batch_view(model_path: Path, files: list[Path]) -> dict[str, Any]:
    """Unclassified rate of a folder of WBC crops and its domain verdict as one batch."""
    model = load_artifact(model_path)
    decoded = decode_files(model, files)
    scored = score_pixels(model, decoded.pixels, decoded.no_cell)
    unclassified = float(np.mean(scored.combined.predicted.numpy() == UNCLASSIFIED_INDEX))
    verdict: dict[str, Any] = {"verdict": "not_checked"}
    if model.domain is not None:
        sample = cell_sample(model, files, [0] * len(files))
        fd, nearest = feature_cells(model.domain, sample.features)
        idist = image_cells(model.domain, sample.surround_lab, sample.diameter_px, nearest)
        keep = ~sample.no_cell
        d = check(model.domain, np.array(["batch"] * int(keep.sum())), fd[keep], idist[keep], ["batch"])
        verdict = {"verdict": d.verdict, "score": d.score, "threshold": d.threshold}
    return {"n": len(files), "unclassified_rate": round(unclassified, 4), "domain": verdict}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--tecom", type=Path, default=REPO.parent / "shared" / "data" / "tecom")
    ap.add_argument("--splits", type=int, default=5)
    ap.add_argument(
        "--first-split",
        type=int,
        default=1,
        help="seed of the first split; split 0 was looked at while the method was designed (the README says how)",
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[0, 25, 50, 100, 200])
    ap.add_argument("--raabin-unlabelled", type=Path)
    ap.add_argument("--raabin-test", type=Path)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    model_path = resolve_model_path(args.model)
    cells = read_cell_library(args.tecom)
    report: dict[str, Any] = {"model": load_artifact(model_path).model_id, "cells": len(cells), "splits": []}
    with tempfile.TemporaryDirectory() as tmp:
        for split in range(args.first_split, args.first_split + args.splits):
            report["splits"].append(one_split(model_path, cells, split, args.sizes, Path(tmp)))
            report["summary"] = summary(report["splits"])
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        if args.raabin_unlabelled and args.raabin_test:
            test_files = unlabelled_files(args.raabin_test)
            art = adapt(model_path, Path(tmp) / "raabin", unlabelled_files(args.raabin_unlabelled), (), log=print)
            report["raabin_unsupervised"] = {
                "parent": batch_view(model_path, test_files),
                "adapted": batch_view(art, test_files),
            }
            print(report["raabin_unsupervised"], flush=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
