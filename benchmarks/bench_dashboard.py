"""Speed of the review dashboard in a real browser (Debian's Chromium driven by Playwright).

    python benchmarks/bench_dashboard.py [--samples 10000] [--baseline-samples 200] [--repeats 7]

For a comparison run of --samples samples (and, as the baseline measured in the same run, one of
--baseline-samples samples), each served by `wbcv dashboard` in its own process:

  * first page load: from navigation start in a fresh browser context (empty cache) until the
    verification plot has drawn every point (timed in the page: the animation frame after the one
    in which its points and WebGL canvas are in place); the first load after the server starts is
    reported apart, since it also reads the run from disk; with it the longest main-thread task of
    the load (drawing the plot) and the same measurement for a reload in a browser that has the
    scripts cached. As the baseline, measured
    alternately with it in the same browser, the same for a page holding nothing but the
    dashboard's plotly.js bundle and the same figure: what drawing the plot costs without Dash
    (most of it is WebGL by software rendering on a machine without a GPU). The benchmark waits
    for an idle machine after starting the browser (its own start-up takes about a CPU-second);
  * callback to plot: from the click on another measurand (which fires the callback) until the
    verification plot of that measurand has drawn, i.e. request, server-side figure building,
    transfer, JSON parsing and WebGL drawing; alternating between two measurands; once as the
    page opens (above 2,000 samples without the sampling-floor band) and once with the band.

The runs are synthetic but made by the real pipeline's last stage: a simulated study's slide counts
(``wbcv.fixtures.simulator.draw_samples``, a classifier confusing 4 % of monocytes for lymphocytes) are
sealed as an inference run and compared with `wbcv.validation.study.run_comparison` (Sysmex-format
reference, a two-measurand protocol). No cells are classified, so the gallery is empty.
Results are printed and written as JSON (--json). Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import polars as pl  # noqa: E402
from playwright.sync_api import Page, sync_playwright  # noqa: E402

from wbcv.base.records import BatchRef, InferenceRecord, InferenceSummary, ModelRef  # noqa: E402
from wbcv.base.runstore import WorkingRun  # noqa: E402
from wbcv.base.software import cpu_name, software_info  # noqa: E402
from wbcv.base.tables import COUNTS_FILE, PREDICTION_SCHEMA, PREDICTIONS_FILE  # noqa: E402
from wbcv.fixtures.classifiers import confused_counts  # noqa: E402
from wbcv.fixtures.simulator import StudyConfig, draw_samples, write_sysmex  # noqa: E402
from wbcv.validation.pdf import CHROMIUM_ARGS, find_chromium  # noqa: E402
from wbcv.validation.study import run_comparison  # noqa: E402

PROTOCOL = """protocol: {id: BENCH, version: "1"}
study: {id: BENCH-STUDY}
count_mode: relative
measurands:
  NEUT#: {allowable_error_pct: 10, absolute_limit: 0.2}
  LYMPH#: {allowable_error_pct: 10, absolute_limit: 0.2}
