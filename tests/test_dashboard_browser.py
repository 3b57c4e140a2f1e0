"""The dashboard in a real browser: Debian's Chromium driven by Playwright (never a downloaded browser).

What is checked is what a reviewer sees: the lines actually drawn in the verification plot (SVG
paths with their colours and dashes, the WebGL canvas of the points), a real mouse click on a
sample's point opening its cells, measurand and run switching, toggles, the sample table (an AG
Grid whose code is loaded only when its tab opens: filtered, sorted and paged on the server through
its own header and paging buttons, shaded rows, a click on a row, the CSV export), that the plots
are drawn by the dashboard's partial plotly.js bundle, that the page loads what
wbcv.dashboards.page says and nothing more, and that the browser reported no console error or
uncaught exception on the way.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from plotly.offline import get_plotlyjs_version

from tests.dashboard_support import make_study_runs, serving
from wbcv.base.errors import WbcvError
from wbcv.dashboards.app import TABLE_PAGE_SIZE
from wbcv.dashboards.data import RunCatalog
from wbcv.dashboards.table import apply_view
from wbcv.validation.pdf import CHROMIUM_ARGS, find_chromium

RED = "rgb(214, 39, 40)"  # wbcv.validation.figures.LIMIT_COLOUR
BLUE = "rgb(31, 79, 214)"  # wbcv.validation.figures.COVERAGE_COLOUR
GREY = "rgb(128, 128, 128)"  # wbcv.validation.figures.FLOOR_COLOUR without its alpha

# _fullData: the traces as Plotly drew them, float arrays decoded from the figure's binary form
PLOT_TRACES = """(sel) => {
  const g = document.querySelector(sel + ' .js-plotly-plot');
  if (!g || !g._fullData) return null;
  return g._fullData.map(t => ({name: t.name, type: t.type, visible: t.visible,
    colour: t.line ? t.line.color : null, dash: t.line ? t.line.dash : null,
    n: t.x ? t.x.length : 0, y0: t.y && t.y.length ? t.y[0] : null,
    xs: t.x ? Array.from(t.x) : [], ys: t.y ? Array.from(t.y) : [],
    ids: t.text ? Array.from(t.text) : []}));
}"""
# The lines as Plotly drew them: one entry per line path of the plot's SVG.
DRAWN_LINES = """(sel) => [...document.querySelectorAll(sel + ' .scatterlayer .trace path.js-line')].map(p => ({
  stroke: getComputedStyle(p).stroke, dash: getComputedStyle(p).strokeDasharray,
  opacity: getComputedStyle(p).strokeOpacity, segments: (p.getAttribute('d').match(/M/g) || []).length}))"""
POINT_POSITION = """(sid) => {
  const g = document.querySelector('#verification .js-plotly-plot');
  g.scrollIntoView({block: 'center'});
  const t = g._fullData.find(t => t.name === 'samples');
  const i = Array.from(t.text).findIndex(s => s === sid);
  const xa = g._fullLayout.xaxis, ya = g._fullLayout.yaxis, r = g.getBoundingClientRect();
  return {x: r.left + xa._offset + xa.l2p(t.x[i]), y: r.top + ya._offset + ya.l2p(t.y[i])};
}"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_study_runs(tmp_path_factory.mktemp("dash-browser"), n_samples=20, cells_per_slide=60)


@pytest.fixture(scope="module")
def url(runs: Path) -> Iterator[str]:
    with serving(runs) as base:
        yield base


