"""The dashboard's pre-classification tab (wbcv.dashboards.preclassification): what a reviewer reads
there is what the comparison's statistics.json holds, for an analyzer's per-cell export; a per-sample
export and wbcv's own runs say why there is nothing; an altered statistics.json shows nothing.

The browser tests drive Debian's Chromium through Playwright, as tests/test_dashboard_browser.py
does: the tab is opened by a click, its tables are read from the page, and switching runs in the
runs list redraws it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.dashboard_support import serving
from wbcv.base.errors import WbcvError
from wbcv.base.tables import STATISTICS_FILE
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.cli import main
from wbcv.dashboards.data import RunCatalog
from wbcv.dashboards.preclassification import preclassification_view
from wbcv.validation.pdf import CHROMIUM_ARGS, find_chromium

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "fixtures" / "samples" / "results"
PROTOCOL = REPO / "fixtures" / "samples" / "protocol.yaml"
TAB = "pre-classification against verification"


def compare_export(runs: Path, name: str, fmt: str) -> Path:
    before = set(runs.iterdir()) if runs.exists() else set()
    args = ["compare", "--results", str(SAMPLES / name), "--format", fmt, "--reference", str(SAMPLES / "XN_SAMPLE.csv")]
    assert main([*args, "--protocol", str(PROTOCOL), "--out", str(runs)]) in (0, 3)
    return next(p for p in set(runs.iterdir()) - before if "-compare-" in p.name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two comparisons of exports: a per-sample differential (older), a per-cell table (newest, shown first)."""
    runs = tmp_path_factory.mktemp("preclass") / "runs"
    compare_export(runs, "differential.csv", "csv")
    time.sleep(1.1)  # run ids and creation times have whole seconds: keep the order unambiguous
    compare_export(runs, "cells.csv", "cells")
    return runs


def run_dirs(runs: Path) -> dict[str, Path]:
    """{'cells': comparison dir, 'csv': comparison dir}, by the export each was made from."""
    out = {}
    for p in sorted(runs.glob("*-compare-*")):
        out["cells" if "preclassification" in json.loads((p / STATISTICS_FILE).read_text()) else "csv"] = p
    return out


def text_of(components: list[Any]) -> str:
    return " ".join(str(c) for c in components)


def expected_summary(pc: dict[str, Any]) -> list[list[str]]:
    """The summary table's rows, worked out here from statistics.json's numbers."""

    def prop(p: dict[str, Any]) -> list[str]:
        low, high = p["ci"]
        return [f"{100 * p['estimate']:.1f} % ({p['k']}/{p['n']})", f"{100 * low:.1f} % to {100 * high:.1f} %"]

    rows = [["agreement (category kept by the technologist)", *prop(pc["agreement"])]]
    rows.append(["reclassification rate (class name changed)", *prop(pc["reclassification_rate"])])
    for name, key in (
        ("unweighted", "kappa"),
        ("linear weights", "kappa_linear"),
        ("quadratic weights", "kappa_quadratic"),
    ):
        low, high = pc[f"{key}_ci"]
        rows.append([f"Cohen's kappa, {name}", f"{pc[key]:.3g}", f"{low:.3g} to {high:.3g}"])
    return rows


# --- without a browser ---------------------------------------------------------------------------


def test_tab_of_a_per_sample_export_says_there_are_no_cells(runs):
    catalog = RunCatalog(runs)
    run = catalog.get(run_dirs(runs)["csv"].name)
    text = text_of(preclassification_view(run))
    assert "No pre-classification figures" in text and f"per-sample export ({run.summary.model})" in text
    assert "preclass-summary" not in text


def test_tab_shows_nothing_from_an_altered_statistics_file(runs, tmp_path):
    import shutil

    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    target = run_dirs(copy)["cells"]
    catalog = RunCatalog(copy)
    catalog.summaries()  # listed while intact; the file is altered while the dashboard is serving
    stats = json.loads((target / STATISTICS_FILE).read_text())
    stats["preclassification"]["agreement"]["estimate"] = 0.999
    (target / STATISTICS_FILE).write_text(json.dumps(stats))
    text = text_of(preclassification_view(catalog.get(target.name)))
    assert "differs from its run.json: altered; nothing is shown" in text and "99.9 %" not in text
    # a fresh listing leaves the altered run out and says why
    fresh = RunCatalog(copy)
    assert target.name not in {s.run_id for s in fresh.summaries()}
    assert any(name == target.name and "statistics.json changed" in why for name, why in fresh.unreadable())