acceptance: {required_coverage: 0.95, basis: point_estimate, confidence: 0.95}
exclusions: {flags: any, marks: ["*", "@"], min_cells: 100}
rerun_rule: last
"""
# Resolves with the milliseconds from the click to the first frame after the plot of `m` is drawn.
SWITCH_AND_TIME = """async (m) => {
  const gd = document.querySelector('#verification .js-plotly-plot');
  return await new Promise(resolve => {
    let t0;
    const done = () => {
      if (!gd.layout.title.text.startsWith(m + ':')) return;
      gd.removeListener('plotly_afterplot', done);
      requestAnimationFrame(() => resolve(performance.now() - t0));
    };
    gd.on('plotly_afterplot', done);
    t0 = performance.now();
    document.querySelector(`#measurand input[value="${m}"]`).click();
  });
}"""
# The same for a click on the sampling-floor toggle; resolves when the band is drawn (or gone).
TOGGLE_BAND_AND_TIME = """async (wantBand) => {
  const gd = document.querySelector('#verification .js-plotly-plot');
  const hasBand = () => gd._fullData.some(t => t.name.startsWith('sampling floor'));
  return await new Promise(resolve => {
    let t0;
    const done = () => {
      if (hasBand() !== wantBand) return;
      gd.removeListener('plotly_afterplot', done);
      requestAnimationFrame(() => resolve(performance.now() - t0));
    };
    gd.on('plotly_afterplot', done);
    t0 = performance.now();
    document.querySelector('#options input[value="floor"]').click();
  });
}"""
PLOT_DRAWN = """(n) => {
  const gd = document.querySelector('#verification .js-plotly-plot');
  const t = gd && gd._fullData && gd._fullData.find(t => t.name === 'samples');
  return !!(t && t.x.length === n && gd._fullLayout && gd.querySelector('canvas'));
}"""
# Checked at every animation frame; once the plot is drawn, the page notes the time of the next
# frame (the one that shows it), so the driver's round trip is not part of the figure.
NOTE_WHEN_DRAWN = (
    """(n) => {
  if (window.__drawnAt !== undefined) return window.__drawnAt !== null;
  if (!("""
    + PLOT_DRAWN
    + """)(n)) return false;
  window.__drawnAt = null;
  requestAnimationFrame(() => { window.__drawnAt = performance.now(); });
  return false;
}"""
)


def make_run(root: Path, n_samples: int, seed: int = 11) -> Path:
    """A sealed inference run (counts only) and its comparison run in root/runs."""
    samples = draw_samples(n_samples, 200, seed=seed)
    write_sysmex(root / "XN.csv", samples, StudyConfig(), seed=seed)
    (root / "protocol.yaml").write_text(PROTOCOL)
    counts = confused_counts(samples, {"monocyte": {"lymphocyte": 0.04}}, seed=seed)
    runs = root / "runs"
    (root / "batch").mkdir()
    work, _ = WorkingRun.open(runs, f"bench{n_samples:08d}" + "0" * 8, {"run_id": f"bench-infer-{n_samples}"})
    with work.locked():
        inference = work.seal(
            runs,
            f"bench-infer-{n_samples}",
            {COUNTS_FILE: counts, PREDICTIONS_FILE: pl.DataFrame(schema=PREDICTION_SCHEMA)},
            InferenceRecord(
                created_utc="2026-01-01T00:00:00+00:00",
                finished_utc="2026-01-01T00:00:00+00:00",
                batch=BatchRef(
                    path=(root / "batch").resolve(),
                    batch_id=None,
                    manifest="manifest.csv",
                    cell_labels=None,
                    inputs_sha256="0" * 64,
                    n_samples=n_samples,
                    n_files=0,
                    unlisted_dirs=(),
                ),
                model=ModelRef(
                    id="bench-confused-classifier", name="confused", sha256="0" * 64, path=root, input_size=0
                ),
                parameters={},
                software=software_info(),
                summary=InferenceSummary(
                    n_samples=n_samples,
                    n_cells=0,
                    n_unclassified=0,
                    n_skipped_cells=0,
                    n_unlisted_folders=0,
                    resumed=False,
                    wall_seconds_last_session=0.0,
                ),
            ),
        )
    run_comparison(inference, root / "XN.csv", root / "protocol.yaml", runs)
    return runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_dashboard(runs: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "WBCV_DASHBOARD_AUTH"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wbcv.cli", "dashboard", "--runs", str(runs), "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if "serving" not in line:
        proc.kill()
        raise SystemExit(f"the dashboard did not start: {line!r}")
    return proc, f"http://127.0.0.1:{port}/"


# Long main-thread tasks during a load; the longest is the evaluation of plotly.min.js (4.8 MB).
LONG_TASKS = """window.__longTasks = [];
new PerformanceObserver(l => l.getEntries().forEach(e => window.__longTasks.push(e.duration)))
  .observe({type: 'longtask', buffered: true});"""


def page_load(
    page: Page, url: str, n_points: int, reload: bool = False, long_tasks: bool = True
) -> tuple[float, float]:
    """(ms from navigation start to the plot drawn, ms of the longest main-thread task meanwhile)."""
    if reload:
        page.reload(wait_until="commit")
    else:
        page.goto(url, wait_until="commit")
    page.wait_for_function(NOTE_WHEN_DRAWN, arg=n_points, polling="raf", timeout=120_000)
    drawn = page.evaluate("() => window.__drawnAt")
    return drawn, page.evaluate("() => Math.max(0, ...window.__longTasks)") if long_tasks else 0.0


def wait_until_quiet(max_s: float = 20.0, busy_below: float = 0.15) -> float:
    """Wait until the machine's CPUs are mostly idle; the seconds waited.

    Chromium spends about a CPU-second on its own start-up (its UI renderer) after the first page
    opens; on two cores that would slow the first loads measured, so the benchmark waits it out.
    """

    def idle_and_total() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
        return ticks[3] + ticks[4], sum(ticks)

    t0 = time.monotonic()
    if not Path("/proc/stat").is_file():
        time.sleep(3)
        return 3.0
    while time.monotonic() - t0 < max_s:
        i0, s0 = idle_and_total()
        time.sleep(0.5)
        i1, s1 = idle_and_total()
        if 1 - (i1 - i0) / max(1, s1 - s0) < busy_below:
            break
    return round(time.monotonic() - t0, 1)


# The baseline: a page with nothing but the dashboard's plotly.js bundle drawing the same
# verification figure (taken from the dashboard's layout): what the first load costs without Dash.
PLOT_ONLY_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="stylesheet" href="style.css">
<link rel="stylesheet" href="plotly.css"><style id="plotly.js-style-global" class="no-inline-styles"></style></head>
<body><div class="page"><div id="verification"><div id="plot" style="height: 520px"></div></div></div>
<script src="plotly.js"></script><script src="wbcv-plot-config.js"></script>
<script>fetch('figure.json').then(r => r.json())
  .then(f => Plotly.newPlot('plot', f.data, f.layout, {displaylogo: false}));</script>
</body></html>"""


