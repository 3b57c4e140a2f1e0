"""Fields per second of the smear-field stage, single process, on this machine.

Decodes (simplejpeg) and analyses (``analyse_field``) the first N Raabin val fields, each method,
``--repeats`` times; reports the median rate and the machine. Decoding is included, writing crops
is not. Besides the wall-clock rate, the rate per CPU-second of this process (``time.process_time``)
is reported: on a machine shared with other work, the wall-clock rate measures the others' load too.

    python benchmarks/bench_fields.py --json benchmarks/results/fields_bench_2core.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import simplejpeg  # noqa: E402

from wbcv.base.software import cpu_name, software_info  # noqa: E402
from wbcv.inference.fields import METHODS, FieldParams, analyse_field  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "raabin_fields"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fields", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = [r for r in csv.DictReader((DATA / "manifest.csv").open()) if r["split"] == "val"][: args.fields]
    blobs = [(DATA / r["path"]).read_bytes() for r in rows]
    out = {"fields": len(blobs), "size": "575x575 JPEG", "load_1min_before": os.getloadavg()[0], "methods": {}}
    for method in METHODS:
        params = FieldParams(method=method)
        rates, cpu_rates = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            for b in blobs:
                analyse_field(simplejpeg.decode_jpeg(b), params)
            rates.append(len(blobs) / (time.perf_counter() - t0))
            cpu_rates.append(len(blobs) / (time.process_time() - c0))
        out["methods"][method] = {
            "fields_per_s_median": statistics.median(rates),
            "repeats": rates,
            "fields_per_cpu_s_median": statistics.median(cpu_rates),
            "cpu_repeats": cpu_rates,
        }
        print(
            f"{method}: {statistics.median(rates):.1f} fields/s (repeats {', '.join(f'{r:.1f}' for r in rates)}); "
            f"{statistics.median(cpu_rates):.1f} fields per CPU-second"
        )
    out["load_1min_after"] = os.getloadavg()[0]
    out["machine"] = {"cpu": cpu_name(), "cores": os.cpu_count(), "software": str(software_info())}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