def test_tab_of_wbcvs_own_run_says_where_its_verification_figures_are(runs):
    """A comparison of wbcv's own model (its link's kind) has no figures in statistics.json: the tab
    says the report computes them from the verification log. The run is the per-sample one with its
    link's kind changed in memory (making a model run needs a whole inference)."""
    import dataclasses

    run = RunCatalog(runs).get(run_dirs(runs)["csv"].name)
    link = dataclasses.replace(run.record.inputs.inference_run, kind="inference", analyzer=None)
    run.record = dataclasses.replace(run.record, inputs=dataclasses.replace(run.record.inputs, inference_run=link))
    text = text_of(preclassification_view(run))
    assert "wbcv's own model" in text and "computes the figures of that verification from the verification log" in text


# --- in the browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def url(runs: Path) -> Iterator[str]:
    with serving(runs) as base:
        yield base


@pytest.fixture(scope="module")
def browser(url: str) -> Iterator[Browser]:
    try:
        chromium = find_chromium()
    except WbcvError as e:
        pytest.fail(str(e))
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, url: str) -> Iterator[Page]:
    """A fresh page on the dashboard; fails the test if the browser logged an error meanwhile."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    p = context.new_page()
    errors: list[str] = []
    p.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    p.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    p.goto(url)
    p.wait_for_selector("#runs-table")
    yield p
    context.close()
    assert errors == [], errors


def table_rows(page: Page, table_id: str) -> list[list[str]]:
    return page.eval_on_selector_all(
        f"#{table_id} tbody tr", "rows => rows.map(r => [...r.children].map(c => c.textContent.trim()))"
    )


@pytest.mark.slow
def test_tab_shows_the_statistics_of_the_per_cell_export(page, runs):
    pc = json.loads((run_dirs(runs)["cells"] / STATISTICS_FILE).read_text())["preclassification"]
    page.locator("#view").get_by_text(TAB, exact=True).click()
    page.wait_for_selector("#preclass-summary", timeout=20000)
    assert table_rows(page, "preclass-summary") == expected_summary(pc)
    assert f"{pc['n_cells']} cells with both" in page.inner_text("#preclass-cells")
    per_class = table_rows(page, "preclass-per-class")
    assert [r[0] for r in per_class] == pc["categories"]
    for row, c in zip(per_class, pc["per_class"], strict=True):
        estimates = [c[k]["estimate"] for k in ("sensitivity", "ppv", "specificity")]
        shown = [
            f"{100 * e:.1f} % ({c[k]['k']}/{c[k]['n']})" if e is not None else "– (0/0)"
            for e, k in zip(estimates, ("sensitivity", "ppv", "specificity"), strict=True)
        ]
        assert [row[1], row[2], row[3], row[5], row[7]] == [str(c["verified"]), str(c["preclassified"]), *shown]
    # the agreement matrix: rows verified, columns pre-classified, every cell as statistics.json counted it
    matrix = table_rows(page, "preclass-matrix")
    assert [[int(n) for n in r[1:]] for r in matrix] == pc["matrix"]
    assert page.eval_on_selector_all("#preclass-matrix td.diag", "cells => cells.length") == len(pc["categories"])
    moved = dict((r[0], r[1]) for r in table_rows(page, "preclass-reclassified"))
    assert moved == {pre: "; ".join(f"{v} {n}" for v, n in to.items()) for pre, to in pc["reclassified_to"].items()}
    per_sample = table_rows(page, "preclass-per-sample")
    assert [r[0] for r in per_sample] == [s["sample_id"] for s in pc["per_sample"]]
    first = pc["per_sample"][0]
    assert per_sample[0][1:3] == [str(first["n_cells"]), str(first["n_changed"])]
    # the differences to two significant figures, as the report writes them
    assert [float(x.replace("−", "-")) for x in per_sample[0][3:]] == [float(f"{first[c]:.2g}") for c in CELL_CLASSES]


@pytest.mark.slow
def test_switching_to_a_per_sample_export_redraws_the_tab(page, runs):
    page.locator("#view").get_by_text(TAB, exact=True).click()
    page.wait_for_selector("#preclass-summary", timeout=20000)
    page.locator(f"#runs-table tr[title='open run {run_dirs(runs)['csv'].name}']").click()
    page.wait_for_selector("#preclass-none", timeout=20000)
    assert "per-sample export" in page.inner_text("#preclass-none")
    assert page.locator("#preclass-summary").count() == 0
