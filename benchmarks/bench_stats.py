"""Time and peak memory of one measurand's comparison statistics at 1,000 / 10,000 / 100,000 samples.

    python benchmarks/bench_stats.py [--sizes 1000 10000 100000] [--baseline-sizes 1000 6000]
                                     [--baseline-rev main] [--json benchmarks/results/stats_2core.json]

What is measured: ``wbcv.validation.verdict.decide`` on a comparison table of one measurand, i.e.
everything the verdict computes for it: coverage with its Clopper–Pearson interval, the coverage
error with its bootstrap interval (2,000 resamples), Bland–Altman (absolute and percent),
Passing–Bablok with its CI and the CUSUM test, Deming and weighted Deming with jackknife CIs, OLS,
Lin's CCC, Pearson, Spearman, the bias at two decision levels from each fit, sample-size planning,
and the conversion of all of it to JSON values. Time: wall clock of ``decide``, the fastest of
``--repeats`` runs in one interpreter (the machine may be shared). Memory: the peak
resident set (``ru_maxrss``) of a fresh interpreter that ran nothing else (imports and data
included: that is what a 2 GiB machine must hold), the resident set before ``decide``, and in a
second fresh interpreter the peak of ``tracemalloc`` during ``decide`` (allocations of Python and
NumPy only). Then, in the first interpreter, each statistic alone, to show where the time goes.

Every size runs in its own subprocess. In the same run, as baselines: the same code with the
quadratic algorithms forced (``regression.LARGE_N`` raised above n: Passing–Bablok sorting all
n(n − 1)/2 slopes, weighted Deming refitting n leave-one-out subsets), and the code of
``--baseline-rev`` (default ``main``, extracted with ``git archive``: it fitted Passing–Bablok and
Deming twice, refitted Deming n times, and had no weighted Deming) at ``--baseline-sizes``.

Data: synthetic NEUT# values like an analyzer study: reference = log-normal around 4 (10^3/uL),
rounded to 0.01 as a Sysmex XN reports it (so many ties), test = reference × the counting noise of
200 cells at a neutrophil fraction of 0.6 (binomial), 1 % proportional bias; protocol ±10 % or
±0.2 absolute, confidence 0.95, decision levels 1.5 and 7.0. The sampling-floor column (an input
of the verdict, computed per sample by the comparison) is filled with a constant.
Results are printed and written as JSON (--json). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024


def make_table(n: int, seed: int, path: Path) -> None:
    """The comparison table of one measurand (the columns ``decide`` reads), written as Parquet."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    reference = np.maximum(np.round(rng.lognormal(np.log(4.0), 0.45, n), 2), 0.01)
    cells, fraction = 200, 0.6
    counted = rng.binomial(cells, fraction, n) / cells
    predicted = reference * (counted / fraction) * 1.01
    error = 100 * (predicted - reference) / reference
    limit = np.maximum(10.0, 100 * 0.2 / reference)  # max(L, 100 A / reference), the effective limit
    pl.DataFrame(
        {
            "sample_id": [f"S{i:06d}" for i in range(n)],
            "measurand": ["NEUT#"] * n,
            "reference": reference,
            "predicted": predicted,
            "error_pct": error,
            "limit_pct": limit,
            "within_limit": np.abs(error) <= limit + 1e-12,
            "counting_coverage": np.full(n, 0.9),
        }
    ).write_parquet(path)


