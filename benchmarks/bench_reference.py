"""Time and peak memory of reading a large reference file (and comparing a small run with it).

    python benchmarks/bench_reference.py [--mb 200] [--baseline-mb 2] [--compare] [--json OUT]

Writes a Sysmex XN-style export of about --mb megabytes (rows of the study simulator's
``write_sysmex``, repeated with new sample numbers, so every row is a distinct sample) and one of
--baseline-mb as the baseline measured in the same run, then reads each in a fresh process
(``wbcv.validation.reference.read_reference``; with --compare also ``compare`` against a 120-sample
counts table whose ids are in the file) and reports wall time and the peak resident memory of that
process (``ru_maxrss``). ``--code DIR`` measures another source tree's wbcv (e.g. main, for a before/after
comparison). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD = r"""
import resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
from wbcv.validation.reference import read_reference
ref = read_reference(Path(sys.argv[1]))
t_read = time.perf_counter() - t0
rows = ref.table.height
t_compare = None
if sys.argv[2] == "compare":
    import polars as pl
    from wbcv.fixtures.classifiers import counts_table
    from wbcv.validation.compare import compare
    from wbcv.validation.protocol import load_protocol
    ids = ref.table["sample_id"].head(120).to_list()
    counts = counts_table([{"sample_id": s, "neutrophil": 120, "lymphocyte": 60, "monocyte": 14, "eosinophil": 5,
                            "basophil": 1} for s in ids], model_id="m")
    p = Path(sys.argv[3])
    p.write_text("protocol: {id: P, version: '1'}\nmeasurands: {NEUT#: {allowable_error_pct: 10}, "
                 "LYMPH%: {allowable_error_pct: 10}}\n")
    t1 = time.perf_counter()
    result = compare(counts, ref, load_protocol(p))
    t_compare = time.perf_counter() - t1
print(rows, t_read, t_compare, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_reference(path: Path, megabytes: float) -> int:
    """A Sysmex-style export of about ``megabytes`` MB; returns the number of sample rows."""
    from wbcv.fixtures.simulator import StudyConfig, draw_samples, write_sysmex

    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "XN.csv"
        write_sysmex(small, draw_samples(500, 200, seed=3), StudyConfig(), seed=3)
        lines = small.read_text().splitlines()
    preamble, header, rows = lines[0], lines[1], [r for r in lines[2:] if ",SIM" in r]
    sample_i = header.split(",").index("Sample No.")
    target = int(megabytes * 1e6)
    n = 0
    with open(path, "w", newline="") as f:
        f.write(preamble + "\n" + header + "\n")
        w = csv.writer(f, lineterminator="\n")
        while f.tell() < target:
            for r in csv.reader(io.StringIO("\n".join(rows))):
                r[sample_i] = f"B{n:08d}"
                w.writerow(r)
                n += 1
    return n


def measure(path: Path, compare: bool, code: Path) -> dict[str, float | int | None]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(path), "compare" if compare else "read", str(Path(tmp) / "p.yaml")],
            capture_output=True,
            text=True,
            cwd=code,
            check=True,
        ).stdout.split()
        wall = time.perf_counter() - t0
    rows, t_read, t_compare, maxrss_kib = out
    return {
        "file_mb": round(path.stat().st_size / 1e6, 1),
        "rows": int(rows),
        "read_s": round(float(t_read), 2),
        "compare_s": None if t_compare == "None" else round(float(t_compare), 2),
        "process_s": round(wall, 2),
        "peak_rss_mib": round(int(maxrss_kib) / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=200.0)
    ap.add_argument("--baseline-mb", type=float, default=2.0)
    ap.add_argument("--compare", action="store_true", help="also compare a 120-sample run with the file")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--code", type=Path, default=REPO, help="source tree whose wbcv is measured")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        big, small = Path(tmp) / "big.csv", Path(tmp) / "small.csv"
        write_reference(big, args.mb)
        write_reference(small, args.baseline_mb)
        result = {
            "machine": f"{platform.processor() or platform.machine()}, Python {platform.python_version()}",
            "code": str(args.code),
            "baseline": measure(small, args.compare, args.code),
            "large": measure(big, args.compare, args.code),
        }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