def find_figure(node: Any, graph_id: str) -> dict[str, Any] | None:
    """The figure of the dcc.Graph ``graph_id`` in a Dash layout (JSON)."""
    if isinstance(node, dict):
        props = node.get("props", {})
        if isinstance(props, dict) and props.get("id") == graph_id:
            return props.get("figure")
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = find_figure(child, graph_id)
        if found is not None:
            return found
    return None


@contextmanager
def plot_only_site(dashboard_url: str) -> Iterator[str]:
    """Serve PLOT_ONLY_PAGE with the dashboard's plotly.js bundle and first verification figure."""
    with urllib.request.urlopen(dashboard_url + "_dash-layout") as r:
        figure = find_figure(json.load(r), "verification")
    if not figure:
        raise SystemExit("the dashboard's layout has no verification figure")
    with tempfile.TemporaryDirectory(prefix="wbcv-bench-plot-only-") as site:
        (Path(site) / "index.html").write_text(PLOT_ONLY_PAGE)
        (Path(site) / "figure.json").write_text(json.dumps(figure))
        assets = REPO / "dashboards" / "assets"
        shutil.copy(assets / "plotly-wbcv.min.js", Path(site) / "plotly.js")
        shutil.copy(assets / "style.css", Path(site) / "style.css")  # the same box for the plot
        # and the same plotly.js settings as the dashboard's
        for name in ("plotly.css", "wbcv-plot-config.js"):
            shutil.copy(assets / name, Path(site) / name)

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=site))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
        finally:
            server.shutdown()