# ---------------------------------------------------------------------------------------------
# the child: one size, one code tree, a fresh interpreter
# ---------------------------------------------------------------------------------------------


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def child(table: Path, quadratic: bool, traced: bool, breakdown: bool, repeats: int) -> dict[str, Any]:
    import polars as pl

    from wbcv.validation import regression, verdict
    from wbcv.validation.protocol import MeasurandRule, load_protocol

    rows = pl.read_parquet(table)
    n = rows.height
    if quadratic:
        regression.LARGE_N = n + 1  # type: ignore[misc]
    protocol = dataclasses.replace(
        load_protocol(Path("fixtures") / "samples" / "protocol.yaml"),  # the code tree's sample protocol
        measurands={"NEUT#": MeasurandRule(10.0, 0.2)},
        decision_levels={"NEUT#": (1.5, 7.0)},
        required_coverage=0.95,
        confidence=0.95,
    )
    out: dict[str, Any] = {"n": n, "rss_before_mib": round(_rss_mib(), 1)}
    if traced:
        tracemalloc.start()
    each = []
    for _ in range(1 if traced else repeats):
        t0 = time.perf_counter()
        verdicts, stats = verdict.decide(rows, protocol)
        each.append(time.perf_counter() - t0)
    if traced:
        out["tracemalloc_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / MIB, 1)
        tracemalloc.stop()
        return out
    out["seconds"] = round(min(each), 3)
    out["seconds_each"] = [round(t, 3) for t in each]
    out["rss_peak_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    st = stats["NEUT#"]
    out["algorithms"] = {
        k: st[k].get("algorithm", "exact (no choice)")
        for k in ("passing_bablok", "deming", "weighted_deming")
        if k in st and "not_computed" not in st[k]
    }
    out["not_computed"] = sorted(k for k, v in st.items() if isinstance(v, dict) and "not_computed" in v)
    out["passing_bablok_slope_ci"] = st["passing_bablok"].get("slope_ci")
    out["verdict"] = {"coverage": verdicts[0].coverage, "passed": verdicts[0].passed}
    if breakdown:
        out["breakdown_seconds"] = _breakdown(rows, protocol)
    return out


def _breakdown(rows: Any, protocol: Any) -> dict[str, float]:
    """Each statistic of ``measurand_statistics`` alone (the same calls, timed one by one)."""
    from wbcv.validation import agreement, regression, sampling, verdict

    ref, pred = rows["reference"].to_numpy(), rows["predicted"].to_numpy()
    errors = rows["error_pct"].to_numpy()
    levels = protocol.decision_levels["NEUT#"]
    calls: dict[str, Callable[[], Any]] = {
        "coverage_clopper_pearson": lambda: agreement.clopper_pearson(int(rows["within_limit"].sum()), rows.height),
        "coverage_error_bootstrap": lambda: agreement.coverage_error(errors, 0.95),
        "bland_altman_absolute": lambda: agreement.bland_altman(pred, ref, "absolute"),
        "bland_altman_percent": lambda: agreement.bland_altman(pred, ref, "percent"),
        "passing_bablok_with_ci_and_cusum": lambda: regression.passing_bablok(ref, pred),
        "deming_with_jackknife": lambda: regression.deming(ref, pred),
        "weighted_deming_with_jackknife": lambda: regression.weighted_deming(ref, pred),
        "ols": lambda: regression.ols(ref, pred),
        "lins_ccc": lambda: agreement.lins_ccc(ref, pred),
        "pearson": lambda: agreement.pearson(ref, pred),
        "spearman": lambda: agreement.spearman(ref, pred),
        "samples_needed": lambda: sampling.samples_needed(expected_coverage=0.97, required_coverage=0.95),
    }
    out: dict[str, float] = {}
    fits: dict[str, Any] = {}
    for name, call in calls.items():
        t0 = time.perf_counter()
        fits[name] = call()
        out[name] = round(time.perf_counter() - t0, 4)
    t0 = time.perf_counter()
    for name in ("passing_bablok_with_ci_and_cusum", "deming_with_jackknife", "weighted_deming_with_jackknife"):
        fits[name].bias_at(levels)
    out["bias_at_decision_levels"] = round(time.perf_counter() - t0, 4)
    t0 = time.perf_counter()
    json.dumps(verdict.to_jsonable(fits))
    out["to_json"] = round(time.perf_counter() - t0, 4)
    return out


# ---------------------------------------------------------------------------------------------
# the parent
# ---------------------------------------------------------------------------------------------


def run_child(tree: Path, table: Path, *flags: str) -> dict[str, Any]:
    """One fresh interpreter importing wbcv from ``tree``; its last output line is the result."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(table), *flags]
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(tree: Path, table: Path, repeats: int, quadratic: bool = False, breakdown: bool = False) -> dict[str, Any]:
    flags = ["--repeats", str(repeats), *(["--quadratic"] if quadratic else [])]
    result = run_child(tree, table, *flags, *(["--breakdown"] if breakdown else []))
    if "error" not in result:
        result["tracemalloc_peak_mib"] = run_child(tree, table, *flags, "--traced").get("tracemalloc_peak_mib")
    return result


def extract(rev: str, into: Path) -> Path:
    """The repository at ``rev`` as plain files (``git archive``), to import the baseline from."""
    archive = into / "baseline.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(REPO), "archive", rev], stdout=f, check=True)
    tree = into / "baseline"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--baseline-sizes", type=int, nargs="*", default=[1_000, 6_000])
    ap.add_argument("--baseline-rev", default="main", help="git revision of the baseline code ('' for none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="runs of decide per size; the fastest is reported")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--quadratic", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.quadratic, args.traced, args.breakdown, args.repeats)))
        return

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    sys.path.insert(0, str(REPO))
    from wbcv.base.software import cpu_name

    cpu = cpu_name()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    results: dict[str, Any] = {
        "machine": {
            "cpu": cpu,
            "cores": len(os.sched_getaffinity(0)),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
            "python": platform.python_version(),
            "numpy": version("numpy"),
            "scipy": version("scipy"),
            "polars": version("polars"),
            "platform": platform.platform(),
        },
        "commit": commit.strip(),
        "measured": "verdict.decide on one measurand; seconds = wall clock; rss_peak_mib = ru_maxrss of a fresh "
        "interpreter (imports and data included); tracemalloc_peak_mib = peak traced allocations during decide",
        "target": "100,000 samples in under 30 s and under 2 GiB on 2 cores",
        "runs": {},
        "quadratic_algorithms": {},
        "baseline": {"rev": args.baseline_rev, "runs": {}},
    }
    with tempfile.TemporaryDirectory(prefix="bench-stats-") as tmp:
        tables: dict[int, Path] = {}
        for n in sorted({*args.sizes, *args.baseline_sizes}):
            tables[n] = Path(tmp) / f"table-{n}.parquet"
            make_table(n, args.seed, tables[n])
        for n in sorted({*args.sizes, *args.baseline_sizes}):
            r = measure(REPO, tables[n], args.repeats, breakdown=True)
            results["runs"][str(n)] = r
            print(
                f"{n:>7} samples: {r.get('seconds')} s, peak RSS {r.get('rss_peak_mib')} MiB, "
                f"traced peak {r.get('tracemalloc_peak_mib')} MiB  {r.get('error', '')}",
                flush=True,
            )
        for n in args.baseline_sizes:
            r = measure(REPO, tables[n], args.repeats, quadratic=True)
            results["quadratic_algorithms"][str(n)] = r
            print(
                f"{n:>7} samples, quadratic algorithms forced: {r.get('seconds')} s, "
                f"peak RSS {r.get('rss_peak_mib')} MiB",
                flush=True,
            )
        if args.baseline_rev:
            tree = extract(args.baseline_rev, Path(tmp))
            for n in args.baseline_sizes:
                r = measure(tree, tables[n], args.repeats)
                results["baseline"]["runs"][str(n)] = r
                print(
                    f"{n:>7} samples, {args.baseline_rev}: {r.get('seconds')} s, peak RSS {r.get('rss_peak_mib')} MiB",
                    flush=True,
                )
    ratios: dict[str, Any] = {}
    for n in args.baseline_sizes:
        new = results["runs"][str(n)]
        for key, base in (("quadratic", results["quadratic_algorithms"]), ("baseline", results["baseline"]["runs"])):
            b = base.get(str(n))
            if b and new and "seconds" in b and "seconds" in new:
                ratios[f"{key}_over_new_at_{n}"] = {
                    "seconds": round(b["seconds"] / new["seconds"], 2),
                    "rss_peak": round(b["rss_peak_mib"] / new["rss_peak_mib"], 2),
                }
    results["ratios"] = ratios
    print(json.dumps(ratios, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
