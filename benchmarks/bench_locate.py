"""Time per cell of the cell locator, crop_to_cell and the stain normaliser, against decoding.

    python benchmarks/bench_locate.py [--cells 512] [--batch 64] [--repeats 5]
                                      [--json benchmarks/results/locate_bench.json]

All on one thread (numpy and scipy.ndimage here do not use more), on PBC images, in one process:

* **baseline**: ``decode_cell`` of the same JPEG bytes to 64 px (what the pipeline already does for
  every cell), so the stages' cost can be read as a ratio of it;
* **locate, full image**: ``locate_batch`` on 363x360 decoded images (stride 5, 72x72 working);
* **locate, working resolution**: on the images already reduced to 73x72 (what a DCT-scaled JPEG
  decode gives for free), i.e. the locator's own cost;
* **locate, batch of 1**: the per-image overhead when images arrive one at a time;
* **crop_to_cell** to 64 px (Pillow bilinear) and **normalise_stain** of 64 px crops (batch);
* **end to end**: locate (full image) + crop 64 + normalise, per cell.

Each figure is the best of ``--repeats`` passes over ``--cells`` images (best-of: the machine is
shared; the median is reported too), in wall time and in this process's CPU time. The budget
set in issue 14 is 0.3 ms per cell for locating at the working resolution.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wbcv.base.software import cpu_name  # noqa: E402
from wbcv.inference.decode import decode_cell  # noqa: E402
from wbcv.inference.locate import crop_to_cell, locate_batch  # noqa: E402
from wbcv.inference.stain import disc_mask, normalise_stain  # noqa: E402


def timed(fn: Callable[[], object], n_cells: int, repeats: int) -> dict[str, float]:
    """Wall time and this process's CPU time per cell (the CPU time is what a busy machine inflates least)."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t0) / n_cells * 1e3)
        cpu.append((time.process_time() - c0) / n_cells * 1e3)
    return {
        "best_ms_per_cell": round(min(wall), 4),
        "median_ms_per_cell": round(float(np.median(wall)), 4),
        "best_cpu_ms_per_cell": round(min(cpu), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "pbc")
    ap.add_argument("--cells", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "locate_bench.json")
    args = ap.parse_args()

    rows = list(csv.DictReader((args.data / "manifest.csv").open()))
    rng = np.random.default_rng(0)
    pick = sorted(rng.choice(len(rows), args.cells, replace=False))
    blobs = [(args.data / rows[i]["path"]).read_bytes() for i in pick]
    full = []
    for b in blobs:
        with Image.open(io.BytesIO(b)) as im:
            full.append(np.asarray(im.convert("RGB")))
    shape = full[0].shape
    same = np.stack([im for im in full if im.shape == shape])
    small = np.ascontiguousarray(same[:, ::5, ::5])
    n, bs = len(same), args.batch
    load_start = os.getloadavg()

    def in_batches(data: np.ndarray, size: int) -> Callable[[], object]:
        return lambda: [locate_batch(data[s : s + size]) for s in range(0, len(data), size)]

    located = [r for s in range(0, n, bs) for r in locate_batch(same[s : s + bs])]
    crops = np.stack([crop_to_cell(im, loc, 64).pixels for im, loc in zip(same, located, strict=True) if loc.found])
    disc = disc_mask(64, 0.7)

    def end_to_end() -> None:
        for s in range(0, n, bs):
            part = same[s : s + bs]
            locs = locate_batch(part)
            c = np.stack([crop_to_cell(im, loc, 64).pixels for im, loc in zip(part, locs, strict=True) if loc.found])
            normalise_stain(c, disc)

    figures = {
        "baseline_decode_cell_64px": timed(lambda: [decode_cell(b, 64) for b in blobs], len(blobs), args.repeats),
        f"locate_full_363x360_batch{bs}": timed(in_batches(same, bs), n, args.repeats),
        f"locate_working_73x72_batch{bs}": timed(in_batches(small, bs), n, args.repeats),
        "locate_working_73x72_batch1": timed(in_batches(small, 1), n, args.repeats),
        "crop_to_cell_64px": timed(
            lambda: [crop_to_cell(im, loc, 64) for im, loc in zip(same, located, strict=True)], n, args.repeats
        ),
        f"normalise_stain_64px_batch{bs}": timed(
            lambda: [normalise_stain(crops[s : s + bs], disc) for s in range(0, len(crops), bs)],
            len(crops),
            args.repeats,
        ),
        "end_to_end_locate_crop_normalise": timed(end_to_end, n, args.repeats),
    }
    base = figures["baseline_decode_cell_64px"]["best_ms_per_cell"]
    for v in figures.values():
        v["ratio_to_decode"] = round(v["best_ms_per_cell"] / base, 3)
    result = {
        "machine": {
            "cpu": cpu_name(),
            "logical_cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "threads": 1,
            "load_average_1min_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        },
        "cells": n,
        "found": sum(loc.found for loc in located),
        "figures": figures,
    }
    print(f"{'stage':40s} {'best ms/cell':>12s} {'median':>8s} {'best CPU':>9s} {'x decode':>9s}")
    for k, v in figures.items():
        print(
            f"{k:40s} {v['best_ms_per_cell']:12.3f} {v['median_ms_per_cell']:8.3f} "
            f"{v['best_cpu_ms_per_cell']:9.3f} {v['ratio_to_decode']:9.2f}"
        )
    print(json.dumps(result["machine"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
