"""The sign-off report: PDF text and pixels, the HTML in a real browser, determinism, tamper evidence.

One small phantom study (simulated slides with expert labels and one corrupt image) is run once
through `wbcv run` as a user would; the tests read what it wrote.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, run_wbcv
from wbcv.base.errors import WbcvError
from wbcv.cli import main as wbcv_main
from wbcv.fixtures.phantom import PHANTOM_MODEL, write_phantom_library
from wbcv.fixtures.simulator import simulate_study
from wbcv.inference.library import read_cell_library
from wbcv.validation.integrity import verify_record
from wbcv.validation.pdf import CHROMIUM_ARGS, DRAWN_FIGURES_JS, find_chromium
from wbcv.validation.report import load_report_data, render_html, write_report

PROTOCOL = REPO / "fixtures" / "samples" / "protocol.yaml"
MEASURANDS = ("NEUT#", "LYMPH#", "MONO#", "EO#", "BASO#", "NEUT%", "LYMPH%")


@pytest.fixture(scope="module")
def study_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("report")
    library = write_phantom_library(root / "library", 20, seed=3)
    study = root / "study"
    simulate_study(read_cell_library(library), study, 16, 120, seed=5)  # the protocol needs 100 cells
    first_slide = sorted(p for p in study.iterdir() if p.is_dir())[0]
    (first_slide / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    runs = root / "runs"
    result = run_wbcv(
        "run",
        str(study),
        "--reference",
        str(study / "XN_SAMPLE.csv"),
        "--protocol",
        str(PROTOCOL),
        "--out",
        str(runs),
        "--model",
        PHANTOM_MODEL,
        "--no-progress",
        "--prepared-by",
        "Ada Lovelace, QA engineer",
        timeout=600,
    )
    assert result.returncode in (0, 3), result.stdout + result.stderr
    compare_run = next(p for p in runs.iterdir() if "-compare-" in p.name)
    infer_run = next(p for p in runs.iterdir() if "-compare-" not in p.name and not p.name.startswith("."))
    return {"compare": compare_run, "infer": infer_run, "stdout": result.stdout}


def pdf_text(pdf: Path) -> str:
    return subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout


def pdf_pages(pdf: Path) -> int:
    info = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))  # type: ignore[union-attr]


def test_run_writes_both_report_files_and_prints_the_manifest_hash(study_run):
    report = study_run["compare"] / "report"
    assert sorted(p.name for p in report.iterdir()) == ["manifest.json", "report.html", "report.pdf"]
    manifest = json.loads((report / "manifest.json").read_text())
    printed = re.search(r"report manifest \S+ sha256 ([0-9a-f]{64})", study_run["stdout"])
    assert printed, study_run["stdout"]
    assert (
        printed.group(1)
        == subprocess.run(["sha256sum", str(report / "manifest.json")], capture_output=True, text=True).stdout.split()[
            0
        ]
    )
    assert manifest["run_id"] == study_run["compare"].name


def test_pdf_text_has_the_verdict_hashes_signature_block_and_page_numbers(study_run):
    run = study_run["compare"]
    pdf = run / "report" / "report.pdf"
    text = pdf_text(pdf)
    flat = re.sub(r"\s+", "", text)
    verdict = json.loads((run / "verdict.json").read_text())
    assert f"OVERALL: {verdict['overall'].upper()}" in text
    table = text[text.index("1. Verdict") : text.index("Why")]
    for m in verdict["measurands"]:
        assert m["measurand"] in table
        assert m["reason"].replace(" ", "")[:60] in flat  # the why-line of every measurand
    record_sha = subprocess.run(["sha256sum", str(run / "run.json")], capture_output=True, text=True).stdout.split()[0]
    record = json.loads((run / "run.json").read_text())
    for digest in (
        record_sha,
        record["inputs"]["reference"]["sha256"],
        record["inputs"]["protocol"]["sha256"],
        record["inputs"]["inference_run"]["model"]["sha256"],
        record["inputs"]["inference_run"]["record_sha256"],
    ):
        assert digest in flat, digest
    assert f"WBCV-VR-{record_sha[:12].upper()}" in text
    for role in ("Prepared by", "Reviewed by", "Approved by"):
        assert role in text
    assert "Ada Lovelace" in text and "QA engineer" in text
    n = pdf_pages(pdf)
    assert n >= 10
    pages = text.split("\f")
    for i in range(1, n + 1):
        assert f"page {i} of {n}" in pages[i - 1], f"page {i} has no page number"


def test_pdf_lists_exclusions_skipped_cells_unclassified_and_methods(study_run):
    text = pdf_text(study_run["compare"] / "report" / "report.pdf")
    assert "technical row" in text and "rerun" in text  # the simulator's QC rows and rerun
    assert "zz-broken.jpg" in text  # the corrupt image, a skipped cell with its reason
    assert "Unclassified cells" in text and "Cell-level confusion matrix" in text
    assert "carry an expert label" in text
    for convention in ("Clopper–Pearson", "inverted-CDF", "bootstrap", "Passing–Bablok", "jackknife", "Binomial"):
        assert convention in text, convention


def test_pdf_pages_render_with_the_verification_plot_lines(study_run, tmp_path):
    pdf = study_run["compare"] / "report" / "report.pdf"
    text = pdf_text(pdf).split("\f")
    page = next(i for i, t in enumerate(text, 1) if "2.1 NEUT#" in t)
    subprocess.run(["pdftoppm", "-r", "150", "-png", "-f", str(page), "-l", str(page), str(pdf), str(tmp_path / "p")])
    png = next(tmp_path.glob("p*.png"))
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)

    def near(colour: str) -> int:
        target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(rgb - target).sum(axis=2) < 60).sum())

    assert near("#d62728") > 100, "no red limit lines on the verification-plot page"
    assert near("#1f4fd6") > 100, "no blue coverage lines on the verification-plot page"
    assert near("#333333") > 50, "no sample points"


def test_html_is_self_contained_and_every_plot_renders_without_console_errors(study_run):
    from playwright.sync_api import sync_playwright

    html = study_run["compare"] / "report" / "report.html"
    source = html.read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=\"https?:", source), "fetches something from the web"
    n_figures = source.count('<div class="figure">')
    assert n_figures == 3 * len(MEASURANDS) + 1
    problems: list[str] = []
    external: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_chromium(), args=list(CHROMIUM_ARGS))
        page = browser.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("request", lambda r: external.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page.goto(html.as_uri(), wait_until="load")
        page.wait_for_function(f"{DRAWN_FIGURES_JS} >= {n_figures}")
        drawn = page.evaluate(
            """() => [...document.querySelectorAll('.js-plotly-plot')].map(gd => ({
                id: gd.id,
                traces: gd.data.length,
                points: gd.querySelectorAll('.scatterlayer .point, .heatmaplayer image').length,
                lines: gd.data.filter(t => t.line && t.line.dash === 'dot').map(t => t.line.color),
            }))"""
        )
        browser.close()
    assert problems == [] and external == []
    assert len(drawn) == n_figures and len({d["id"] for d in drawn}) == n_figures  # ids never collide
    for d in drawn:
        assert d["points"] > 0, f"{d['id']} drew nothing"
    verification = [d for d in drawn if d["id"].endswith("-verification")]
    assert len(verification) == len(MEASURANDS)
    for d in verification:
        assert d["lines"].count("#d62728") == 2 and d["lines"].count("#1f4fd6") == 2, d


def test_same_record_gives_byte_identical_html_and_the_same_pdf_text(study_run, tmp_path):
    run = study_run["compare"]
    again = render_html(load_report_data(run), [_prepared()])
    assert again.encode() == (run / "report" / "report.html").read_bytes()
    copy = write_report(run, [_prepared()], out_dir=tmp_path / "copy")
    assert copy.html.read_bytes() == (run / "report" / "report.html").read_bytes()
    assert pdf_text(copy.pdf) == pdf_text(run / "report" / "report.pdf")


def _prepared():
    from wbcv.validation.report import Signatory

    return Signatory("Prepared by", "Ada Lovelace", "QA engineer")


def wbcv(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The command line in this process (the subprocess path is covered by the fixture's `wbcv run`)."""
    rc = wbcv_main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_an_existing_report_is_never_overwritten(study_run, capsys):
    rc, _, err = wbcv(capsys, "report", str(study_run["compare"]))
    assert rc == 2 and "never overwritten" in err and "--out" in err