def measure(runs: Path, n_points: int, repeats: int) -> dict[str, Any]:
    proc, url = start_dashboard(runs)
    try:
        with sync_playwright() as pw, plot_only_site(url) as plot_only_url:
            browser = pw.chromium.launch(executable_path=find_chromium(), args=list(CHROMIUM_ARGS))
            warmup = browser.new_context()
            warmup.new_page().goto("about:blank")
            waited = wait_until_quiet()
            warmup.close()
            loads: list[float] = []
            longest: list[float] = []
            plot_only: list[float] = []
            for i in range(repeats + 1):
                if i:  # the baseline alternates with the dashboard, so both see the same machine
                    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                    plot_only.append(page_load(ctx.new_page(), plot_only_url, n_points, long_tasks=False)[0])
                    ctx.close()
                ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
                ctx.add_init_script(LONG_TASKS)
                drawn, long_task = page_load(ctx.new_page(), url, n_points)
                loads.append(drawn)
                longest.append(long_task)
                ctx.close()
            ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
            ctx.add_init_script(LONG_TASKS)
            page = ctx.new_page()
            page_load(page, url, n_points)
            # a reviewer's next visit: the browser has the scripts (and their compiled code) cached
            reloads = [page_load(page, url, n_points, reload=True)[0] for _ in range(repeats)]
            band_on_at_start = page.evaluate(
                "() => document.querySelector('#verification .js-plotly-plot')._fullData"
                ".some(t => t.name.startsWith('sampling floor'))"
            )
            switches = [page.evaluate(SWITCH_AND_TIME, m) for m in ["LYMPH#", "NEUT#"] * repeats]
            toggles = [page.evaluate(TOGGLE_BAND_AND_TIME, want) for want in [not band_on_at_start, band_on_at_start]]
            # with the band drawn: measurand switches again
            if not band_on_at_start:
                page.evaluate(TOGGLE_BAND_AND_TIME, True)
            switches_band = [page.evaluate(SWITCH_AND_TIME, m) for m in ["LYMPH#", "NEUT#"] * repeats]
            payload = page.evaluate(
                "() => performance.getEntriesByType('resource').filter(e => e.name.includes('_dash-update'))"
                ".map(e => e.encodedBodySize).reduce((a, b) => Math.max(a, b), 0)"
            )
            version = browser.version
            browser.close()
    finally:
        proc.terminate()
        proc.wait(30)
    warm_loads = loads[1:]
    return {
        "points": n_points,
        "first_load_cold_server_ms": round(loads[0], 1),
        "first_load_ms": {
            "median": round(statistics.median(warm_loads), 1),
            "max": round(max(warm_loads), 1),
            "each": [round(t) for t in warm_loads],
        },
        "plot_only_page_first_load_ms": {
            "median": round(statistics.median(plot_only), 1),
            "max": round(max(plot_only), 1),
            "each": [round(t) for t in plot_only],
        },
        "first_load_over_plot_only_page": round(statistics.median(warm_loads) / statistics.median(plot_only), 2),
        "waited_for_quiet_machine_s": waited,
        "longest_main_thread_task_during_first_load_ms": round(statistics.median(longest[1:]), 1),
        "reload_with_browser_cache_ms": {"median": round(statistics.median(reloads), 1), "max": round(max(reloads), 1)},
        "floor_band_shown_by_default": band_on_at_start,
        "callback_to_plot_ms": {"median": round(statistics.median(switches), 1), "max": round(max(switches), 1)},
        "callback_to_plot_with_floor_band_ms": {
            "median": round(statistics.median(switches_band), 1),
            "max": round(max(switches_band), 1),
        },
        "floor_band_toggle_ms": [round(t, 1) for t in toggles],
        "largest_callback_response_bytes": payload,
        "repeats": repeats,
        "chromium": version,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--baseline-samples", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    results: dict[str, Any] = {
        "machine": {
            "cpu": cpu_name(),
            "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "dash": metadata.version("dash"),
            "plotly": metadata.version("plotly"),
            "platform": platform.platform(),
            "browser": "Debian chromium, headless, --disable-gpu (WebGL by software rendering)",
        },
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="wbcv-bench-dash-") as tmp:
        for n in (args.baseline_samples, args.samples):
            root = Path(tmp) / f"n{n}"
            root.mkdir()
            t0 = time.perf_counter()
            runs = make_run(root, n)
            made = time.perf_counter() - t0
            comparison = next(p for p in runs.iterdir() if "-compare-" in p.name)
            n_points = pl.read_parquet(comparison / "comparison.parquet").filter(pl.col("measurand") == "NEUT#").height
            load_before = os.getloadavg()[0]
            r = measure(runs, n_points, args.repeats)
            # the machine is shared: the 1-minute load average says how busy it was around the figures
            r["load_average_1min"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
            r["samples"] = n
            r["making_the_run_s"] = round(made, 1)
            results["runs"][str(n)] = r
            print(
                f"{n:>6} samples ({n_points} plotted): first load {r['first_load_ms']['median']:.0f} ms median "
                f"(max {r['first_load_ms']['max']:.0f}; {r['first_load_cold_server_ms']:.0f} right after start; "
                f"plotly-only page {r['plot_only_page_first_load_ms']['median']:.0f}; "
                f"longest task {r['longest_main_thread_task_during_first_load_ms']:.0f}), "
                f"reload with cache {r['reload_with_browser_cache_ms']['median']:.0f} ms, "
                f"callback to plot {r['callback_to_plot_ms']['median']:.0f} ms median "
                f"(max {r['callback_to_plot_ms']['max']:.0f}; with the floor band "
                f"{r['callback_to_plot_with_floor_band_ms']['median']:.0f}); largest callback response "
                f"{r['largest_callback_response_bytes'] / 1e6:.2f} MB",
                flush=True,
            )
    big, base = results["runs"][str(args.samples)], results["runs"][str(args.baseline_samples)]
    results["ratio_to_baseline"] = {
        "first_load": round(big["first_load_ms"]["median"] / base["first_load_ms"]["median"], 2),
        "callback_to_plot": round(big["callback_to_plot_ms"]["median"] / base["callback_to_plot_ms"]["median"], 2),
    }
    print(f"ratios {args.samples} / {args.baseline_samples} samples: {results['ratio_to_baseline']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
