"""Precision and qualitative studies as sealed runs (validation/study_run.py) and their report
(validation/study_report.py): what is sealed, that it verifies, that tampering is found, the report."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import polars as pl
import pytest

from wbcv.base.atomic import sha256_file
from wbcv.base.errors import WbcvError
from wbcv.base.records import PrecisionRecord, QualitativeRecord, parse_record, to_json
from wbcv.base.runstore import read_run_record
from wbcv.cli import EXIT_INPUT_ERROR, EXIT_OK, EXIT_TAMPERED, main
from wbcv.validation import flag_table, precision_table
from wbcv.validation.integrity import verify_record
from wbcv.validation.qualitative import flag_agreement
from wbcv.validation.report import fmt
from wbcv.validation.study_report import document_id, render_study_html
from wbcv.validation.study_run import (
    RESULT_FILE,
    STUDY_EXCLUDED_FILE,
    load_study,
    precision_run,
    qualitative_run,
    study_result,
)

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "samples"


def _tamper(path: Path, text: str) -> None:
    path.parent.chmod(0o755)
    path.chmod(0o644)
    path.write_text(text, encoding="utf-8")


def test_precision_run_seals_input_hash_result_and_exclusions(tmp_path):
    table = tmp_path / "p.csv"
    shutil.copy(SAMPLES / "precision.csv", table)
    with table.open("a", encoding="utf-8") as f:
        f.write("L1,1,1,1,NEUT%,not-a-number,200\n")  # one excluded row, on purpose
    claim = precision_table.parse_claim("NEUT%:6,7", "cv")
    report, run = precision_run(table, tmp_path / "runs", [claim], confidence=0.9)
    record = run.record
    assert isinstance(record, PrecisionRecord) and record.kind == "precision"
    assert record.input.sha256 == sha256_file(table) and record.input.bytes == table.stat().st_size
    assert record.confidence == 0.9 and record.claims[0]["measurand"] == "NEUT%"
    assert record.summary.n_rows == report.n_rows and record.summary.n_rows_excluded == 1
    assert record.summary.n_groups == 4
    # the sealed result is what the command computes from the same file, and every exclusion is listed
    again = precision_table.run_precision(table, [claim], confidence=0.9)
    assert study_result(run) == json.loads(json.dumps(precision_table.report_payload(again)))
    excluded = pl.read_parquet(run.run_dir / STUDY_EXCLUDED_FILE)
    assert excluded.height == 1 and "not-a-number" in excluded["reason"][0]
    assert excluded["line"][0] == len(table.read_text().splitlines())
    # sealed: read-only, every file in run.json, verified intact, the record reads back the same
    assert not os.access(run.run_dir, os.W_OK) or os.geteuid() == 0
    assert not (run.run_dir.stat().st_mode & stat.S_IWUSR)
    assert set(record.files) == {RESULT_FILE, STUDY_EXCLUDED_FILE}
    assert verify_record(run.run_dir).intact
    assert read_run_record(run.run_dir) == record
    assert parse_record(to_json(record), "x") == record


def test_qualitative_run_sealed_and_result_matches_the_2x2_tables(tmp_path):
    report, run = qualitative_run(SAMPLES / "flags.csv", tmp_path / "runs")
    assert isinstance(run.record, QualitativeRecord)
    result = study_result(run)
    for f in report.flags:
        expected = flag_agreement(f.flag, f.true_positive, f.false_positive, f.false_negative, f.true_negative)
        got = next(x for x in result["flags"] if x["flag"] == f.flag)
        assert got["ppa"]["estimate"] == expected.ppa.estimate and got["n"] == expected.n
    assert run.record.summary.n_rows_excluded == len(report.excluded) > 0  # the fixture has a repeated row
    assert pl.read_parquet(run.run_dir / STUDY_EXCLUDED_FILE).height == len(report.excluded)
    assert verify_record(run.run_dir).intact


def test_a_changed_result_is_found_and_refused_for_a_report(tmp_path, capsys):
    _, run = qualitative_run(SAMPLES / "flags.csv", tmp_path / "runs")
    doc = study_result(run)
    doc["flags"][0]["true_positive"] += 1
    _tamper(run.run_dir / RESULT_FILE, json.dumps(doc))
    v = verify_record(run.run_dir)
    assert not v.intact and [str(f) for f in v.findings] == [f"changed: {RESULT_FILE}"]
    assert main(["verify", str(run.run_dir)]) == EXIT_TAMPERED
    assert main(["report", str(run.run_dir)]) == EXIT_INPUT_ERROR
    assert "altered after it was sealed" in capsys.readouterr().err


def test_the_file_changing_while_read_is_refused(tmp_path, monkeypatch):
    table = tmp_path / "f.csv"
    shutil.copy(SAMPLES / "flags.csv", table)
    real = flag_table.run_qualitative

    def and_then_changed(path, confidence=0.95, acceptance=None):
        out = real(path, confidence=confidence, acceptance=acceptance)
        with open(path, "a", encoding="utf-8") as f:
            f.write("S999,blasts,1,1\n")
        return out

    monkeypatch.setattr(flag_table, "run_qualitative", and_then_changed)
    with pytest.raises(WbcvError, match="changed while it was read"):
        qualitative_run(table, tmp_path / "runs")
    assert not any((tmp_path / "runs").glob("*qualitative*"))


def test_load_study_refuses_another_kind_of_run(tmp_path):
    _, run = precision_run(SAMPLES / "precision.csv", tmp_path / "runs")
    document = json.loads((run.run_dir / "run.json").read_text())
    document["kind"] = "qualitative"  # a precision record read as a qualitative one lacks nothing it needs
    assert isinstance(parse_record(document, "x"), QualitativeRecord)
    with pytest.raises(WbcvError, match="field 'kind' is \"comparisons\""):
        parse_record({**document, "kind": "comparisons"}, "x")
    with pytest.raises(WbcvError, match="not a finished wbcv run"):
        load_study(tmp_path)


def test_report_html_shows_the_sealed_figures_and_is_deterministic(tmp_path):
    table = tmp_path / "f.csv"
    table.write_text("sample_id,flag,analyzer,reference\nA,blasts,1,1\nB,blasts,0,1\nC,ig,0,0\nD,oops,x,1\n")
    _, run = qualitative_run(table, tmp_path / "runs")
    sha = sha256_file(run.run_dir / "run.json")
    html = render_study_html(run, sha)
    assert html == render_study_html(run, sha)
    assert document_id(sha) in html and sha in html and run.record.input.sha256 in html
    assert "1/2" in html and "50.0 %" in html  # blasts PPA = 1/2
    assert "undefined (no sample in this margin)" in html  # blasts NPA and ig PPA: no sample in the margin
    excluded = html.split("<h2>Excluded rows</h2>")[1].split("<h2>Methods</h2>")[0]
    assert '<td class="num">5</td>' in excluded and "is neither positive" in excluded  # line 5: analyzer 'x'


def test_precision_report_html_lists_components_claims_and_floor(tmp_path):
    _, run = precision_run(
        SAMPLES / "precision.csv", tmp_path / "runs", [precision_table.parse_claim("NEUT%:6,7", "cv")]
    )
    html = render_study_html(run, sha256_file(run.run_dir / "run.json"))
    result = study_result(run)
    neut = next(g for g in result["groups"] if (g["sample"], g["measurand"]) == ("L1", "NEUT%"))
    repeatability = neut["components"][0]
    assert f'<td>repeatability</td><td class="num">{fmt(repeatability["sd"])}</td>' in html  # as sealed
    assert "negative estimate set to 0" in html and "NOT verified" in html and "Binomial counting floor" in html
    assert "No row of the input table was excluded." in html


@pytest.mark.slow
def test_cli_seals_reports_and_verifies_a_study(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["precision", str(SAMPLES / "precision.csv"), "--out", str(runs)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "sealed precision run" in out
    (run_dir,) = [p for p in runs.iterdir() if "-precision-" in p.name]
    assert main(["report", str(run_dir), "--prepared-by", "A. Tester,QA"]) == EXIT_OK
    assert (run_dir / "report" / "report.pdf").stat().st_size > 1000
    text = subprocess.run(
        ["pdftotext", str(run_dir / "report" / "report.pdf"), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert "Precision study" in text and "A. Tester" in text and "within-laboratory" in text
    assert main(["verify", str(run_dir)]) == EXIT_OK
    assert main(["report", str(run_dir)]) == EXIT_INPUT_ERROR  # never overwritten
    assert "already exists" in capsys.readouterr().err