@pytest.fixture(scope="module")
def browser(url: str) -> Iterator[Browser]:
    # after `url`, i.e. after the runs are made: `wbcv run` prints its report with Playwright's sync
    # API too, which refuses to start inside a running one
    try:
        chromium = find_chromium()  # the system browser the report prints with: one place finds it
    except WbcvError as e:
        pytest.fail(str(e))
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, url: str) -> Iterator[Page]:
    """A fresh page on the dashboard; fails the test if the browser logged an error meanwhile."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    p = context.new_page()
    errors: list[str] = []
    p.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    p.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    p.goto(url)
    wait_for_plot(p, "#verification", lambda traces: any(t["name"] == "samples" for t in traces))
    yield p
    context.close()
    assert errors == [], errors


def traces(page: Page, sel: str) -> list[dict[str, Any]]:
    return page.evaluate(PLOT_TRACES, sel) or []


def wait_for_plot(page: Page, sel: str, ready: Any, timeout_ms: int = 20000) -> list[dict[str, Any]]:
    """Poll the figure until ``ready(traces)`` holds (callbacks answer asynchronously)."""
    for _ in range(timeout_ms // 100):
        t = traces(page, sel)
        if t and ready(t):
            return t
        page.wait_for_timeout(100)
    raise AssertionError(f"{sel} never got ready; last traces: {traces(page, sel)}")


def open_tab(page: Page, label: str) -> None:
    page.locator("#view").get_by_text(label, exact=True).click()


def limit_levels(data: list[dict[str, Any]]) -> list[float]:
    """The red limit lines' allowable error L: each line's value nearest 0 (the lines widen to
    max(L, 100·A/reference) below the knee when the protocol has an absolute limit A)."""
    return sorted(min(t["ys"], key=abs) for t in data if t["colour"] == "#d62728")


def assert_limit_lines_are_the_effective_limit(data: list[dict[str, Any]], rows: pl.DataFrame) -> None:
    """As drawn, a sample lies between the red lines at its reference value exactly when the
    comparison counted it within limits (wbcv.validation.figures.limit_line)."""
    upper, lower = sorted((t for t in data if t["colour"] == "#d62728"), key=lambda t: -t["ys"][0])
    assert upper["xs"] == lower["xs"] and upper["ys"] == [-y for y in lower["ys"]]
    x, e = rows["reference"].to_numpy(), rows["error_pct"].to_numpy()
    inside = np.abs(e) <= np.interp(x, upper["xs"], upper["ys"]) + 1e-12
    assert inside.tolist() == rows["within_limit"].to_list()


# The sample table's rows as the grid shows them: row index, CSS classes, colours, the cells' text.
GRID_ROWS = """() => [...document.querySelectorAll('#samples .ag-center-cols-container .ag-row[row-index]')]
  .map(r => ({index: +r.getAttribute('row-index'), classes: r.className.split(' '),
    background: getComputedStyle(r).backgroundColor, colour: getComputedStyle(r).color,
    cells: Object.fromEntries([...r.querySelectorAll('.ag-cell[col-id]')]
      .map(c => [c.getAttribute('col-id'), c.innerText]))}))
  .sort((a, b) => a.index - b.index)"""
PINK = "rgb(253, 232, 232)"  # assets/style.css: a sample outside the limit
ORANGE = "rgb(154, 90, 0)"  # assets/style.css: an excluded sample


def grid_rows(page: Page, ready: Any = lambda rows: True, timeout_ms: int = 20000) -> list[dict[str, Any]]:
    """The grid's rows once they are loaded and ``ready(rows)`` holds (the server answers asynchronously)."""
    rows: list[dict[str, Any]] = []
    for _ in range(timeout_ms // 100):
        rows = page.evaluate(GRID_ROWS)
        loading = page.locator("#samples .ag-loading").count()
        if rows and not loading and all(r["cells"].get("sample_id") for r in rows) and ready(rows):
            return rows
        page.wait_for_timeout(100)
    raise AssertionError(f"the sample table never got ready; last rows: {rows}")


def paging_summary(page: Page) -> str:
    """The grid's "first to last of count" line."""
    return " ".join(page.locator("#samples .ag-paging-row-summary-panel").inner_text().split())


def expected_view(run: Any, measurand: str, filter_model: dict | None = None, sort_model: list | None = None) -> Any:
    """The rows the table should show, all pages, as the server computes them (rounded as sent)."""
    table = run.sample_table(measurand, False).with_columns(pl.col(pl.Float64).round(4))
    return apply_view(table, filter_model, sort_model)


def filter_box(page: Page, column: str) -> Any:
    return page.locator(f"#samples .ag-floating-filter input[aria-label='{column} Filter Input']:visible")


def newest_run(runs: Path) -> Any:
    catalog = RunCatalog(runs)
    return catalog.get(catalog.summaries()[0].run_id)


def test_verification_plot_draws_limits_coverage_floor_band_and_webgl_points(page: Page, runs: Path, tmp_path: Path):
    run = newest_run(runs)
    v = run.verdicts["NEUT#"]
    data = traces(page, "#verification")
    samples = next(t for t in data if t["name"] == "samples")
    assert samples["type"] == "scattergl" and samples["n"] == run.rows("NEUT#").height > 0
    red = [t for t in data if t["colour"] == "#d62728"]
    assert limit_levels(data) == [-10.0, 10.0] and {t["dash"] for t in red} == {"dot"}
    assert_limit_lines_are_the_effective_limit(data, run.rows("NEUT#").drop_nulls("error_pct"))
    blue = [t for t in data if t["colour"] == "#1f4fd6"]
    assert sorted(t["y0"] for t in blue) == pytest.approx([-v["coverage_error_pct"], v["coverage_error_pct"]])

    drawn = page.evaluate(DRAWN_LINES, "#verification")
    reds = [d for d in drawn if d["stroke"] == RED]
    blues = [d for d in drawn if d["stroke"] == BLUE]
    greys = [d for d in drawn if d["stroke"] == GREY]
    assert len(reds) == 2 and all(d["dash"] not in ("none", "") for d in reds)
    assert len(blues) == 2 and all(d["dash"] not in ("none", "") for d in blues)
    # the floor band: a grey, translucent vertical segment per sample (Plotly splits the trace at its gaps)
    assert len(greys) == run.rows("NEUT#")["counting_error_low_pct"].drop_nulls().len() > 0
    assert all(float(d["opacity"]) < 1 and d["dash"] == "none" and d["segments"] == 1 for d in greys)
    assert page.locator("#verification canvas").count() >= 1  # the WebGL layer of the points
    assert page.locator("#verdict-reason").inner_text().startswith("NEUT#: ")
    # the plot follows the window's width
    width = "() => document.querySelector('#verification .js-plotly-plot')._fullLayout.width"
    wide = page.evaluate(width)
    page.set_viewport_size({"width": 600, "height": 1000})
    page.wait_for_function(f"() => ({width})() < {wide} - 300")
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.wait_for_function(f"() => ({width})() === {wide}")
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000


def test_webgl_layers_are_drawn_at_the_screens_pixel_ratio(browser: Browser, url: str):
    # assets/wbcv-plot-config.js: plotly.js would draw them at twice the plot's size on any screen
    for scale in (1, 2):
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, device_scale_factor=scale)
        p = context.new_page()
        p.goto(url)
        wait_for_plot(p, "#verification", lambda traces: any(t["name"] == "samples" for t in traces))
        canvas_width, plot_width = p.evaluate(
            "() => { const g = document.querySelector('#verification .js-plotly-plot');"
            " return [g.querySelector('canvas.gl-canvas-context').width, g._fullLayout.width]; }"
        )
        context.close()
        assert canvas_width == scale * plot_width > 0


