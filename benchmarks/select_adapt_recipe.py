"""Choosing the recipe of `wbcv adapt` without looking at another laboratory's labelled cells.

    python benchmarks/select_adapt_recipe.py [--model M] [--cells ../shared/data/pbc] [--json OUT]

A synthetic "site" is made of the model's PBC *validation* cells (its split.csv) with one fixed
shift applied to every file (hue +40°, saturation ×0.6, rescale 0.75, JPEG quality 50): 300 cells
form the site's pool (the first ``n`` labelled, the rest given unlabelled), 400 others are held
out. Each candidate recipe adapts the model and is scored on the held-out cells (balanced accuracy,
unclassified counted as errors). The Tecom cells are never read here; they are reported once, with
the recipe chosen here, by ``benchmarks/eval_adapt.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageEnhance

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.eval_adapt import stratified_order  # noqa: E402
from wbcv.inference.adapt import AdaptRecipe, adapt  # noqa: E402
from wbcv.inference.artifact import load_artifact, resolve_model_path  # noqa: E402
from wbcv.inference.library import LabelledCell  # noqa: E402
from wbcv.inference.training import read_split  # noqa: E402
from wbcv.validation.model_evaluation import _hue, _zoom, evaluate_cells  # noqa: E402

CANDIDATES = {
    "default (lr 2e-4, >= 60 steps)": AdaptRecipe(),
    "lr 1e-3, >= 300 steps": AdaptRecipe(lr=1e-3, min_steps=300),
    "lr 3e-4, >= 300 steps": AdaptRecipe(lr=3e-4, min_steps=300),
}


def shifted(cell: LabelledCell, dst: Path) -> LabelledCell:
    im = Image.open(cell.path).convert("RGB")
    im = _zoom(0.75)(ImageEnhance.Color(_hue(40)(im)).enhance(0.6))
    dst.parent.mkdir(parents=True, exist_ok=True)
    im.save(dst, "JPEG", quality=50)
    return LabelledCell(dst, cell.label)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--cells", type=Path, default=REPO.parent / "shared" / "data" / "pbc")
    ap.add_argument("--sizes", type=int, nargs="+", default=[25, 100])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model_path = resolve_model_path(args.model)
    order = stratified_order(read_split(model_path, args.cells, "validation"), 7)
    report: dict[str, object] = {"model": load_artifact(model_path).model_id}
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp)
        pool = [shifted(c, site / "pool" / c.label / c.path.name) for c in order[:300]]
        held = [shifted(c, site / "held" / c.label / c.path.name) for c in order[300:700]]
        parent = evaluate_cells(load_artifact(model_path), held)
        report["parent"] = {k: parent[k] for k in ("balanced_accuracy", "unclassified_rate", "ece")}
        print("parent", report["parent"], flush=True)
        for n in args.sizes:
            for name, recipe in CANDIDATES.items():
                t0 = time.perf_counter()
                art = adapt(
                    model_path, site / f"a-{n}", [c.path for c in pool[n:]], pool[:n], recipe, log=lambda _m: None
                )
                r = evaluate_cells(load_artifact(art), held)
                row = {k: r[k] for k in ("balanced_accuracy", "unclassified_rate", "ece")}
                row["seconds"] = round(time.perf_counter() - t0, 1)
                report[f"n={n}, {name}"] = row
                print(n, name, row, flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
