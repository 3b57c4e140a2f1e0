"""Typed run records (``wbcv.base.records``) and the views that read them.

Reading: every field checked, a bad one named with what was expected; runs of format 1 written
before the types (``tests/records/``, sealed by wbcv at commit 924e448) read, and older ones with
fields added since. Writing: what is sealed reads back to the same document with the same key
names. Views: one count of exclusions in the command line, the report and the dashboard; the
dashboard's excluded samples need nothing but the comparison run, so a runs folder that was moved,
without its protocol and reference files, still shows them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from tests.conftest import run_wbcv
from tests.dashboard_support import make_study_runs, serving
from wbcv.base.errors import WbcvError
from wbcv.base.records import ComparisonRecord, InferenceRecord, ProtocolRecord, ProtocolSummary, parse_record, to_json
from wbcv.base.runstore import read_run_record
from wbcv.dashboards.app import SHOW_EXCLUDED, _verification_view
from wbcv.dashboards.data import RunCatalog
from wbcv.validation.report import load_report_data, render_html
from wbcv.validation.study import load_comparison

RECORDS = Path(__file__).parent / "records"
DELETE = object()
#: Sections whose keys are data (file names, measurands, study fields ...), not key names of the format.
DATA_KEYED = (
    "files",
    "parameters",
    "engine",
    "protocol.study",
    "protocol.measurands",
    "protocol.decision_levels",
    "protocol.min_reference",
)


def legacy(name: str) -> dict[str, Any]:
    return json.loads((RECORDS / name).read_text())


def changed(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``doc`` with the field at the dotted ``path`` set to ``value`` (or removed: DELETE)."""
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


def key_paths(doc: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, value in doc.items():
        path = f"{prefix}{key}"
        paths.add(path)
        if isinstance(value, dict) and path not in DATA_KEYED:
            paths |= key_paths(value, f"{path}.")
    return paths


NOT_CHECKED = {
    "verdict": "not_checked",
    "score": None,
    "threshold": None,
    "method": "none: not checked",
    "slides_out_of_domain": [],
}
#: Fields added after the stored records were sealed, with what they read as there.
DOMAIN_ADDED: dict[str, dict[str, Any]] = {
    "inference-run.json": {"domain": NOT_CHECKED},
    "comparison-run.json": {"protocol.require_in_domain": False, "domain": NOT_CHECKED},
}


@pytest.mark.parametrize("name", ["inference-run.json", "comparison-run.json"])
def test_a_sealed_run_of_format_1_reads_and_writes_back_the_same_document(name):
    doc = legacy(name)
    expected = with_fields_added_since(copy.deepcopy(doc))
    for path, value in DOMAIN_ADDED[name].items():  # the operating-domain check (2026-11-30)
        expected = changed(expected, path, value)
    if name == "comparison-run.json":
        # the source run's kind and analyzer, added with results runs (2026-11-30): written back with
        # what a link without them meant, an inference run and no analyzer
        expected["inputs"]["inference_run"] |= {"kind": "inference", "analyzer": None}
    assert to_json(parse_record(doc, name)) == expected


def test_a_comparison_of_a_results_run_links_it_by_kind_with_the_analyzer():
    doc = legacy("comparison-run.json")
    link = doc["inputs"]["inference_run"]
    del link["model"]
    link |= {"kind": "results", "analyzer": {"make": "Sysmex", "model": "DI-60", "source": "command line"}}
    record = parse_record(doc, "c/run.json")
    assert isinstance(record, ComparisonRecord)
    got = record.inputs.inference_run
    assert got.kind == "results" and got.model is None and got.producer == "Sysmex DI-60"
    assert parse_record(legacy("comparison-run.json"), "c/run.json").inputs.inference_run.kind == "inference"
    link["kind"] = "training"
    with pytest.raises(
        WbcvError, match=r"field .inputs\.inference_run\.kind. is \"training\"; expected .inference. or"
    ):
        parse_record(doc, "c/run.json")


def with_fields_added_since(doc: dict[str, Any]) -> dict[str, Any]:
    """A legacy document as it reads back: the protocol fields added with the EP09c additions come
    back with the defaults that state what those runs did (no outlier screening, tertiles, constant
    limits, no regression criterion, no plan)."""
    if doc.get("kind") != "comparison":
        return doc
    out = json.loads(json.dumps(doc))
    out["protocol"] |= {
        "outliers": None,
        "bias_intervals": {},
        "regression_basis": "point_estimate",
        "difference_limits": "constant",
        "plan_strata": {},
        "plan_expected_coverage": None,
    }
    for rule in out["protocol"]["measurands"].values():
        rule["regression"] = None
    out["inputs"].setdefault("plan", None)
    return out


def test_runs_written_before_a_field_existed_read_with_what_those_runs_meant():
    # engine: recorded since 7d9c721, when the Ray engine came; before, the local one was the only one
    doc = changed(changed(legacy("inference-run.json"), "engine", DELETE), "software.cpu", DELETE)
    record = parse_record(doc, "old/run.json")
    assert isinstance(record, InferenceRecord) and record.engine == {"name": "local"} and record.software.cpu is None
    # the whole protocol: recorded since e90eee3; before, its identification and acceptance only
    doc = legacy("comparison-run.json")
    first = ("id", "version", "title", "study", "count_mode", "required_coverage", "basis", "confidence")
    doc["protocol"] = {k: doc["protocol"][k] for k in first}
    record = parse_record(doc, "old/run.json")
    assert isinstance(record, ComparisonRecord) and type(record.protocol) is ProtocolSummary
    assert record.protocol.required_coverage == 0.95 and record.summary.n_exclusions == 5


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("inputs.protocol.sha256", DELETE, "field 'inputs.protocol.sha256' missing; expected a 64-hex string"),
        ("inputs.protocol.sha256", "ABC", "field 'inputs.protocol.sha256' is \"ABC\"; expected a 64-hex string"),
        ("summary.n_excluded", "2", "field 'summary.n_excluded' is \"2\"; expected a whole number"),
        ("verdict", "maybe", "field 'verdict' is \"maybe\"; expected 'pass' or 'fail'"),
        (
            "protocol.measurands.NEUT#.allowable_error_pct",
            None,
            "field 'protocol.measurands.NEUT#.allowable_error_pct' is null; expected a number",
        ),
        # a record with the whole protocol must have all of it
        ("protocol.min_cells", DELETE, "field 'protocol.min_cells' missing; expected a whole number"),
        ("created_utc", "today", "field 'created_utc' is \"today\"; expected a UTC time such as"),
        ("kind", "training", "field 'kind' is \"training\"; expected 'inference' or 'comparison' or 'results'"),
        ("format", "wbcv-run/2", "field 'format' is \"wbcv-run/2\"; expected 'wbcv-run/1'"),
    ],
)
def test_a_bad_field_is_named_with_what_was_expected(path, value, message):
    with pytest.raises(WbcvError) as e:
        parse_record(changed(legacy("comparison-run.json"), path, value), "runs/X/run.json")
    assert str(e.value).startswith(f"runs/X/run.json: {message}")


