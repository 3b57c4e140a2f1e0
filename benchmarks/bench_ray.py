"""Overhead of the Ray engine on one machine: local engine vs a local Ray instance, same batch, one run.

    python benchmarks/bench_ray.py [--cells ../shared/data/pbc] [--slides 20] [--per-slide 200] [--repeat 3]

What it measures, in one process on one machine (the machine is described in the output):
  * local: ``run_inference`` (threads, ``--workers`` = cores) over slides x per-slide real cell
    images copied to a scratch folder, with the bundled default model (or ``--model``);
  * ray, warm: ``run_inference_ray`` on a Ray instance started beforehand in this process
    (``ray.init`` with all cores): Ray Data planning, actor start and model shipping, decode
    tasks, classification, collection on the driver, Parquet and sealing;
  * ray, cold: the same once more with no Ray running, so that the engine starts and stops its
    own local instance, as ``wbcv infer --engine ray`` without --address does.
The local and warm-Ray runs alternate ``--repeat`` times (the machine is shared); medians are
reported, with each repeat. Every Ray run's predictions are checked byte-for-byte against the
local engine's. Results are printed and written as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wbcv.base.records import InferenceRecord  # noqa: E402
from wbcv.base.software import cpu_name  # noqa: E402
from wbcv.base.tables import PREDICTIONS_FILE  # noqa: E402
from wbcv.fixtures.slidesets import build_slide_set  # noqa: E402
from wbcv.inference.artifact import load_artifact  # noqa: E402
from wbcv.inference.library import read_cell_library  # noqa: E402
from wbcv.inference.ray_engine import RayOptions, import_ray, run_inference_ray  # noqa: E402
from wbcv.inference.runner import InferenceParams, run_inference  # noqa: E402
from wbcv.inference.slideset import read_slide_set  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=Path, default=REPO.parent / "shared" / "data" / "pbc")
    ap.add_argument("--slides", type=int, default=20)
    ap.add_argument("--per-slide", type=int, default=200)
    ap.add_argument("--model", help="artifact directory or bundled name (default: the bundled default)")
    ap.add_argument("--actors", type=int, help="Ray classifier actors (default: the engine's, half the CPUs)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scratch", type=Path, help="where to build the slide set (default: a temp folder)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    ray = import_ray()
    cores = len(os.sched_getaffinity(0))
    load_start = os.getloadavg()[0]  # the machine is shared: say how busy it was
    scratch = Path(tempfile.mkdtemp(prefix="wbcv-bench-ray-", dir=args.scratch))
    try:
        model = load_artifact(args.model)
        library = read_cell_library(args.cells)
        batch = build_slide_set(library, scratch / "batch", args.slides, args.per_slide, seed=0, with_labels=False)
        slides = read_slide_set(batch)
        n_cells = slides.n_files
        params = InferenceParams()
        options = RayOptions(actors=args.actors)

        def timed(fn, runs: Path) -> tuple[float, bytes, InferenceRecord]:
            t0 = time.perf_counter()
            result = fn(slides, model, runs, params, progress=False)
            wall = time.perf_counter() - t0
            return wall, (result.run_dir / PREDICTIONS_FILE).read_bytes(), result.record

        def ray_run(slides, model, runs, params, progress):
            return run_inference_ray(slides, model, runs, params, options, progress=progress)

        # cold first: nothing of Ray is running or cached in this process yet
        cold, pred_cold, _ = timed(ray_run, scratch / "ray-cold")
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
        try:
            locals_, rays, engine = [], [], {}
            for i in range(args.repeat):
                wall, reference, _ = timed(run_inference, scratch / f"local-{i}")
                locals_.append(wall)
                wall, pred, record = timed(ray_run, scratch / f"ray-{i}")
                rays.append(wall)
                engine = record.engine
                if pred != reference or pred_cold != reference:
                    raise SystemExit("the Ray engine's predictions differ from the local engine's")
        finally:
            ray.shutdown()
        local, warm = float(np.median(locals_)), float(np.median(rays))
        result = {
            "machine": {
                "cpu": cpu_name(),
                "cores": cores,
                "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "ray": ray.__version__,
                "platform": platform.platform(),
                "load_average_1min_at_start_and_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            },
            "model": model.model_id,
            "cells": n_cells,
            "params": {"chunk_size": params.chunk_size, "workers": params.workers},
            "ray_engine": {k: engine.get(k) for k in ("actors", "cluster_cpus", "gpus_per_actor")},
            "local_wall_s": round(local, 2),
            "local_cells_per_s": round(n_cells / local, 1),
            "local_cells_per_s_each_repeat": [round(n_cells / w, 1) for w in locals_],
            "ray_warm_wall_s": round(warm, 2),
            "ray_warm_cells_per_s": round(n_cells / warm, 1),
            "ray_warm_cells_per_s_each_repeat": [round(n_cells / w, 1) for w in rays],
            "ray_cold_wall_s": round(cold, 2),
            "ray_cold_cells_per_s": round(n_cells / cold, 1),
            "overhead_ratio_warm": round(warm / local, 2),
            "overhead_ratio_cold": round(cold / local, 2),
            "predictions_identical": True,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for k, v in result.items():
        print(f"{k:34s} {v}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
