"""Throughput of `wbcv infer` against a naive per-image loop of the same model, in one run.

    python benchmarks/bench_infer.py [--cells ../shared/data/pbc] [--slides 100] [--per-slide 200]

What it measures, on one machine and in one process tree:
  * end to end: wall time of the `wbcv infer` command (a subprocess: interpreter start, model load
    and hash check, batch listing, decoding, classification, Parquet and sealing) over a slide set
    of slides x per-slide real cell images copied to a scratch folder;
  * the naive loop: open each file with PIL (full decode), resize, one forward pass per image, of
    the same loaded model, over the first --naive-cells images of the same batch;
  * the model's FLOPs per cell (torch's FlopCounterMode, multiply-add = 2 FLOPs), the machine's
    measured float32 matrix-multiply peak with the same thread count, and the fraction of that
    peak the end-to-end throughput uses;
  * the peak resident memory of the `wbcv infer` process (ru_maxrss of the child) for the full
    batch and for a batch a tenth of its size, to show that memory does not grow with the batch.
Results are printed as a table and written as JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wbcv.base.software import cpu_name  # noqa: E402
from wbcv.fixtures.slidesets import build_slide_set  # noqa: E402
from wbcv.inference.artifact import InputSpec, load_artifact, make_card, save_artifact  # noqa: E402
from wbcv.inference.ensemble import WbcEnsembleNet  # noqa: E402
from wbcv.inference.library import read_cell_library  # noqa: E402
from wbcv.inference.res2net import variant  # noqa: E402


def measured_peak_gflops(threads: int, n: int = 2048, seconds: float = 3.0) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t0, reps = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def flops_per_cell(net: torch.nn.Module, size: int) -> float:
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        net(torch.zeros(1, size, size, 3, dtype=torch.uint8))
    return float(fc.get_total_flops())


def naive_loop(model_dir: Path, files: list[Path], threads: int) -> float:
    """cells/s of: PIL open + full decode + resize + one forward pass per image."""
    torch.set_num_threads(threads)
    model = load_artifact(model_dir)
    size = model.input.size
    t0 = time.perf_counter()
    with torch.inference_mode():
        for f in files:
            im = Image.open(f).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            x = torch.from_numpy(np.array(im)).unsqueeze(0)
            model.net(x)
    return len(files) / (time.perf_counter() - t0)


def run_infer(batch: Path, model_dir: Path, runs: Path, extra: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one `wbcv infer` subprocess."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        "wbcv.cli",
        "infer",
        str(batch),
        "--model",
        str(model_dir),
        "--out",
        str(runs),
        "--no-progress",
        *extra,
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest child so far: start with the small batch so it is exact.
    return wall, max(after, before) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=Path, default=REPO.parent / "shared" / "data" / "pbc")
    ap.add_argument("--slides", type=int, default=100)
    ap.add_argument("--per-slide", type=int, default=200)
    ap.add_argument("--naive-cells", type=int, default=2000)
    ap.add_argument("--model", type=Path, help="artifact to use (default: an untrained one of --variant)")
    ap.add_argument("--variant", default="res2net_wbc_small")
    ap.add_argument("--norm", default="batch", choices=["batch", "group"])
    ap.add_argument("--scratch", type=Path, help="where to build the slide set (default: a temp folder)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--infer-args", default="", help="extra arguments for wbcv infer, e.g. '--workers 1'")
    ap.add_argument("--repeat", type=int, default=3, help="alternate infer and naive runs this often; medians")
    args = ap.parse_args()

    threads = len(os.sched_getaffinity(0))
    scratch = Path(tempfile.mkdtemp(prefix="wbcv-bench-", dir=args.scratch))
    try:
        if args.model:
            model_dir = args.model
        else:
            import dataclasses

            cfg = dataclasses.replace(variant(args.variant), norm=args.norm)
            spec = InputSpec()
            torch.manual_seed(0)
            model_dir = scratch / "model"
            save_artifact(WbcEnsembleNet(cfg, spec.mean, spec.std), make_card("bench-untrained", cfg, spec), model_dir)
        model = load_artifact(model_dir)
        library = read_cell_library(args.cells)
        n_total = args.slides * args.per_slide
        big = build_slide_set(library, scratch / "big", args.slides, args.per_slide, seed=0, with_labels=False)
        small = build_slide_set(
            library, scratch / "small", max(1, args.slides // 10), args.per_slide, seed=1, with_labels=False
        )
        extra = args.infer_args.split()

        wall_small, rss_small = run_infer(small, model_dir, scratch / "runs-small", extra)
        files = sorted(big.glob("*/*.jpg"))[: args.naive_cells]
        # This machine is shared: alternate the two measurements and keep the medians.
        walls, naives, peaks, rss = [], [], [], 0.0
        for i in range(args.repeat):
            wall_i, rss_i = run_infer(big, model_dir, scratch / f"runs-big-{i}", extra)
            walls.append(wall_i)
            rss = max(rss, rss_i)
            naives.append(naive_loop(model_dir, files, threads))
            peaks.append(measured_peak_gflops(threads))
        wall, naive, peak = float(np.median(walls)), float(np.median(naives)), float(np.median(peaks))
        fl = flops_per_cell(model.net, model.input.size)
        e2e = n_total / wall
        result = {
            "machine": {
                "cpu": cpu_name(),
                "cores": threads,
                "python": platform.python_version(),
                "torch": torch.__version__,
                "platform": platform.platform(),
            },
            "model": {
                "id": model.model_id,
                "architecture": model.card["architecture"],
                "input_size": model.input.size,
                "parameters": sum(p.numel() for p in model.net.parameters()),
            },
            "cells": n_total,
            "infer_wall_s": round(wall, 2),
            "infer_cells_per_s": round(e2e, 1),
            "infer_cells_per_s_each_repeat": [round(n_total / w, 1) for w in walls],
            "naive_cells_per_s_each_repeat": [round(x, 1) for x in naives],
            "naive_cells_per_s": round(naive, 1),
            "naive_cells_measured": len(files),
            "speedup_vs_naive": round(e2e / naive, 2),
            "model_mflops_per_cell": round(fl / 1e6, 2),
            "achieved_gflops": round(fl * e2e / 1e9, 2),
            "machine_peak_gflops_sgemm": round(peak, 1),
            "fraction_of_peak": round(fl * e2e / 1e9 / peak, 4),
            "peak_rss_mib": round(rss, 1),
            "peak_rss_mib_tenth_batch": round(rss_small, 1),
            "tenth_batch_cells_per_s": round(len(list(small.glob("*/*.jpg"))) / wall_small, 1),
            "infer_args": extra,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for k, v in result.items():
        print(f"{k:28s} {v}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