def test_first_load_draws_the_plot_from_the_layout_with_the_lean_scripts(page: Page):
    # dashboards/assets/plotly-wbcv.min.js (tests/test_dashboard_assets.py); the full 4.8 MB
    # plotly.min.js is never fetched
    assert page.evaluate("() => window.Plotly.version") == get_plotlyjs_version()
    urls = page.evaluate("() => performance.getEntriesByType('resource').map(e => e.name)")
    assert any("/assets/plotly-wbcv.min.js" in u for u in urls)
    assert not any("plotly.min.js" in u for u in urls), urls
    # no @babel/polyfill; the regenerator runtime Dash's lazy loader calls comes from the assets
    assert not any("polyfill" in u for u in urls), urls
    assert page.evaluate("() => typeof window.regeneratorRuntime.mark") == "function"
    # plotly.js inserted none of its style rules: they come from assets/plotly.css, and apply
    assert page.evaluate("() => document.getElementById('plotly.js-style-global').sheet.cssRules.length") == 0
    assert page.evaluate("() => getComputedStyle(document.querySelector('#verification .main-svg')).position") == (
        "absolute"
    )
    # the verification plot and verdict came with the layout: the first view needed no callback,
    # and the preloaded layout and graph code were fetched while the scripts were evaluated
    assert not any("_dash-update-component" in u for u in urls), urls
    assert sum(u.endswith("/dcc/async-graph.js") for u in urls) == 1, urls
    assert page.locator("#verdict-reason").inner_text().startswith("NEUT#: ")
    # What the page preloads (wbcv.dashboards.page.LeanDash) is what Dash's renderer asks for: its
    # own requests for the layout and the callbacks (which the browser does not match to the
    # preloads) go to the preloaded URLs, and the only lazily loaded chunk of dcc is the preloaded
    # graph code, fetched once. Fails when Dash renames or adds what its renderer fetches.
    preloaded = page.evaluate("() => [...document.querySelectorAll('link[rel=preload]')].map(l => [l.href, l.as])")
    fetched = page.evaluate(
        "() => performance.getEntriesByType('resource').filter(e => e.initiatorType === 'fetch').map(e => e.name)"
    )
    assert sorted(u for u, kind in preloaded if kind == "fetch") == sorted(fetched), (preloaded, fetched)
    assert [u for u, kind in preloaded if kind == "script"] == [u for u in urls if "/dcc/async-" in u]
    # AG Grid's code (1.3 MB) is not loaded before the samples tab is opened, nor Dash's unused DataTable
    assert page.evaluate("() => typeof window.dash_ag_grid") == "undefined"
    assert not any("dash_ag_grid" in u or "dash_table" in u for u in urls), urls


