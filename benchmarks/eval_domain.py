"""How well the domain check (``wbcv.inference.domain``) tells a batch unlike the qualification data.

    python benchmarks/eval_domain.py [--model models/NAME] [--json benchmarks/results/domain_eval.json]

The model's domain profile (``wbcv profile``) was fitted on its training split and thresholded on
its validation split. Here, never tuned on:

* **false alarms**: slides of 100 and 200 cells resampled from the held-out PBC **test** split
  (composition ~ Multinomial(n, DIFFERENTIAL), and again with the abnormal differentials of
  ``ABNORMAL``); the share scored above the threshold, with its Clopper–Pearson 95 % interval;
* **detection**: the same resampling of the 300 tecom cells (another laboratory; slides overlap:
  300 cells only), of PBC test cells under each synthetic acquisition shift of
  ``wbcv.validation.model_evaluation.STRESS_SHIFTS``, and of WBC crops cut from the raabin
  ``test`` fields (a third laboratory; no class labels, so uniform resampling).

Each row also gives the median z of each component (features, image) and the score of the whole
set as one batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

from wbcv.base.taxonomy import CELL_CLASSES  # noqa: E402
from wbcv.fixtures.field_crops import field_crops  # noqa: E402
from wbcv.inference.artifact import load_artifact, read_card, resolve_model_path  # noqa: E402
from wbcv.inference.domain import (  # noqa: E402
    DomainProfile,
    feature_cells,
    image_cells,
    resample_slides,
    score,
    trimmed_statistics,
)
from wbcv.inference.domain_fit import CellSample, cell_sample, read_split, split_sample  # noqa: E402
from wbcv.validation.model_evaluation import STRESS_SHIFTS  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
#: Abnormal differentials (N, L, M, E, B) for the false-alarm rate on PBC test slides: a slide of
#: a patient with a monocytosis is still inside the operating domain.
ABNORMAL: dict[str, tuple[float, ...]] = {
    "uniform 20 % each": (0.2, 0.2, 0.2, 0.2, 0.2),
    "monocytosis (M 25 %)": (0.45, 0.25, 0.25, 0.04, 0.01),
    "eosinophilia (E 30 %)": (0.40, 0.25, 0.04, 0.30, 0.01),
    "lymphocytosis (L 70 %)": (0.20, 0.70, 0.06, 0.03, 0.01),
    "neutrophilia (N 90 %)": (0.90, 0.07, 0.02, 0.01, 0.0),
}
N_SLIDES = 2000
SIZES = (100, 200)


def rates(
    profile: DomainProfile,
    cells: CellSample,
    labelled: bool,
    seed: int = 1,
    differential: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    s = cells.scored(profile.use_diameter)
    fd, nearest = feature_cells(profile, s.features)
    idist = image_cells(profile, s.surround_lab, s.diameter_px, nearest)
    rng = np.random.default_rng(seed)
    labels, diff = (s.labels, differential) if labelled else (np.zeros(len(s.labels), int), (1.0,))
    out: dict[str, Any] = {
        "n_cells": len(cells.labels),
        "n_scored": len(s.labels),
        "batch_score": score(profile, fd, idist),
    }
    for n in SIZES:
        kw = {} if diff is None else {"differential": diff}
        slides = resample_slides(labels, n, N_SLIDES, rng, **kw)
        stats = np.array([trimmed_statistics(fd[i], idist[i]) for i in slides])
        z = (stats - profile.centre) / profile.scale
        flagged = int((z.max(1) > profile.threshold).sum())
        ci = binomtest(flagged, N_SLIDES).proportion_ci(0.95, method="exact")
        out[f"slides_{n}"] = {
            "n_slides": N_SLIDES,
            "flagged": flagged,
            "rate": flagged / N_SLIDES,
            "ci95": [round(ci.low, 4), round(ci.high, 4)],
            "median_z_features": float(np.median(z[:, 0])),
            "median_z_image": float(np.median(z[:, 1])),
        }
    return out


def tecom_sample(model: Any) -> CellSample:
    man = pl.read_csv(SHARED / "tecom" / "manifest.csv").filter(pl.col("label").is_in(list(CELL_CLASSES)))
    return cell_sample(
        model, [SHARED / "tecom" / p for p in man["path"]], [CELL_CLASSES.index(x) for x in man["label"]]
    )


def raabin_sample(model: Any) -> CellSample:
    blobs = field_crops("test")["wbc"]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, data in enumerate(blobs):
            p = Path(tmp) / f"wbc-{i:05d}.jpg"
            p.write_bytes(data)
            paths.append(p)
        return cell_sample(model, paths, [0] * len(paths))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "domain_eval.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model_dir = resolve_model_path(args.model)
    model = load_artifact(model_dir)
    if model.domain is None:
        sys.exit(f"{model_dir} has no domain profile; run `wbcv profile {model_dir} --cells PBC` first")
    profile = model.domain
    split = read_split(model_dir, read_card(model_dir))
    test = split_sample(model, split, SHARED / "pbc", "test")
    results: dict[str, Any] = {
        "model": model.model_id,
        "threshold": profile.threshold,
        "method": model.card["domain_profile"]["method"],
        "pbc_test (false alarms)": rates(profile, test, True),
        "tecom": rates(profile, tecom_sample(model), True),
        "raabin_wbc_crops (test fields)": rates(profile, raabin_sample(model), False),
    }
    for name, diff in ABNORMAL.items():
        results[f"pbc_test, {name} (false alarms)"] = rates(profile, test, True, differential=diff)
    paths = [SHARED / "pbc" / p for p in split.filter(pl.col("split") == "test")["path"]]
    labels = [CELL_CLASSES.index(x) for x in split.filter(pl.col("split") == "test")["label"]]
    for name, transform in STRESS_SHIFTS.items():
        results[f"pbc_test + {name}"] = rates(profile, cell_sample(model, paths, labels, transform=transform), True)
        print(name, results[f"pbc_test + {name}"]["slides_100"]["rate"], flush=True)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    for name, r in results.items():
        if isinstance(r, dict):
            print(f"{name:45s} {r['slides_100']['rate']:.3f} {r['slides_200']['rate']:.3f} batch {r['batch_score']}")


if __name__ == "__main__":
    main()