def test_report_of_an_inference_run_is_refused_with_a_message(study_run, tmp_path, capsys):
    rc, _, err = wbcv(capsys, "report", str(study_run["infer"]), "--out", str(tmp_path / "r"))
    assert rc == 2 and "a report is made from a comparison run" in err


def test_missing_chromium_gives_a_clear_message(study_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WBCV_CHROMIUM", str(tmp_path / "no-such-browser"))
    rc, _, err = wbcv(capsys, "report", str(study_run["compare"]), "--out", str(tmp_path / "r"))
    assert rc == 2 and "WBCV_CHROMIUM" in err and "Chromium" in err
    assert not (tmp_path / "r").exists()  # failed before writing anything


def _flip_byte(path: Path) -> bytes:
    original = path.read_bytes()
    path.chmod(0o644)
    data = bytearray(original)
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return original


def _restore(path: Path, original: bytes) -> None:
    path.write_bytes(original)
    path.chmod(0o444)


@pytest.mark.parametrize(
    ("which", "name"),
    [
        ("compare", "comparison.parquet"),
        ("compare", "statistics.json"),
        ("compare", "report/report.pdf"),
        ("compare", "report/report.html"),
        ("infer", "predictions.parquet"),
        ("infer", "inputs.parquet"),
    ],
)
def test_verify_names_a_file_changed_by_one_byte(study_run, which, name):
    compare = study_run["compare"]
    assert verify_record(compare).intact
    target = study_run[which] / name
    original = _flip_byte(target)
    try:
        found = verify_record(compare).findings
        assert [(f.kind, f.path) for f in found] == [("changed", name if which == "compare" else str(target))]
        if which == "compare" and not name.startswith("report/"):
            with pytest.raises(WbcvError, match=re.escape(name)):
                load_report_data(compare)  # no report certifies altered data
    finally:
        _restore(target, original)
    assert verify_record(compare).intact


def test_wbcv_verify_exits_4_and_names_the_file(study_run):
    target = study_run["compare"] / "verdict.json"
    original = _flip_byte(target)
    try:
        result = run_wbcv("verify", str(study_run["compare"]))
    finally:
        _restore(target, original)
    assert result.returncode == 4 and "changed: verdict.json" in result.stdout and "NOT INTACT" in result.stdout
    intact = run_wbcv("verify", str(study_run["compare"]))
    assert intact.returncode == 0 and "report manifest" in intact.stdout and "made from run" in intact.stdout


def test_verify_names_added_and_removed_report_files(study_run):
    report = study_run["compare"] / "report"
    report.chmod(0o755)
    try:
        (report / "notes.txt").write_text("added later")
        pdf = (report / "report.pdf").read_bytes()
        (report / "report.pdf").unlink()
        found = {(f.kind, f.path) for f in verify_record(study_run["compare"]).findings}
        assert found == {("added", "report/notes.txt"), ("missing", "report/report.pdf")}
    finally:
        (report / "notes.txt").unlink(missing_ok=True)
        (report / "report.pdf").write_bytes(pdf)
        (report / "report.pdf").chmod(0o444)
        report.chmod(0o555)


def test_a_report_left_half_written_by_a_killed_process_is_replaced(study_run, tmp_path):
    from wbcv.validation.integrity import REPORT_STAGING
    from wbcv.validation.study import run_comparison

    infer = study_run["infer"]
    record = json.loads((study_run["compare"] / "run.json").read_text())
    fresh = run_comparison(infer, Path(record["inputs"]["reference"]["path"]), PROTOCOL, tmp_path).run_dir
    staging = fresh / REPORT_STAGING
    fresh.chmod(0o755)
    staging.mkdir()
    (staging / "report.html").write_text("half")
    fresh.chmod(0o555)
    assert {(f.kind, f.path) for f in verify_record(fresh).findings} == {("added", f"{REPORT_STAGING}/report.html")}
    write_report(fresh)  # the half-written report is not data: it is replaced
    assert not staging.exists() and verify_record(fresh).intact


def test_labels_state_the_protocols_confidence_coverage_and_effective_limit(study_run):
    """A protocol at 90 % confidence and 80 % coverage: the verdict table, the statistics and the
    methods say 90 % CI and E80, nowhere a fixed 95 % CI; the verification plots' red lines are
    the effective limit max(L, 100·A/reference) with the legend naming both limits. (Only the
    rendering changes here; the statistics stay those of the run.)"""
    import dataclasses

    from markupsafe import escape

    data = load_report_data(study_run["compare"])
    protocol = dataclasses.replace(data.protocol, confidence=0.9, required_coverage=0.8)
    html = render_html(
        dataclasses.replace(data, protocol=protocol, record=dataclasses.replace(data.record, protocol=protocol))
    )
    assert "Coverage (90 % CI)</th><th>E80</th>" in html
    # (the verdict reasons were written by the run at its real 95 %: leave them out)
    labels = re.sub(r"<script.*?</script>", "", html, flags=re.S)  # plotly.js has "E95" in a Unicode table
    for v in data.verdicts:
        labels = labels.replace(str(escape(v["reason"])), "")
    assert "95 % CI" not in labels and "E95" not in labels
    assert "90 % CI" in html and "80 %-coverage error (E80)" in html
    assert "±10 % or ±0.2 10^3/uL, whichever is wider (the lines widen below a reference of 2 10^3/uL)" in html
    # the plots' red lines, in the figures' JSON (plotly escapes ± and /)
    assert r'"name":"\u00b110 % allowable error or \u00b10.2 10^3\u002fuL, whichever is wider"' in html
    assert r'"name":"\u00b110 % allowable error or \u00b12 percentage points, whichever is wider"' in html