def test_clicking_a_point_opens_the_samples_cells_with_unclassified_ones_marked(page: Page, runs: Path, tmp_path):
    run = newest_run(runs)
    cells = run.inference.predictions
    shown = set(run.rows("NEUT#")["sample_id"].to_list())
    unclassified = (
        cells.filter(pl.col("sample_id").is_in(list(shown)))
        .group_by("sample_id")
        .agg(pl.len().alias("n"), pl.col("unclassified").sum().alias("n_unc"))
        .sort(["n_unc", "sample_id"], descending=[True, False])
    )
    sample_id, n_cells, n_unc = unclassified.row(0)
    assert n_unc > 0, "the study's noise tiles should have left some cells unclassified"

    pos = page.evaluate(POINT_POSITION, sample_id)
    page.mouse.move(pos["x"], pos["y"])
    page.mouse.click(pos["x"], pos["y"])
    title = page.locator("#gallery-title")
    title.wait_for(timeout=15000)
    assert title.inner_text() == f"sample {sample_id}: {n_cells} cells, {n_unc} unclassified"
    assert page.locator("#gallery figure.cell").count() == n_cells
    assert page.locator("#gallery figure.cell.unclassified").count() == n_unc
    # unclassified first, each captioned as such; a classified cell shows its class and confidence
    first = page.locator("#gallery figure.cell").first
    assert "unclassified" in first.get_attribute("class") and "unclassified" in first.inner_text()
    last_caption = page.locator("#gallery figure.cell").last.inner_text()
    assert any(c in last_caption for c in ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"))
    # the images really arrive through the image route and decode in the browser
    page.wait_for_function(
        "() => [...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)",
        timeout=20000,
    )
    page.locator("#gallery").screenshot(path=str(tmp_path / "gallery.png"))


def test_clicking_a_row_of_the_sample_table_opens_its_cells(page: Page, runs: Path):
    run = newest_run(runs)
    open_tab(page, "samples")
    rows = grid_rows(page)
    # a sample outside the limit is marked: its row is pink, the others are not
    assert {r["cells"]["within_limit"] for r in rows} == {"true", "false"}, "the page should hold both"
    for r in rows:
        assert ("out-of-limit" in r["classes"]) == (r["cells"]["within_limit"] == "false"), r
        assert (r["background"] == PINK) == (r["cells"]["within_limit"] == "false"), r
    sample_id = rows[2]["cells"]["sample_id"]
    page.locator("#samples .ag-row[row-index='2'] .ag-cell[col-id='measurand']").click()
    title = page.locator("#gallery-title")
    title.wait_for(timeout=15000)
    assert title.inner_text().startswith(f"sample {sample_id}: {run.inference.cells_of(sample_id).height} cells")
    # a row of another page, in another order: the click names the row on screen
    page.locator("#samples .ag-header-cell[col-id='sample_id'] .ag-header-cell-label").click()
    page.locator("#samples .ag-header-cell[col-id='sample_id'] .ag-header-cell-label").click()  # descending
    page.get_by_role("button", name="Next Page").click()
    last = expected_view(run, "NEUT#", None, [{"colId": "sample_id", "sort": "desc"}])["sample_id"].to_list()[-1]
    rows = grid_rows(page, lambda rows: rows[-1]["cells"]["sample_id"] == last)
    page.locator(f"#samples .ag-row[row-index='{rows[-1]['index']}'] .ag-cell[col-id='error_pct']").click()
    page.locator("#gallery-title", has_text=f"sample {last}:").wait_for(timeout=15000)
    # opening another run closes the sample: its samples are others
    older = RunCatalog(runs).summaries()[1]
    page.locator("#runs-table tbody tr", has_text=older.run_id).click()
    page.locator("#gallery", has_text="No sample selected").wait_for(timeout=15000)
    assert page.locator("#gallery-title").count() == 0


def test_switching_measurand_redraws_the_plot_and_verdict(page: Page, runs: Path):
    run = newest_run(runs)
    page.locator('#measurand input[value="LYMPH%"]').check()
    page.wait_for_function(
        "() => document.querySelector('#verification .js-plotly-plot').layout.title.text.startsWith('LYMPH%:')"
    )
    data = traces(page, "#verification")
    lymph = run.rows("LYMPH%")
    samples = next(x for x in data if x["name"] == "samples")
    assert samples["n"] == lymph.height and set(samples["ids"]) == set(lymph["sample_id"].to_list())
    assert page.locator("#verification .g-xtitle").text_content() == "reference LYMPH% (%)"  # as drawn in the SVG
    assert limit_levels(data) == [-10.0, 10.0]
    assert_limit_lines_are_the_effective_limit(data, lymph.drop_nulls("error_pct"))
    page.wait_for_function("() => document.querySelector('#verdict-reason').innerText.startsWith('LYMPH%: ')")
    # the method-comparison tab is built for the measurand chosen
    open_tab(page, "method comparison")
    ba = wait_for_plot(page, "#bland-altman", lambda t: t[0]["n"] > 0)
    assert ba[0]["n"] == lymph.height and set(ba[0]["ids"]) == set(lymph["sample_id"].to_list())
    ba_title = page.evaluate("() => document.querySelector('#bland-altman .js-plotly-plot').layout.title.text")
    assert ba_title.startswith("LYMPH%")
    reg = wait_for_plot(page, "#regression", lambda t: t[0]["n"] > 0)
    assert reg[0]["n"] == lymph.height
    assert any(t["name"].startswith("Passing–Bablok: y = ") for t in reg)


def test_toggles_hide_the_floor_band_and_show_excluded_samples(page: Page, runs: Path):
    run = newest_run(runs)
    excluded_neut = run.excluded_rows("NEUT#")
    assert excluded_neut is not None, "the run records the values of its excluded samples"
    expected_excluded = excluded_neut.filter(pl.col("error_pct").is_not_null()).height
    assert expected_excluded > 0, "the simulated study flags some samples"
    page.get_by_label("show sampling-floor band").uncheck()
    wait_for_plot(page, "#verification", lambda t: not any(x["name"].startswith("sampling floor") for x in t))
    assert not [d for d in page.evaluate(DRAWN_LINES, "#verification") if d["stroke"] == GREY]
    page.get_by_label("show excluded samples").check()
    data = wait_for_plot(page, "#verification", lambda t: any(x["name"].startswith("excluded") for x in t))
    excluded = next(t for t in data if t["name"].startswith("excluded"))
    assert excluded["n"] == len(excluded["ids"]) == expected_excluded
    assert set(excluded["ids"]).isdisjoint(set(run.rows("NEUT#")["sample_id"].to_list()))


def download_csv(page: Page) -> list[dict[str, str]]:
    with page.expect_download() as dl:
        page.get_by_role("button", name="download visible table as CSV").click()
    return list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))


