"""Fit ``fields.RBC_COUNT_COEF`` and ``fields.RBC_COUNT_MIN_AREA``: the red-cell count of a field by
area division of its stained regions (``fields.red_cell_count``).

For every field of the train split, ``analyse_field`` (method ``od``) gives the red-cell regions
(area in nominal red-cell areas, cut by the edge or not; ``fields.red_cell_regions``, here with the
smallest grid value of the area floor so that larger floors can be applied afterwards). A grid over
(c_inner, c_edge, c_n, area floor) picks the rule of least median |count - n_true| / n_true on train
(the statistic the target is stated in), ties broken by the mean. Fields without a labelled red cell
are left out (relative error undefined). Prints the best rules and their error on train and val
(val is looked at, not fitted; test is never read here):

    python benchmarks/fit_rbc_count.py
"""

from __future__ import annotations

import csv
import itertools
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import simplejpeg  # noqa: E402

import wbcv.inference.fields as fields  # noqa: E402
from benchmarks.eval_fields import DATA, read_labels  # noqa: E402
from wbcv.validation.detection_metrics import CountErrorSummary, count_errors  # noqa: E402

Regions = tuple[tuple[float, bool], ...]
GRID_INNER = np.round(np.arange(1.2, 1.8, 0.05), 2)
GRID_EDGE = np.round(np.arange(0.6, 1.6, 0.1), 2)
GRID_N = (0.0, 0.25, 0.5, 0.75)
GRID_FLOOR = (0.08, 0.12, 0.2)


def regions(split: str) -> tuple[list[Regions], list[int]]:
    rows = [r for r in csv.DictReader((DATA / "manifest.csv").open()) if r["split"] == split]
    fields.RBC_COUNT_MIN_AREA = min(GRID_FLOOR)  # type: ignore[misc]  # every region, floors applied below
    x, n = [], []
    for r in rows:
        rgb = simplejpeg.decode_jpeg((DATA / r["path"]).read_bytes())
        res = fields.analyse_field(rgb, fields.FieldParams(method="od"))
        if res.rbc_regions is None:
            continue
        x.append(res.rbc_regions)
        n.append(len(read_labels(DATA / r["labels"], rgb.shape[1], rgb.shape[0])["rbc"]))
    return x, n


def count(regs: Regions, c_inner: float, c_edge: float, c_n: float, floor: float) -> int:
    """``fields.red_cell_count`` with the given coefficients and area floor."""
    return sum(
        max(1, round(c_edge * a + c_n)) if edge else max(1, round(c_inner * a)) for a, edge in regs if a >= floor
    )


def errors(x: list[Regions], n: list[int], rule: tuple[float, ...]) -> CountErrorSummary:
    return count_errors([count(r, *rule) for r in x], n)


def main() -> None:
    x_tr, n_tr = regions("train")
    x_va, n_va = regions("val")
    scored = []
    truth = np.asarray(n_tr, dtype=np.float64)
    defined = truth > 0
    for rule in itertools.product(GRID_INNER, GRID_EDGE, GRID_N, GRID_FLOOR):
        pred = np.array([count(r, *rule) for r in x_tr], dtype=np.float64)
        rel = np.abs(pred - truth)[defined] / truth[defined]
        scored.append((float(np.median(rel)), float(rel.mean()), tuple(float(v) for v in rule)))
    scored.sort()
    print("best rules on train (c_inner, c_edge, c_n, area floor): train | val |error| median, p90, bias")
    for _, _, rule in scored[:8]:
        tr, va = errors(x_tr, n_tr, rule), errors(x_va, n_va, rule)
        print(
            f"  {rule}: train {tr.median:.3f} {tr.p90:.3f} {tr.mean_signed:+.3f} | "
            f"val {va.median:.3f} {va.p90:.3f} {va.mean_signed:+.3f}"
        )


if __name__ == "__main__":
    main()