def test_the_command_line_names_the_bad_field_without_a_traceback(tmp_path):
    run = tmp_path / "20260101T000000Z-compare-00000000"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(changed(legacy("comparison-run.json"), "inputs.protocol.sha256", DELETE)))
    r = run_wbcv("verify", str(run), timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{run}/run.json: field 'inputs.protocol.sha256' missing; expected a 64-hex string" in r.stderr


# --- a study, validated as a user does -----------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The root of a simulated study (study/, protocol-*.yaml) with its runs in runs/."""
    root = tmp_path_factory.mktemp("records")
    make_study_runs(root, n_samples=8, cells_per_slide=20, untrained_model=False)
    return root


ADDED_SINCE: tuple[str, ...] = (
    "protocol.outliers",
    "protocol.bias_intervals",
    "protocol.difference_limits",
    "protocol.regression_basis",
    "protocol.plan_",
    "protocol.results_import",
    "protocol.measurands.",
    "inputs.plan",
    "inputs.inference_run.kind",
    "inputs.inference_run.analyzer",
    "domain",
    "protocol.require_in_domain",
)


@pytest.mark.slow  # starts the command line or a whole run
def test_what_is_sealed_reads_back_to_the_same_document_with_the_same_key_names(study):
    for run in sorted((study / "runs").iterdir()):
        doc = json.loads((run / "run.json").read_text())
        record = read_run_record(run)
        assert to_json(record) == doc
        if isinstance(record, ComparisonRecord):
            assert isinstance(record.protocol, ProtocolRecord)
        old = legacy("comparison-run.json" if isinstance(record, ComparisonRecord) else "inference-run.json")
        # keys are never renamed or removed within the format; the ones added since the stored
        # records were sealed (EP09c additions, plans, results runs, strata) are the only new ones
        assert key_paths(old) <= key_paths(doc), run.name
        added = {k for k in key_paths(doc) - key_paths(old) if not k.startswith(ADDED_SINCE)}
        assert not added, (run.name, sorted(added))


def _layout(runs: Path) -> str:
    with serving(runs) as base, urllib.request.urlopen(f"{base}/_dash-layout", timeout=60) as r:
        return r.read().decode()


def _runs_list_cell(layout: dict[str, Any], header: str) -> Any:
    """The runs list's cell under ``header`` in the first (newest) run's row."""

    def find(node: Any) -> Any:
        if isinstance(node, dict):
            if node.get("props", {}).get("id") == "runs-table":
                return node
            return next((f for v in node.values() if (f := find(v)) is not None), None)
        if isinstance(node, list):
            return next((f for v in node if (f := find(v)) is not None), None)
        return None

    head, body = find(layout)["props"]["children"]
    names = [th["props"]["children"] for th in head["props"]["children"]["props"]["children"]]
    first_row = body["props"]["children"][0]["props"]["children"]
    return first_row[names.index(header)]["props"]["children"]


@pytest.mark.slow  # starts the command line or a whole run
def test_the_command_line_report_and_dashboard_show_one_count_of_exclusions(study, tmp_path):
    inference = next(p for p in (study / "runs").iterdir() if "-compare-" not in p.name)
    out = tmp_path / "runs"
    r = run_wbcv(
        "compare",
        str(inference),
        "--reference",
        str(study / "study" / "XN_SAMPLE.csv"),
        "--protocol",
        str(study / "protocol-10.yaml"),
        "--out",
        str(out),
        timeout=300,
    )
    assert r.returncode in (0, 3), r.stderr
    (run,) = out.iterdir()
    summary = load_comparison(run).summary
    # the definition: the rows of excluded.parquet, each with its reason
    excluded = pl.read_parquet(run / "excluded.parquet")
    assert summary.n_exclusions == excluded.height > 0 and excluded["reason"].null_count() == 0
    text = summary.exclusions_text
    assert text == f"{excluded.height} exclusions"
    assert f"({text}, each with its reason, in excluded.parquet)" in r.stdout
    html = render_html(load_report_data(run))
    assert f"reference samples; {text} (section 3)." in html
    assert f"<p>{text}, each with its reason:" in html
    layout = _layout(out)
    assert f"values compared, {text}" in layout
    assert _runs_list_cell(json.loads(layout), "exclusions") == summary.n_exclusions


def _excluded_points(run_dir_parent: Path) -> tuple[dict[str, Any], list[str]]:
    """The excluded trace of the newest run's NEUT# verification plot, and the plot's annotations."""
    catalog = RunCatalog(run_dir_parent)
    run = catalog.get(catalog.summaries()[0].run_id)
    figure, _ = _verification_view(run, "NEUT#", [SHOW_EXCLUDED])
    traces = [t for t in figure.data if t.name == "excluded (not counted)"]
    points = {s: (x, y) for t in traces for s, x, y in zip(t.text, t.x, t.y, strict=True)}
    return points, [a.text for a in figure.layout.annotations]


@pytest.mark.slow  # starts the command line or a whole run
def test_a_moved_runs_folder_without_its_protocol_still_shows_the_excluded_samples(tmp_path):
    root = tmp_path / "study"
    runs = make_study_runs(root, n_samples=8, cells_per_slide=20, untrained_model=False)
    before, notes = _excluded_points(runs)
    assert before, "the simulated study flags a sample, which the plot shows where it would have been"

    moved = tmp_path / "archive" / "runs"
    moved.parent.mkdir()
    shutil.move(runs, moved)
    for gone in (*root.glob("protocol-*.yaml"), root / "study" / "XN_SAMPLE.csv"):
        gone.unlink()
    after, notes = _excluded_points(moved)
    assert after == before and not any("cannot be drawn" in n for n in notes)
    catalog = RunCatalog(moved)
    run = catalog.get(catalog.summaries()[0].run_id)
    assert run.inference is not None and run.inference.path.parent == moved  # found beside, hash checked


def test_a_run_compared_before_the_values_were_recorded_says_why_it_draws_no_excluded_samples(study, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(study / "runs", runs)
    catalog = RunCatalog(runs)
    newest = catalog.summaries()[0].path
    newest.chmod(0o755)
    table = newest / "excluded.parquet"
    table.chmod(0o644)
    old_layout = pl.read_parquet(table).select("sample_id", "measurand", "source_row", "reason")
    old_layout.write_parquet(table)
    # as such a run was sealed: its record holds the old table's sha256 (an edit alone reads as altered)
    record_path = newest / "run.json"
    record_path.chmod(0o644)
    doc = json.loads(record_path.read_text())
    doc["files"]["excluded.parquet"] = hashlib.sha256(table.read_bytes()).hexdigest()
    record_path.write_text(json.dumps(doc, indent=2))
    points, notes = _excluded_points(runs)
    assert not points and any("compare it again" in n for n in notes)