def test_sample_table_is_filtered_sorted_and_paged_on_the_server_and_exported_as_shown(page: Page, runs: Path):
    run = newest_run(runs)
    full = expected_view(run, "NEUT#")
    n = full.height
    assert n > TABLE_PAGE_SIZE, "the study should fill more than one page"
    open_tab(page, "samples")
    # AG Grid's code arrives with the tab, once
    rows = grid_rows(page)
    assert page.evaluate("() => typeof window.dash_ag_grid.AgGrid") == "function"
    # only one page is in the browser, in the run's order
    assert [r["cells"]["sample_id"] for r in rows] == full["sample_id"].to_list()[:TABLE_PAGE_SIZE]
    assert paging_summary(page) == f"1 to {TABLE_PAGE_SIZE} of {n}"
    assert float(rows[0]["cells"]["error_pct"]) == pytest.approx(full["error_pct"][0])

    # sort by the error through the header: ascending, then descending; the next page holds the rest
    header = page.locator("#samples .ag-header-cell[col-id='error_pct'] .ag-header-cell-label")
    header.click()
    up = expected_view(run, "NEUT#", None, [{"colId": "error_pct", "sort": "asc"}])["sample_id"].to_list()
    grid_rows(page, lambda rows: [r["cells"]["sample_id"] for r in rows] == up[:TABLE_PAGE_SIZE])
    header.click()
    down_sort = [{"colId": "error_pct", "sort": "desc"}]
    down = expected_view(run, "NEUT#", None, down_sort)["sample_id"].to_list()
    grid_rows(page, lambda rows: [r["cells"]["sample_id"] for r in rows] == down[:TABLE_PAGE_SIZE])
    page.get_by_role("button", name="Next Page").click()
    rows = grid_rows(page, lambda rows: [r["cells"]["sample_id"] for r in rows] == down[TABLE_PAGE_SIZE:])
    assert paging_summary(page) == f"{TABLE_PAGE_SIZE + 1} to {n} of {n}"
    assert [r["index"] for r in rows] == list(range(TABLE_PAGE_SIZE, n))
    # the export holds every page, in the order shown
    exported = download_csv(page)
    assert [r["sample_id"] for r in exported] == down
    assert [float(r["error_pct"]) for r in exported] == pytest.approx(
        expected_view(run, "NEUT#", None, down_sort)["error_pct"].to_list()
    )

    # filter through the header: the samples outside the limit, all shaded, one page
    filter_box(page, "within_limit").fill("false")
    outside = expected_view(
        run, "NEUT#", {"within_limit": {"filterType": "text", "type": "contains", "filter": "false"}}, down_sort
    )
    assert 0 < outside.height <= TABLE_PAGE_SIZE
    rows = grid_rows(page, lambda rows: [r["cells"]["sample_id"] for r in rows] == outside["sample_id"].to_list())
    assert all(r["background"] == PINK and r["cells"]["within_limit"] == "false" for r in rows), rows
    assert paging_summary(page) == f"1 to {outside.height} of {outside.height}"
    assert [r["sample_id"] for r in download_csv(page)] == outside["sample_id"].to_list()
    # two columns filtered: one sample
    one = outside["sample_id"][0]
    filter_box(page, "sample_id").fill(one)
    grid_rows(page, lambda rows: [r["cells"]["sample_id"] for r in rows] == [one])
    exported = download_csv(page)
    assert [r["sample_id"] for r in exported] == [one] and exported[0]["within_limit"] == "false"
    assert float(exported[0]["error_pct"]) == pytest.approx(
        run.rows("NEUT#").filter(pl.col("sample_id") == one)["error_pct"][0], abs=1e-3
    )
    filter_box(page, "sample_id").fill("")
    filter_box(page, "within_limit").fill("")
    grid_rows(page, lambda rows: len(rows) == TABLE_PAGE_SIZE)

    # excluded samples shown: the grid asks again, keeping its sort; they are written in orange
    page.get_by_label("show excluded samples").check()
    with_excluded = apply_view(
        run.sample_table("NEUT#", True).with_columns(pl.col(pl.Float64).round(4)), None, down_sort
    )
    assert with_excluded.height > n
    page.locator("#samples .ag-paging-row-summary-panel", has_text=f"of {with_excluded.height}").wait_for()
    page.get_by_role("button", name="Last Page").click()
    rows = grid_rows(page, lambda rows: rows[-1]["index"] == with_excluded.height - 1)
    assert [r["cells"]["sample_id"] for r in rows] == with_excluded["sample_id"].to_list()[TABLE_PAGE_SIZE:]
    assert [r["sample_id"] for r in download_csv(page)] == with_excluded["sample_id"].to_list()
    # sorted by the reason, the excluded samples come first (missing values sort last)
    page.locator("#samples .ag-header-cell[col-id='excluded_reason'] .ag-header-cell-label").click()  # to page 1
    rows = grid_rows(page, lambda rows: rows[0]["index"] == 0 and bool(rows[0]["cells"]["excluded_reason"]))
    n_excluded = with_excluded.height - n
    for r in rows:
        excluded = bool(r["cells"]["excluded_reason"])
        assert excluded == (r["index"] < n_excluded), rows
        assert ("excluded-sample" in r["classes"]) == excluded and (r["colour"] == ORANGE) == excluded, r
    # another measurand: the same
    page.get_by_label("show excluded samples").uncheck()
    page.locator('#measurand input[value="LYMPH%"]').check()
    lymph = expected_view(run, "LYMPH%", None, [{"colId": "excluded_reason", "sort": "asc"}])
    rows = grid_rows(page, lambda rows: {r["cells"]["measurand"] for r in rows} == {"LYMPH%"})
    assert [r["cells"]["sample_id"] for r in rows] == lymph["sample_id"].to_list()[:TABLE_PAGE_SIZE]
    assert [r["sample_id"] for r in download_csv(page)] == lymph["sample_id"].to_list()
    # the grid's code was loaded once, whatever the requests since
    urls = page.evaluate("() => performance.getEntriesByType('resource').map(e => e.name)")
    assert sum("/_dash-component-suites/dash_ag_grid/dash_ag_grid." in u for u in urls) == 1, urls


