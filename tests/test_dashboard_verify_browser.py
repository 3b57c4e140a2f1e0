"""Verifying cells in the dashboard's gallery, in a real browser (Debian's Chromium, Playwright).

The keyboard flow a technologist uses (arrows, Enter, 1-7) writes the chained log beside the
sealed run (wbcv.dashboards.verify, wbcv.validation.verification_log); a dashboard without
credentials refuses every write and says why; a browser that is not signed in gets nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.dashboard_support import make_study_runs, serving
from tests.test_dashboard_browser import POINT_POSITION, wait_for_plot
from wbcv.base.errors import WbcvError
from wbcv.cli import EXIT_OK, EXIT_TAMPERED
from wbcv.cli import main as wbcv_main
from wbcv.dashboards.auth import Credentials
from wbcv.dashboards.data import ComparisonRun, RunCatalog
from wbcv.validation.pdf import CHROMIUM_ARGS, find_chromium
from wbcv.validation.report import load_report_data, render_html
from wbcv.validation.verification_log import VERIFIED_CHOICES, Decision, append_decision, check_log, log_path

pytestmark = pytest.mark.slow
USER = Credentials("ana", "s3cret-pw")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_study_runs(tmp_path_factory.mktemp("verify"), n_samples=6, cells_per_slide=30, untrained_model=False)


@pytest.fixture(scope="module")
def urls(runs: Path) -> Iterator[tuple[str, str]]:
    """(a dashboard with credentials, one without) on the same runs."""
    with serving(runs, USER) as signed, serving(runs) as open_:
        yield signed, open_


@pytest.fixture(scope="module")
def browser(urls: tuple[str, str]) -> Iterator[Browser]:
    try:
        chromium = find_chromium()
    except WbcvError as e:
        pytest.fail(str(e))
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=list(CHROMIUM_ARGS))
        yield b
        b.close()


def newest(runs: Path) -> ComparisonRun:
    catalog = RunCatalog(runs)
    return catalog.get(catalog.summaries()[0].run_id)


def open_sample_with_unclassified(page: Page, runs: Path) -> tuple[str, pl.DataFrame]:
    """Click the point of the sample with the most unclassified cells; its cells in gallery order."""
    wait_for_plot(page, "#verification", lambda t: any(x["name"] == "samples" for x in t))
    run = newest(runs)
    shown = run.rows("NEUT#")["sample_id"].to_list()
    cells = run.inference.predictions.filter(pl.col("sample_id").is_in(shown))
    sample_id = (
        cells.group_by("sample_id")
        .agg(pl.col("unclassified").sum())
        .sort(["unclassified", "sample_id"], descending=[True, False])
    )["sample_id"][0]
    pos = page.evaluate(POINT_POSITION, sample_id)
    page.mouse.click(pos["x"], pos["y"])
    page.locator("#gallery-title").wait_for(timeout=15000)
    ordered = (
        cells.filter(pl.col("sample_id") == sample_id)
        .with_row_index("order")
        .sort(["unclassified", "order"], descending=[True, False])
    )
    return sample_id, ordered


def test_keyboard_verification_writes_the_chained_log_beside_the_sealed_run(browser: Browser, urls, runs: Path):
    context = browser.new_context(
        viewport={"width": 1400, "height": 1000},
        http_credentials={"username": USER.user, "password": USER.password},
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(urls[0])
    _, cells = open_sample_with_unclassified(page, runs)
    assert cells["unclassified"][0], "the first cell of the gallery is an unclassified one"
    inf = newest(runs).inference
    sealed_before = sorted((p.name, p.stat().st_mtime_ns) for p in inf.path.iterdir())

    status = page.locator("#verify-status")
    # Enter accepts the first (unclassified) cell; 1 makes the second a neutrophil; → skips the
    # third; 7 says the fourth is not a white cell; ← ← goes back to the third; 3: monocyte
    page.keyboard.press("Enter")
    page.keyboard.press("1")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("7")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("3")
    status.filter(has_text=re.compile(r"^record 4:")).wait_for(timeout=15000)

    entries = check_log(inf.path).entries
    assert check_log(inf.path).intact
    path = cells["cell_path"].to_list()
    pre = ["unclassified" if u else p for u, p in zip(cells["unclassified"], cells["predicted_class"], strict=True)]
    assert [(e["cell_path"], e["action"], e["from"], e["to"], e["user"]) for e in entries] == [
        (path[0], "accept", pre[0], pre[0], "ana"),
        (path[1], "reclassify", pre[1], "neutrophil", "ana"),
        (path[3], "reclassify", pre[3], "not_wbc", "ana"),
        (path[2], "reclassify", pre[2], "monocyte", "ana"),
    ]
    sha = dict(inf.predictions.select("cell_path", "sha256").iter_rows())
    assert all(e["cell_sha256"] == sha[e["cell_path"]] for e in entries)
    # shown in the captions, and still there when the gallery is built again from the log
    figures = page.locator("#gallery figure.cell")
    assert "→ neutrophil (ana)" in figures.nth(1).inner_text()
    assert "→ not_wbc (ana)" in figures.nth(3).inner_text()
    page.reload()
    open_sample_with_unclassified(page, runs)
    assert "✓ " + pre[0] + " (ana)" in page.locator("#gallery figure.cell").first.inner_text()
    assert "4 verification record(s)" in status.inner_text()
    # the sealed run is untouched: the log lies beside it
    assert sorted((p.name, p.stat().st_mtime_ns) for p in inf.path.iterdir()) == sealed_before
    assert log_path(inf.path).parent == inf.path.parent / ".verification"
    context.close()
    assert errors == []


def test_a_dashboard_without_credentials_refuses_to_record(browser: Browser, urls, runs: Path):
    inf = newest(runs).inference
    before = log_path(inf.path).read_bytes() if log_path(inf.path).exists() else b""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(urls[1])
    open_sample_with_unclassified(page, runs)
    assert "refused: verification is recorded only under sign-in" in page.locator("#verify-signin").inner_text()
    page.keyboard.press("2")
    page.locator("#verify-status", has_text="refused: verification is recorded only under sign-in").wait_for(
        timeout=15000
    )
    context.close()
    after = log_path(inf.path).read_bytes() if log_path(inf.path).exists() else b""
    assert after == before


def test_a_browser_not_signed_in_gets_nothing_and_cannot_post(browser: Browser, urls, runs: Path):
    inf = newest(runs).inference
    context = browser.new_context()
    # (a page load answered 401 without a prompt ends in net::ERR_INVALID_AUTH_CREDENTIALS)
    assert context.request.get(urls[0]).status == 401
    answer = context.request.post(
        f"{urls[0]}/verify/{inf.run_id}",
        data=json.dumps({"cell_path": inf.predictions["cell_path"][0], "to": "basophil"}),
        headers={"Content-Type": "application/json"},
    )
    assert answer.status == 401
    context.close()


def test_the_keys_of_the_script_are_the_verified_choices():
    script = (Path(__file__).parent.parent / "dashboards" / "assets" / "wbcv-verify.js").read_text()
    listed = re.search(r"var CHOICES = (\[.*?\]);", script)
    assert listed is not None and tuple(json.loads(listed.group(1))) == VERIFIED_CHOICES


def test_the_route_refuses_cross_site_posts_unknown_runs_cells_and_classes(browser: Browser, urls, runs: Path):
    inf = newest(runs).inference
    context = browser.new_context(http_credentials={"username": USER.user, "password": USER.password})
    before = log_path(inf.path).read_bytes() if log_path(inf.path).exists() else b""
    cell = inf.predictions["cell_path"][0]
    url = f"{urls[0]}/verify/{inf.run_id}"
    body = json.dumps({"cell_path": cell, "to": "basophil"})
    json_type = {"Content-Type": "application/json"}
    cases = [
        (url, body, {"Content-Type": "text/plain"}, 415, "expected a JSON body"),  # what a cross-site form sends
        (url, body, {**json_type, "Origin": "http://elsewhere.example"}, 403, "another site"),
        (f"{urls[0]}/verify/no-such-run", body, json_type, 404, "no such inference run"),
        (url, json.dumps({"cell_path": "../../etc/passwd", "to": "basophil"}), json_type, 400, "not a classified cell"),
        (url, json.dumps({"cell_path": cell, "to": "blast"}), json_type, 400, "expected one of neutrophil"),
        (url, "x" * 9000, json_type, 413, "over 8192 bytes"),
    ]
    for target, data, headers, status, says in cases:
        answer = context.request.post(target, data=data, headers=headers)
        assert answer.status == status, (target, headers, answer.text())
        assert says in answer.json()["error"]
    context.close()
    after = log_path(inf.path).read_bytes() if log_path(inf.path).exists() else b""
    assert after == before


def test_wbcv_verify_checks_the_chain_and_names_an_edited_or_removed_line(runs: Path, capsys):
    comparison = newest(runs)
    inf = comparison.inference
    for to in ("eosinophil", "basophil"):
        append_decision(inf.path, inf.predictions, Decision("ben", inf.predictions["cell_path"][0], to))
    n = len(check_log(inf.path).entries)
    original = log_path(inf.path).read_bytes()
    try:
        for run_dir in (inf.path, comparison.path):
            assert wbcv_main(["verify", str(run_dir)]) == EXIT_OK
            assert f"{n} record(s), last line sha256" in capsys.readouterr().out
        lines = original.splitlines(keepends=True)
        log_path(inf.path).write_bytes(b"".join([lines[0], lines[1].replace(b'"user":"', b'"user":"x'), *lines[2:]]))
        assert wbcv_main(["verify", str(comparison.path)]) == EXIT_TAMPERED
        assert f"changed: {log_path(inf.path)} (line 2: line 3's prev no longer matches it)" in capsys.readouterr().out
        log_path(inf.path).write_bytes(b"".join([lines[0], *lines[2:]]))
        assert wbcv_main(["verify", str(inf.path)]) == EXIT_TAMPERED
        assert "seq 2 removed" in capsys.readouterr().out
    finally:
        log_path(inf.path).write_bytes(original)


def test_the_report_has_a_verification_section_from_the_log(runs: Path):
    comparison = newest(runs)
    inf = comparison.inference
    first = inf.predictions["cell_path"][0]
    append_decision(inf.path, inf.predictions, Decision("cy", first, "basophil"))
    check = check_log(inf.path)
    data = load_report_data(comparison.path)
    about, st_ = data.statistics["verification_log"], data.statistics["preclassification"]
    assert (about["records"], about["head_sha256"]) == (len(check.entries), check.head_sha256)
    n_verified = len({e["cell_path"] for e in check.entries})
    assert st_["n_cells"] == n_verified and st_["n_cells_without_both"] == inf.predictions.height - n_verified
    html = render_html(data)
    assert "Pre-classification against verification" in html and check.head_sha256 in html
    assert f"{n_verified} cells with both a pre-classified and a verified class" in html
    original = log_path(inf.path).read_bytes()
    try:
        log_path(inf.path).write_bytes(original.replace(b'"user":"cy"', b'"user":"zz"'))
        html = render_html(load_report_data(comparison.path))
        assert "The verification log is not intact, so no figure is computed from it" in html
        assert "Not computed: the verification log is not intact" in html
    finally:
        log_path(inf.path).write_bytes(original)
