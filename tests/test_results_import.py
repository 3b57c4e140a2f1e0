"""Analyzer exports in place of an inference run: `wbcv import-results` and `wbcv compare --results`.

The example exports in fixtures/samples/results/ were written by fixtures/analyzer_exports.py from a
simulated study whose slide counts are known (fixtures.simulator.draw_samples), so every count an
importer makes is checked against the truth, not against itself.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wbcv.base.errors import WbcvError
from wbcv.base.records import ComparisonRecord, ResultsRecord
from wbcv.base.runstore import read_run_record
from wbcv.base.tables import CELLS_FILE, COUNTS_FILE, EXCLUDED_FILE, IMPORT_EXCLUDED_FILE, STATISTICS_FILE
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.cli import main
from wbcv.fixtures import analyzer_exports
from wbcv.fixtures.simulator import draw_samples

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "fixtures" / "samples" / "results"
PROTOCOL = REPO / "fixtures" / "samples" / "protocol.yaml"
REFERENCE = SAMPLES / "XN_SAMPLE.csv"
FILES = {"csv": "differential.csv", "cells": "cells.csv", "hl7": "oru.hl7", "astm": "results.astm"}


@pytest.fixture(scope="module")
def truth() -> dict[str, dict[str, int]]:
    samples = draw_samples(analyzer_exports.N_SAMPLES, analyzer_exports.CELLS_PER_SLIDE, seed=analyzer_exports.SEED)
    return {s.sample_id: s.slide_counts for s in samples}


def wbcv(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def runs_of(runs: Path, kind: str) -> list[Path]:
    return sorted(p for p in runs.iterdir() if f"-{kind}-" in p.name)


def test_committed_examples_are_what_the_generator_writes(tmp_path):
    analyzer_exports.write_all(tmp_path)
    for name in [*FILES.values(), "XN_SAMPLE.csv"]:
        assert (tmp_path / name).read_bytes() == (SAMPLES / name).read_bytes(), name


@pytest.mark.parametrize("fmt", list(FILES))
def test_each_export_imports_and_compares_to_a_verdict(fmt, tmp_path, capsys, truth):
    runs = tmp_path / "runs"
    code, out, err = wbcv(
        capsys, "compare", "--results", SAMPLES / FILES[fmt], "--format", fmt,
        "--reference", REFERENCE, "--protocol", PROTOCOL, "--out", runs,
    )  # fmt: skip
    assert code in (0, 3), err  # a verdict: pass or fail, not an input error
    assert "OVERALL:" in out and "results run" in out
    (results_dir,), (compare_dir,) = runs_of(runs, "results"), runs_of(runs, "compare")
    record = read_run_record(results_dir)
    assert isinstance(record, ResultsRecord) and record.input.format == fmt
    comparison = read_run_record(compare_dir)
    assert isinstance(comparison, ComparisonRecord)
    link = comparison.inputs.inference_run
    assert link.kind == "results" and link.model is None and link.run_id == record.run_id
    assert link.analyzer == record.analyzer
    counts = pl.read_parquet(results_dir / COUNTS_FILE)
    assert counts.height == len(truth)
    for row in counts.iter_rows(named=True):
        expected = dict(truth[row["sample_id"]])
        if fmt == "hl7" and row["sample_id"] in LGL_SAMPLES(truth):
            expected["lymphocyte"] -= 1  # exported as "Large granular lymphocytes", not in the default mapping
        assert {c: row[f"k_{c}"] for c in CELL_CLASSES} == expected, row["sample_id"]
        assert row["n_classified"] == sum(expected.values())
        assert row["fraction_neutrophil"] == pytest.approx(expected["neutrophil"] / row["n_classified"])
    assert main(["verify", str(compare_dir)]) == 0


def LGL_SAMPLES(truth: dict[str, dict[str, int]]) -> set[str]:  # noqa: N802 - a constant of the fixture
    ids = list(truth)
    return {ids[n - 1] for n in range(1, len(ids) + 1) if n % 5 == 0 and truth[ids[n - 1]]["lymphocyte"]}


def test_hl7_reads_the_analyzer_and_lists_what_it_left_out(tmp_path, capsys):
    code, _, err = wbcv(capsys, "import-results", SAMPLES / "oru.hl7", "--format", "hl7", "--out", tmp_path)
    assert code == 0, err
    record = read_run_record(runs_of(tmp_path, "results")[0])
    assert isinstance(record, ResultsRecord)
    assert record.analyzer.make == "Sysmex Corporation" and record.analyzer.software_version == "1.2.3"
    assert record.analyzer.serial == "DI60-SN-4711"  # OBX-18, equipment instance identifier
    assert record.counted_from == "percentages" and record.reader.startswith("wbcv.validation.results.hl7_oru")
    assert record.summary.unmapped_classes == {"Large granular lymphocytes": 4}
    assert "'Large granular lymphocytes' 4" in err  # shown, not only recorded
    left = pl.read_parquet(runs_of(tmp_path, "results")[0] / IMPORT_EXCLUDED_FILE)
    reasons = " | ".join(left["reason"])
    assert "a concentration" in reasons and "value type 'ST'" in reasons and "Smudge cells" in reasons


def test_command_line_analyzer_identity_wins_over_the_file(tmp_path, capsys):
    code, _, err = wbcv(
        capsys, "import-results", SAMPLES / "results.astm", "--format", "astm", "--out", tmp_path,
        "--make", "Sysmex", "--serial", "X-1",
    )  # fmt: skip
    assert code == 0, err
    record = read_run_record(runs_of(tmp_path, "results")[0])
    assert isinstance(record, ResultsRecord)
    a = record.analyzer
    assert (a.make, a.model, a.software_version, a.serial) == ("Sysmex", "DI-60", "1.2.3", "X-1")
    assert a.source == "command line, the file"


def test_protocol_mapping_maps_a_laboratory_class(tmp_path, capsys, truth):
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(
        PROTOCOL.read_text()
        + "results_import:\n  classes: {Large granular lymphocytes: lymphocyte}\n"
        + "  analyzer: {make: Sysmex, model: DI-60, serial: '0042'}\n"
    )
    code, _, err = wbcv(
        capsys, "compare", "--results", SAMPLES / "oru.hl7", "--format", "hl7",
        "--reference", REFERENCE, "--protocol", protocol, "--out", tmp_path / "runs",
    )  # fmt: skip
    assert code in (0, 3), err
    results_dir = runs_of(tmp_path / "runs", "results")[0]
    record = read_run_record(results_dir)
    assert isinstance(record, ResultsRecord)
    assert record.mapping.source == "protocol" and record.summary.unmapped_classes == {}
    assert record.mapping.classes["large granular lymphocytes"] == "lymphocyte"
    assert record.analyzer.serial == "0042"  # text as written, not the number 42
    counts = pl.read_parquet(results_dir / COUNTS_FILE)
    for row in counts.iter_rows(named=True):
        assert {c: row[f"k_{c}"] for c in CELL_CLASSES} == truth[row["sample_id"]]


def test_protocol_mapping_with_a_bad_target_is_refused_naming_the_key(tmp_path, capsys):
    protocol = tmp_path / "protocol.yaml"
    protocol.write_text(PROTOCOL.read_text() + "results_import:\n  classes: {Hairy cell: lymphocyt}\n")
    code, _, err = wbcv(capsys, "import-results", SAMPLES / "oru.hl7", "--format", "hl7", "--protocol", protocol)
    assert code == 2
    assert "results_import.classes.Hairy cell" in err and "did you mean 'lymphocyte'" in err


def test_per_cell_table_gives_preclassification_statistics(tmp_path, capsys):
    code, _, err = wbcv(
        capsys, "compare", "--results", SAMPLES / "cells.csv", "--format", "cells",
        "--reference", REFERENCE, "--protocol", PROTOCOL, "--out", tmp_path,
    )  # fmt: skip
    assert code in (0, 3), err
    stats = json.loads((runs_of(tmp_path, "compare")[0] / STATISTICS_FILE).read_text())["preclassification"]
    cells = pl.read_parquet(runs_of(tmp_path, "results")[0] / CELLS_FILE)
    changed = (cells["preclassified"].str.to_lowercase() != cells["verified"].str.to_lowercase()).sum()
    assert stats["n_cells"] == cells.height
    assert stats["reclassification_rate"]["k"] == changed
    assert sum(map(sum, stats["matrix"])) == cells.height
    assert stats["agreement"]["k"] == sum(stats["matrix"][i][i] for i in range(len(stats["categories"])))
    assert 0.85 < stats["kappa"] < 1 and len(stats["per_sample"]) == 24


# --- bad input -----------------------------------------------------------------------------------


def _hl7_text() -> str:
    return (SAMPLES / "oru.hl7").read_bytes().decode("ascii")  # CRLF kept


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.replace("MSH|^~\\&|", "MSH|^~\\|", 1), r"message 1 \(line 1\), MSH: MSH-2 encoding characters"),
        (lambda t: t.replace("MSH|^~\\&|", "MSH|^^\\&|", 1), r"MSH-2 encoding characters '\^\^\\\\&' repeat"),
        (lambda t: t[: t.index("OBX|3|")] + "OBX|3|NM|5905-5^Monocytes", r"message 1 \(line 7\), OBX: truncated"),
        (lambda t: t[: t.index("OBX|1|")], r"message 1 \(line 4\), OBR: no OBX follows: truncated"),
        (lambda t: "PID|1\r\n" + t, r"line 1: segment 'PID|1' before any MSH"),
    ],
    ids=["encoding-chars-short", "encoding-chars-repeated", "truncated-obx", "obr-without-obx", "no-msh"],
)
def test_broken_hl7_is_refused_naming_file_message_and_segment(edit, expected, tmp_path, capsys):
    bad = tmp_path / "bad.hl7"
    bad.write_text(edit(_hl7_text()), newline="")
    code, _, err = wbcv(capsys, "import-results", bad, "--format", "hl7", "--out", tmp_path / "runs")
    assert code == 2 and "Traceback" not in err
    assert str(bad) in err
    assert __import__("re").search(expected, err), err


def test_hl7_escapes_and_repetitions(tmp_path, capsys):
    text = _hl7_text().replace("|SIM0007-00000|", "|SIM\\T\\0007|", 1)
    text = text.replace("|%^percent^UCUM|||||F|", "|%^percent^UCUM|||||F|", 1)
    first_obx = text.index("OBX|1|")
    end = text.index("\r\n", first_obx)
    line = text[first_obx:end].split("|")
    line[5] = f"{line[5]}~{line[5]}"  # a repeated value where one is expected
    text = text[:first_obx] + "|".join(line) + text[end:]
    bad = tmp_path / "esc.hl7"
    bad.write_text(text, newline="")
    code, _, err = wbcv(capsys, "import-results", bad, "--format", "hl7", "--out", tmp_path)
    assert code == 0, err
    run = runs_of(tmp_path, "results")[0]
    assert (
        "SIM&0007"
        in pl.read_parquet(run / COUNTS_FILE)["sample_id"].to_list()
        + pl.read_parquet(run / IMPORT_EXCLUDED_FILE)["sample_id"].to_list()
    )
    left = pl.read_parquet(run / IMPORT_EXCLUDED_FILE).filter(pl.col("sample_id") == "SIM&0007")
    assert any("2 repetitions; one value expected" in r for r in left["reason"])
    # without its neutrophils the percentages no longer sum to 100: the sample is excluded, with the reason
    assert any("percentages sum to" in r for r in left["reason"])


def _astm_bytes() -> bytes:
    return (SAMPLES / "results.astm").read_bytes()


def test_astm_checksum_error_names_the_frame_and_line(tmp_path, capsys):
    data = bytearray(_astm_bytes())
    i = data.index(b"|176|")  # a value in frame 4
    data[i + 1 : i + 4] = b"177"
    bad = tmp_path / "bad.astm"
    bad.write_bytes(bytes(data))
    code, _, err = wbcv(capsys, "import-results", bad, "--format", "astm", "--out", tmp_path)
    assert code == 2
    assert f"{bad} line 4: frame 4: checksum 2F, but the frame's bytes sum to 30" in err


def test_astm_missing_frame_and_missing_terminator_are_refused(tmp_path, capsys):
    data = _astm_bytes()
    frames = data.split(b"\r\n")
    no_frame = b"\r\n".join(frames[:3] + frames[4:])
    bad = tmp_path / "gap.astm"
    bad.write_bytes(no_frame)
    code, _, err = wbcv(capsys, "import-results", bad, "--format", "astm", "--out", tmp_path)
    assert code == 2 and "frame number 5, expected 4: a frame is missing or repeated" in err
    plain = tmp_path / "plain.astm"
    plain.write_text("H|\\^&|||DI-60\rO|1|S1\rR|1|^^^NEUT#|5|cells||||F\r")
    code, _, err = wbcv(capsys, "import-results", plain, "--format", "astm", "--out", tmp_path)
    assert code == 2 and "has no L (terminator) record" in err


def test_astm_plain_records_without_frames(tmp_path, capsys):
    plain = tmp_path / "plain.astm"
    plain.write_text(
        "H|\\^&|||MC-80^2.0^M123\nP|1\nO|1|S&F&1\nR|1|^^^NEUT#|60|cells||||F\nR|2|^^^LYMPH#|30|cells||||X\n"
        "R|3|^^^LYMPH#|35|cells||||F\nR|4|^^^MONO#|5|cells||||F\nL|1|N\n"
    )
    code, _, err = wbcv(capsys, "import-results", plain, "--format", "astm", "--out", tmp_path)
    assert code == 0, err
    run = runs_of(tmp_path, "results")[0]
    row = pl.read_parquet(run / COUNTS_FILE).row(0, named=True)
    assert row["sample_id"] == "S|1"  # &F& is the escaped field delimiter
    assert (row["k_neutrophil"], row["k_lymphocyte"], row["k_monocyte"]) == (60, 35, 5)
    left = pl.read_parquet(run / IMPORT_EXCLUDED_FILE)
    assert left["reason"].to_list() == ["R LYMPH#: result status 'X' (order cannot be done); F, C, V or empty are used"]


def test_cells_without_a_verified_class_are_excluded_with_the_reason(tmp_path, capsys, truth):
    lines = (SAMPLES / "cells.csv").read_text().splitlines()
    first = lines[1].split(",")
    lines[1] = ",".join([*first[:3], ""])  # the verified class of the first cell left empty
    bad = tmp_path / "cells.csv"
    bad.write_text("\n".join(lines) + "\n")
    code, _, err = wbcv(capsys, "import-results", bad, "--format", "cells", "--out", tmp_path)
    assert code == 0, err
    run = runs_of(tmp_path, "results")[0]
    left = pl.read_parquet(run / IMPORT_EXCLUDED_FILE).filter(pl.col("location") == "row 2")
    assert left.height == 1 and left["reason"][0].startswith("no verified class")
    row = pl.read_parquet(run / COUNTS_FILE).filter(pl.col("sample_id") == first[0]).row(0, named=True)
    assert row["n_classified"] in (sum(truth[first[0]].values()) - 1, sum(truth[first[0]].values()))
    assert row["n_files"] == row["n_cells"] + row["n_skipped"] and row["n_skipped"] >= 1  # the cell is not lost


def test_a_cell_listed_twice_is_counted_once(tmp_path, capsys):
    table = tmp_path / "cells.csv"
    table.write_text(
        "sample_id,cell_id,preclassified,verified\nS1,c1,Lymphocyte,Lymphocyte\nS1,c2,Neutrophil,Neutrophil\n"
        "S1,c1,Lymphocyte,Lymphocyte\n"
    )
    code, _, err = wbcv(capsys, "import-results", table, "--format", "cells", "--out", tmp_path)
    assert code == 0, err
    run = runs_of(tmp_path, "results")[0]
    row = pl.read_parquet(run / COUNTS_FILE).row(0, named=True)
    assert (row["k_lymphocyte"], row["k_neutrophil"], row["n_skipped"], row["n_files"]) == (1, 1, 1, 3)
    left = pl.read_parquet(run / IMPORT_EXCLUDED_FILE)
    assert left["reason"].to_list() == ["same cell as row 2 (sample 'S1', cell 'c1'); counted once"]


def test_compare_takes_a_results_run_like_an_inference_run(tmp_path, capsys):
    code, _, err = wbcv(capsys, "import-results", SAMPLES / "differential.csv", "--format", "csv", "--out", tmp_path)
    assert code == 0, err
    results_dir = runs_of(tmp_path, "results")[0]
    code, _, err = wbcv(capsys, "compare", results_dir, "--reference", REFERENCE, "--protocol", PROTOCOL)
    assert code in (0, 3), err
    comparison = read_run_record(runs_of(tmp_path, "compare")[0])  # beside the results run, as for inference
    assert isinstance(comparison, ComparisonRecord) and comparison.inputs.inference_run.kind == "results"
    code, _, err = wbcv(
        capsys, "compare", runs_of(tmp_path, "compare")[0], "--reference", REFERENCE, "--protocol", PROTOCOL
    )
    assert code == 2 and "this is a comparison run; give the run of `wbcv infer` or `wbcv import-results`" in err


def test_unknown_class_in_a_table_is_counted_and_shown(tmp_path, capsys):
    table = tmp_path / "diff.csv"
    table.write_text("sample_id,NEUT,LYMPH,MONO,EO,BASO,Hairy cells\nS1,60,30,5,3,1,7\nS2,50,40,6,2,2,0\n")
    code, _, err = wbcv(capsys, "import-results", table, "--format", "csv", "--out", tmp_path)
    assert code == 0
    assert "classes not in the mapping (cells excluded): 'Hairy cells' 7" in err
    run = runs_of(tmp_path, "results")[0]
    record = read_run_record(run)
    assert isinstance(record, ResultsRecord) and record.summary.unmapped_classes == {"Hairy cells": 7}
    row = pl.read_parquet(run / COUNTS_FILE).row(0, named=True)
    assert (row["n_files"], row["n_skipped"], row["n_classified"]) == (106, 7, 99)


def test_table_value_that_is_not_a_number_names_row_and_column(tmp_path, capsys):
    table = tmp_path / "diff.csv"
    table.write_text("sample_id;NEUT%;LYMPH%;total\nS1;60,5;39,5;200\nS2;abc;40;200\n")
    code, _, err = wbcv(capsys, "import-results", table, "--format", "csv", "--out", tmp_path)
    assert code == 2 and f"{table} row 3, column 'NEUT%': 'abc' is not a count or percentage" in err


def test_percentages_without_a_total_exclude_the_sample_and_the_comparison_says_why(tmp_path, capsys):
    reference = tmp_path / "ref.csv"
    reference.write_text("sample_id,WBC,NEUT%,LYMPH%\nS1,5.0,60,40\nS2,6.0,50,50\n")
    table = tmp_path / "diff.csv"
    table.write_text("sample_id,NEUT%,LYMPH%,total\nS1,60.5,39.5,200\nS2,50,50,\n")
    protocol = tmp_path / "p.yaml"
    protocol.write_text(
        "protocol: {id: P, version: '1'}\nmeasurands:\n  NEUT%: {allowable_error_pct: 10}\n"
        "exclusions: {min_cells: 10}\n"
    )
    code, _, err = wbcv(
        capsys, "compare", "--results", table, "--format", "csv", "--reference", reference,
        "--protocol", protocol, "--out", tmp_path / "runs",
    )  # fmt: skip
    assert code == 2  # S2's empty total is a value that is not a number
    assert "row 3, column 'total'" in err
    table.write_text("sample_id,NEUT%,LYMPH%\nS1,60.5,39.5\nS2,50,50\n")
    code, _, err = wbcv(
        capsys, "compare", "--results", table, "--format", "csv", "--reference", reference,
        "--protocol", protocol, "--out", tmp_path / "runs2", "--total-cells", "200",
    )  # fmt: skip
    assert code == 0, err
    shutil.rmtree(tmp_path / "runs2")
    code, _, err = wbcv(
        capsys, "compare", "--results", table, "--format", "csv", "--reference", reference,
        "--protocol", protocol, "--out", tmp_path / "runs3",
    )  # fmt: skip
    assert code == 3  # nothing left to compare: no sample within limits
    excluded = pl.read_parquet(runs_of(tmp_path / "runs3", "compare")[0] / EXCLUDED_FILE)
    reasons = dict(zip(excluded["sample_id"], excluded["reason"], strict=True))
    assert reasons["S1"].startswith("excluded at import (row 2): percentages without the number of cells counted")


def test_compare_needs_a_run_or_results_not_both(capsys, tmp_path):
    code, _, err = wbcv(capsys, "compare", "--reference", REFERENCE, "--protocol", PROTOCOL)
    assert code == 2 and "give either RUN_DIR" in err
    code, _, err = wbcv(
        capsys, "compare", "--results", SAMPLES / "oru.hl7", "--reference", REFERENCE, "--protocol", PROTOCOL
    )
    assert code == 2 and "--results needs --format" in err


# --- the report of a results comparison --------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FILES))
def test_report_says_what_the_export_has(fmt, tmp_path, capsys):
    from wbcv.validation.report import load_report_data, render_html

    code, _, err = wbcv(
        capsys, "compare", "--results", SAMPLES / FILES[fmt], "--format", fmt,
        "--reference", REFERENCE, "--protocol", PROTOCOL, "--out", tmp_path,
    )  # fmt: skip
    assert code in (0, 3), err
    html = render_html(load_report_data(runs_of(tmp_path, "compare")[0]))
    results = read_run_record(runs_of(tmp_path, "results")[0])
    assert isinstance(results, ResultsRecord)
    assert "Analyzer under test" in html and results.input.sha256 in html and "Left out at import" in html
    assert "Model weights" not in html
    assert "mapped to unclassified by the class mapping" in html and "ensemble would not commit" not in html
    if fmt == "cells":
        assert "Pre-classification against verification" in html and "Reclassification rate" in html
        assert "Wilson score interval (Wilson 1927" in html
    else:
        assert "not single cells: no cell-level results" in html
        assert "Pre-classification against verification" not in html


def test_verify_inputs_rehashes_the_results_file(tmp_path, capsys):
    export = tmp_path / "oru.hl7"
    shutil.copy(SAMPLES / "oru.hl7", export)
    runs = tmp_path / "runs"
    code, _, err = wbcv(
        capsys, "compare", "--results", export, "--format", "hl7",
        "--reference", REFERENCE, "--protocol", PROTOCOL, "--out", runs,
    )  # fmt: skip
    assert code in (0, 3), err
    (run,), (comparison,) = runs_of(runs, "results"), runs_of(runs, "compare")
    record = read_run_record(run)
    assert isinstance(record, ResultsRecord)
    # the wording of a results run: one exported file with its sha256, not a batch of cell folders
    expected = (
        f"input: the exported results file {export.resolve()} (hl7, {export.stat().st_size} bytes, recorded sha256 "
        f"{record.input.sha256}) re-hashed (results run {run})"
    )
    for checked in (run, comparison):  # the results run itself, or the comparison made from it
        code, out, _ = wbcv(capsys, "verify", "--inputs", checked)
        assert code == 0, out
        assert expected in out and "batch" not in out and "inference run" not in out
    export.write_bytes(export.read_bytes().replace(b"|87.6|", b"|78.6|", 1))
    code, out, _ = wbcv(capsys, "verify", "--inputs", comparison)
    assert code == 4 and "input changed: oru.hl7 (content differs from the recorded sha256)" in out
    export.unlink()
    code, out, _ = wbcv(capsys, "verify", "--inputs", run)
    assert code == 4 and "input missing: oru.hl7" in out and "NOT INTACT" in out


# --- hostile input: never a traceback -------------------------------------------------------------

_HL7_HEAD = "MSH|^~\\&|DI-60|LAB|LIS|HOSP|20260101||ORU^R01|1|P|2.5.1\rOBR|1||S1|x\r"
_segment_text = st.text(alphabet=st.sampled_from(list("OBXPIDMSH|^~\\&0123456789.%\r\n -abc{}")), max_size=200)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tail=_segment_text)
def test_any_hl7_text_is_read_or_refused_with_a_message(tmp_path, tail):
    from wbcv.validation.results.counting import Collected
    from wbcv.validation.results.hl7_oru import read_hl7
    from wbcv.validation.results.mapping import default_mapping

    f = tmp_path / "fuzz.hl7"
    f.write_bytes((_HL7_HEAD + tail).encode())
    try:
        read_hl7(f, default_mapping(), Collected())
    except WbcvError as e:
        assert str(f) in str(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_any_astm_bytes_are_read_or_refused_with_a_message(tmp_path, data):
    from wbcv.validation.results.astm_records import read_astm
    from wbcv.validation.results.counting import Collected
    from wbcv.validation.results.mapping import default_mapping

    f = tmp_path / "fuzz.astm"
    f.write_bytes(b"H|\\^&|||X\r" + data)
    try:
        read_astm(f, default_mapping(), Collected())
    except WbcvError as e:
        assert str(f) in str(e)


def test_a_fifo_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "export.hl7"
    os.mkfifo(fifo)
    code, _, err = wbcv(capsys, "import-results", fifo, "--format", "hl7", "--out", tmp_path)
    assert code == 2 and "not a regular file; expected a file of HL7 or ASTM messages" in err


@pytest.mark.parametrize("fmt", list(FILES))
def test_the_dashboard_shows_each_export_kind(fmt, tmp_path, capsys):
    """For each input kind, the comparison in the dashboard: listed with the analyzer, its verdict
    table and verification plot, the gallery saying why there are no cells, and the
    pre-classification tab (figures for a per-cell table, the reason otherwise). The browser test
    of that tab is tests/test_dashboard_preclassification.py."""
    from wbcv.dashboards.app import _gallery, _verification_view
    from wbcv.dashboards.data import RunCatalog
    from wbcv.dashboards.preclassification import preclassification_view

    code, _, err = wbcv(
        capsys, "compare", "--results", SAMPLES / FILES[fmt], "--format", fmt,
        "--reference", REFERENCE, "--protocol", PROTOCOL, "--out", tmp_path,
    )  # fmt: skip
    assert code in (0, 3), err
    catalog = RunCatalog(tmp_path)
    (summary,) = catalog.summaries()  # the results run is not a comparison: not listed, and not "unreadable"
    assert catalog.unreadable() == []
    results = read_run_record(runs_of(tmp_path, "results")[0])
    assert isinstance(results, ResultsRecord)
    assert summary.model == results.analyzer.label and summary.verdict == ("pass" if code == 0 else "fail")
    if fmt == "astm":
        assert summary.model == "DI-60 (software 1.2.3, serial SN4711)"
    run = catalog.get(summary.run_id)
    figure, verdict = _verification_view(run, run.measurands[0], [])
    (samples,) = [t for t in figure.data if t.name == "samples"]
    assert len(samples.x) == run.verdicts[run.measurands[0]]["n"] > 0
    assert f"overall {summary.verdict.upper()}" in str(verdict)
    (paragraph,) = _gallery(run, run.table["sample_id"][0])
    assert "cells not available (the counts are an analyzer's exported results (" in str(paragraph.children)
    tab = " ".join(str(c) for c in preclassification_view(run))
    if fmt == "cells":
        assert "preclass-summary" in tab and "preclass-matrix" in tab
    else:
        assert "No pre-classification figures" in tab and "per-sample export" in tab