def test_runs_list_switch_run_compare_two_runs_and_trend(page: Page, runs: Path):
    catalog = RunCatalog(runs)
    summaries = catalog.summaries()
    rows = page.locator("#runs-table tbody tr")
    assert [s.verdict for s in summaries] and rows.count() == len(summaries)
    assert rows.first.inner_text().startswith(summaries[0].run_id)  # newest first, and open
    assert "selected" in (rows.first.get_attribute("class") or "")
    newest, older = summaries[0], summaries[1]  # the ±10 % and the ±15 % comparison of one inference run
    # pick the older run from the runs list: the plot redraws with its ±15 % limits
    page.locator("#runs-table tbody tr", has_text=older.run_id).click()
    wait_for_plot(page, "#verification", lambda t: limit_levels(t) == [-15, 15])
    assert "selected" in (page.locator("#runs-table tbody tr", has_text=older.run_id).get_attribute("class") or "")
    assert "selected" not in (rows.first.get_attribute("class") or "")
    page.wait_for_function(f"() => document.querySelector('#verdict').innerText.includes('run {older.run_id}:')")
    # compare with the newest
    open_tab(page, "compare two runs")
    page.locator("#compare-run").click()
    page.get_by_role("option", name=newest.run_id).click()
    a = wait_for_plot(page, "#compare-a", lambda t: any(x["name"] == "samples" for x in t))
    b = wait_for_plot(page, "#compare-b", lambda t: any(x["name"] == "samples" for x in t))
    assert limit_levels(a) == [-15, 15]
    assert limit_levels(b) == [-10, 10]
    paired = wait_for_plot(page, "#paired", lambda t: t[0]["n"] > 0)
    assert paired[0]["n"] == catalog.get(newest.run_id).rows("NEUT#").height  # same samples, same inference
    # coverage trend: one point per run that has a coverage for NEUT#, in time order
    open_tab(page, "coverage across runs (drift)")
    trend = wait_for_plot(page, "#trend", lambda t: t[0]["n"] > 0)
    with_coverage = [s for s in summaries if catalog.get(s.run_id).verdicts["NEUT#"]["coverage"] is not None]
    assert trend[0]["n"] == len(with_coverage) == 2
    # the oldest run (untrained model) left every cell unclassified: it is listed, with nothing to plot
    untrained = summaries[-1]
    assert untrained.n_values == 0
    page.locator("#runs-table tbody tr", has_text=untrained.run_id).click()
    open_tab(page, "run review")
    wait_for_plot(page, "#verification", lambda t: next(x for x in t if x["name"] == "samples")["n"] == 0)
    open_tab(page, "cells against expert labels")
    wait_for_plot(page, "#confusion", lambda t: t[0]["type"] == "heatmap")
    page.wait_for_function("() => document.querySelector('#cell-metrics').innerText.includes('unclassified 100.0 %')")
