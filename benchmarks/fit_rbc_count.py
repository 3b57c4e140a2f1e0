"""Fit ``fields.RBC_COUNT_COEF``: the red-cell count from the red-cell area of a field.

For every field of the train split, ``analyse_field`` (method ``od``) gives the area features
(inner area, area cut by the edge, regions cut by the edge; ``fields.red_cell_area_features``);
the coefficients c minimise the mean over fields of |features . c - n_true| / n_true, the absolute
relative count error the target is stated in (Nelder-Mead, scipy, started from the weighted
least-squares solution; no intercept: an empty field has no red cells).
Fields without a labelled red cell are left out (relative error undefined). Prints the
coefficients and the count error they give on train and val (test is never read here):

    python benchmarks/fit_rbc_count.py
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import simplejpeg  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

from benchmarks.eval_fields import DATA, read_labels  # noqa: E402
from wbcv.inference.fields import FieldParams, analyse_field  # noqa: E402
from wbcv.validation.detection_metrics import count_errors  # noqa: E402


def features(split: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [r for r in csv.DictReader((DATA / "manifest.csv").open()) if r["split"] == split]
    x, n = [], []
    for r in rows:
        rgb = simplejpeg.decode_jpeg((DATA / r["path"]).read_bytes())
        res = analyse_field(rgb, FieldParams(method="od"))
        if res.rbc_area_features is None:
            continue
        x.append(res.rbc_area_features)
        n.append(len(read_labels(DATA / r["labels"], rgb.shape[1], rgb.shape[0])["rbc"]))
    return np.asarray(x, dtype=np.float64), np.asarray(n, dtype=np.float64)


def main() -> None:
    x_tr, n_tr = features("train")
    ok = n_tr > 0
    w = 1.0 / n_tr[ok]
    start, *_ = np.linalg.lstsq(x_tr[ok] * w[:, None], n_tr[ok] * w, rcond=None)
    coef = minimize(lambda c: float(np.mean(np.abs(x_tr[ok] @ c - n_tr[ok]) * w)), start, method="Nelder-Mead").x
    print("RBC_COUNT_COEF =", tuple(round(float(c), 3) for c in coef))
    for split, (x, n) in (("train", (x_tr, n_tr)), ("val", features("val"))):
        pred = np.maximum(0, np.rint(x @ np.round(coef, 3)))
        e = count_errors(pred.astype(int).tolist(), n.astype(int).tolist())
        print(f"{split}: |err| median {e.median:.3f} p90 {e.p90:.3f} bias {e.mean_signed:+.3f} ({e.n_fields} fields)")


if __name__ == "__main__":
    main()
