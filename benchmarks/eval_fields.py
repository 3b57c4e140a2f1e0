"""How well the smear-field stage finds white cells and counts red cells and platelets.

Runs ``wbcv.inference.fields.analyse_field`` with each method (the HSV baseline and the final OD
method) on the Raabin-WBC fields of one split (``../shared/data/raabin_fields``, the source's
train/val/test split) and compares with the labelled boxes:

* white cells: recall and precision at IoU >= 0.5 (PASCAL VOC matching, ``validation/detection_metrics.py``);
* red cells: per-field count error |predicted - true| / true, median and 90th percentile;
* platelets: totals, recall and precision at IoU >= 0.5 (boxes of the few fields that hold any).

Develop on train/val; the test split gives the final figures only:

    python benchmarks/eval_fields.py --split val
    python benchmarks/eval_fields.py --split test --json benchmarks/results/fields_eval_test.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import simplejpeg  # noqa: E402

from wbcv.inference.fields import KINDS, METHODS, FieldParams, analyse_field  # noqa: E402
from wbcv.validation.detection_metrics import count_errors, detection_score  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "raabin_fields"


def read_labels(path: Path, width: int, height: int) -> dict[str, list[tuple[float, float, float, float]]]:
    """YOLO lines (class xc yc w h, normalised) -> boxes in pixels per kind (0 WBC, 1 RBC, 2 platelet)."""
    out: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in KINDS}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        c, xc, yc, w, h = line.split()
        x, y, bw, bh = float(xc) * width, float(yc) * height, float(w) * width, float(h) * height
        out[KINDS[int(c)]].append((x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2))
    return out


def evaluate(split: str, method: str, limit: int | None = None) -> dict:
    rows = [r for r in csv.DictReader((DATA / "manifest.csv").open()) if r["split"] == split][:limit]
    params = FieldParams(method=method)  # type: ignore[arg-type]
    per_kind: dict[str, list] = {k: [] for k in KINDS}
    counts: dict[str, tuple[list[int], list[int]]] = {k: ([], []) for k in KINDS}
    problems = []
    for r in rows:
        rgb = simplejpeg.decode_jpeg((DATA / r["path"]).read_bytes())
        truth = read_labels(DATA / r["labels"], rgb.shape[1], rgb.shape[0])
        res = analyse_field(rgb, params)
        if res.problem:
            problems.append({"field": r["path"], "problem": res.problem})
        for k in KINDS:
            dets = res.of_kind(k)
            per_kind[k].append(([(d.x0, d.y0, d.x1, d.y1) for d in dets], [d.score for d in dets], truth[k]))
            counts[k][0].append(res.count(k))
            counts[k][1].append(len(truth[k]))
    out: dict = {"split": split, "method": method, "fields": len(rows), "fields_not_analysed": problems}
    for k in KINDS:
        det = detection_score(per_kind[k], 0.5)
        err = count_errors(*counts[k])
        out[k] = {
            "true": det.n_true,
            "predicted": det.n_pred,
            "tp_iou50": det.tp,
            "recall_iou50": det.recall,
            "precision_iou50": det.precision,
            "count_rel_error_median": err.median,
            "count_rel_error_p90": err.p90,
            "count_rel_error_mean_signed": err.mean_signed,
            "count_fields_defined": err.n_fields,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("train", "val", "test"), default="val")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--limit", type=int, help="first N fields of the split only")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    results = [evaluate(args.split, m, args.limit) for m in args.methods]
    for res in results:
        w, r, p = res["wbc"], res["rbc"], res["platelet"]
        print(
            f"{res['method']:>4} {res['split']} ({res['fields']} fields, "
            f"{len(res['fields_not_analysed'])} not analysed): WBC recall {w['recall_iou50']:.3f} "
            f"precision {w['precision_iou50']:.3f} ({w['tp_iou50']}/{w['true']} true, "
            f"{w['predicted']} found); RBC |err| median {r['count_rel_error_median']:.3f} p90 "
            f"{r['count_rel_error_p90']:.3f} bias {r['count_rel_error_mean_signed']:+.3f}; platelets "
            f"{p['predicted']} found / {p['true']} true, recall {p['recall_iou50']:.2f}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"dataset": str(DATA.name), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
