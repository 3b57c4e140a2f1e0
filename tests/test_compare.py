"""Joining counts to references, exclusions with reasons, the verdict, and `wbcv compare`/`wbcv run`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import run_wbcv
from wbcv.fixtures.classifiers import counts_table
from wbcv.fixtures.slidesets import build_slide_set
from wbcv.validation.compare import compare
from wbcv.validation.protocol import load_protocol
from wbcv.validation.reference import read_reference
from wbcv.validation.verdict import decide, overall

HEADER = (
    "Sample No.,Date,Time,WBC(10^3/uL),NEUT#(10^3/uL),NEUT#/M,NEUT%(%),LYMPH#(10^3/uL),IG#(10^3/uL),IP SUS(WBC)Blasts?"
)


def counts_frame(rows: list[dict]) -> pl.DataFrame:
    return counts_table(rows, model_id="m")


def protocol(tmp_path: Path, body: str, name: str = "protocol.yaml") -> Path:
    p = tmp_path / name
    p.write_text("protocol: {id: P, version: '1'}\n" + body)
    return p


def reference(tmp_path: Path, rows: list[str]) -> Path:
    p = tmp_path / "XN_SAMPLE.csv"
    p.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    return p


def test_relative_mode_errors_limits_and_exclusions(tmp_path):
    counts = counts_frame(
        [
            {"sample_id": "A", "neutrophil": 60, "lymphocyte": 40},  # f_N = 0.60
            {"sample_id": "B", "neutrophil": 50, "lymphocyte": 50},  # f_N = 0.50
            {
                "sample_id": "C",
                "neutrophil": 1,
                "lymphocyte": 99,
            },  # low count: absolute limit decides
            {"sample_id": "D", "neutrophil": 30, "lymphocyte": 20},  # too few cells (50 < 80)
            {"sample_id": "E", "neutrophil": 60, "lymphocyte": 40},  # flagged
            {"sample_id": "F", "neutrophil": 60, "lymphocyte": 40},  # not in the reference
            {"sample_id": "G", "neutrophil": 60, "lymphocyte": 40},  # marked value
            {
                "sample_id": "Z",
                "neutrophil": 0,
                "lymphocyte": 100,
            },  # reference 0, absolute limit applies
        ]
    )
    ref = read_reference(
        reference(
            tmp_path,
            [
                "A,2026/01/01,08:00,5.00,3.00,,60.0,2.0,0.01,",
                "B,2026/01/01,08:00,4.00,2.40,,60.0,1.6,0.01,",
                "C,2026/01/01,08:00,5.00,0.10,,2.0,4.9,0.01,",
                "D,2026/01/01,08:00,5.00,3.00,,60.0,2.0,0.01,",
                "E,2026/01/01,08:00,5.00,3.00,,60.0,2.0,0.01,1",
                "G,2026/01/01,08:00,5.00,3.00,*,60.0,2.0,0.01,",
                "H,2026/01/01,08:00,5.00,3.00,,60.0,2.0,0.01,",
                "Z,2026/01/01,08:00,5.00,0.00,,0.0,5.0,0.00,",
            ],
        )
    )
    proto = load_protocol(
        protocol(
            tmp_path,
            "measurands: {NEUT#: {allowable_error_pct: 10, absolute_limit: 0.2}}\nexclusions: {min_cells: 80}\n",
        )
    )
    result = compare(counts, ref, proto)
    t = {r["sample_id"]: r for r in result.table.iter_rows(named=True)}
    assert t["A"]["predicted"] == pytest.approx(3.0) and t["A"]["error_pct"] == pytest.approx(0.0)
    assert t["B"]["predicted"] == pytest.approx(2.0) and t["B"]["error_pct"] == pytest.approx(-100 * 0.4 / 2.4)
    assert t["B"]["within_limit"] is False and t["B"]["criterion"] == "relative"
    # C: predicted 0.05 vs 0.10 is -50 %, but |diff| 0.05 <= 0.2 absolute: within, on the absolute criterion
    assert (
        t["C"]["within_limit"] is True
        and t["C"]["criterion"] == "absolute"
        and t["C"]["limit_pct"] == pytest.approx(200)
    )
    assert t["Z"]["error_pct"] is None and t["Z"]["within_limit"] is True
    excluded = {(r["sample_id"], r["measurand"]): r for r in result.excluded.iter_rows(named=True)}
    assert len(excluded) == result.excluded.height == 5  # one row per exclusion
    # samples in both run and reference, excluded as a whole: a row per measurand, with the values
    # they would have had
    d, e = excluded[("D", "NEUT#")], excluded[("E", "NEUT#")]
    assert "50 classified cells, below the protocol's min_cells 80" in d["reason"]
    assert (d["reference"], d["predicted"], d["n_classified"]) == (3.0, pytest.approx(0.6 * 5.0), 50)
    assert d["error_pct"] == pytest.approx(0.0)
    assert "reference flag(s) IP SUS(WBC)Blasts?" in e["reason"]
    assert (e["reference"], e["predicted"], e["error_pct"]) == (3.0, pytest.approx(3.0), pytest.approx(0.0))
    # one excluded value: marked, but its value is known
    g = excluded[("G", "NEUT#")]
    assert "marked * (low reliability)" in g["reason"] and g["reference"] == 3.0 and g["predicted"] == pytest.approx(3)
    # samples on one side only: no value to compare, the measurand blank
    assert excluded[("F", None)]["reason"] == "in the run but not in the reference file"
    assert "not in the run" in excluded[("H", None)]["reason"] and excluded[("H", None)]["predicted"] is None
    # counting-only floor: A has n=100 at p=0.6 and a 10 % limit: P(|k/100 - 0.6| <= 0.06)
    assert 0.7 < t["A"]["counting_coverage"] < 0.85
    # and the band counting alone fills: n = 100, p = 0.6 gives k from 50 to 69 (binomial 2.5 and
    # 97.5 % quantiles), i.e. -16.7 % .. +15.0 %
    assert t["A"]["counting_error_low_pct"] == pytest.approx(-100 / 6, abs=1e-9)
    assert t["A"]["counting_error_high_pct"] == pytest.approx(15.0, abs=1e-9)


def test_excluded_values_are_those_a_comparison_without_the_exclusion_rules_computes(tmp_path):
    """excluded.parquet's would-be values (what the dashboard draws for excluded samples) agree with
    comparing again with flags, marks, min_cells and min_reference switched off."""
    counts = counts_frame(
        [
            {"sample_id": "A", "neutrophil": 55, "lymphocyte": 45},  # compared
            {"sample_id": "D", "neutrophil": 30, "lymphocyte": 20},  # too few cells
            {"sample_id": "E", "neutrophil": 70, "lymphocyte": 30},  # flagged
            {"sample_id": "G", "neutrophil": 66, "lymphocyte": 34},  # NEUT# marked
            {"sample_id": "L", "neutrophil": 2, "lymphocyte": 98},  # NEUT# below min_reference
        ]
    )
    ref = read_reference(
        reference(
            tmp_path,
            [
                "A,2026/01/01,08:00,5.00,3.00,,60.0,2.0,0.01,",
                "D,2026/01/01,08:00,5.00,3.00,,60.0,2.0,0.01,",
                "E,2026/01/01,08:00,4.00,2.60,,65.0,1.4,0.01,1",
                "G,2026/01/01,08:00,6.00,3.60,*,60.0,2.4,0.01,",
                "L,2026/01/01,08:00,5.00,0.05,,1.0,4.9,0.01,",
            ],
        )
    )
    proto = load_protocol(
        protocol(
            tmp_path,
            "measurands: {NEUT#: {allowable_error_pct: 10}, NEUT%: {allowable_error_pct: 10}}\n"
            "exclusions: {min_cells: 80, min_reference: {NEUT#: 0.1}}\n",
        )
    )
    result = compare(counts, ref, proto)
    relaxed = dataclasses.replace(proto, exclude_flags="none", exclude_marks=(), min_cells=0, min_reference={})
    everything = {
        (r["sample_id"], r["measurand"]): r for r in compare(counts, ref, relaxed).table.iter_rows(named=True)
    }
    excluded = result.excluded.filter(pl.col("measurand").is_not_null())
    # D and E whole (both measurands), G's NEUT#, L's NEUT#
    assert sorted(zip(excluded["sample_id"], excluded["measurand"], strict=True)) == [
        ("D", "NEUT#"),
        ("D", "NEUT%"),
        ("E", "NEUT#"),
        ("E", "NEUT%"),
        ("G", "NEUT#"),
        ("L", "NEUT#"),
    ]
    for row in excluded.iter_rows(named=True):
        full = everything[(row["sample_id"], row["measurand"])]
        for column in ("reference", "predicted", "error_pct", "n_classified"):
            assert row[column] == pytest.approx(full[column]), (row["sample_id"], row["measurand"], column)
    assert result.table.height == 4  # A's two values, G's and L's NEUT%


def test_zero_reference_without_absolute_limit_is_excluded_with_the_reason(tmp_path):
    counts = counts_frame([{"sample_id": "Z", "lymphocyte": 100}])
    ref = read_reference(reference(tmp_path, ["Z,2026/01/01,08:00,5.00,0.00,,0.0,5.0,0.00,"]))
    result = compare(
        counts,
        ref,
        load_protocol(protocol(tmp_path, "measurands: {NEUT%: {allowable_error_pct: 10}}\n")),
    )
    assert result.table.height == 0
    assert "reference is 0: the relative error is undefined" in result.excluded["reason"][0]


@pytest.mark.parametrize("rule, kept_row, n_excluded", [("last", 3, 1), ("first", 2, 1), ("reject", None, 2)])
def test_rerun_rule(tmp_path, rule, kept_row, n_excluded):
    counts = counts_frame([{"sample_id": "A", "neutrophil": 60, "lymphocyte": 40}])
    ref = read_reference(
        reference(
            tmp_path,
            [
                "A,2026/01/01,08:00,5.00,3.00,,60.0,2.0,0.01,",
                "A,2026/01/01,09:00,5.00,3.30,,66.0,1.7,0.01,",
            ],
        )
    )
    result = compare(
        counts,
        ref,
        load_protocol(
            protocol(
                tmp_path,
                f"measurands: {{NEUT#: {{allowable_error_pct: 10}}}}\nrerun_rule: {rule}\n",
            )
        ),
    )
    assert result.excluded.height == n_excluded
    if kept_row is None:
        assert result.table.height == 0 and "rerun rule 'reject'" in result.excluded["reason"][0]
    else:
        assert result.table["source_row"].to_list() == [kept_row]


def test_immature_granulocytes_with_neutrophils(tmp_path):
    counts = counts_frame([{"sample_id": "A", "neutrophil": 61, "lymphocyte": 39}])
    ref = read_reference(reference(tmp_path, ["A,2026/01/01,08:00,5.00,3.00,,60.0,2.0,0.05,"]))
    p = load_protocol(
        protocol(
            tmp_path,
            "measurands: {NEUT#: {allowable_error_pct: 10}}\n"
            "class_mapping: {immature_granulocytes: with_neutrophils}\n",
        )
    )
    row = compare(counts, ref, p).table.row(0, named=True)
    assert row["reference"] == pytest.approx(3.05)


def test_volumetric_mode_estimates_wbc_from_cells_found(tmp_path):
    counts = counts_frame([{"sample_id": "A", "neutrophil": 300, "lymphocyte": 200, "imaged_volume_ul": 0.1}])
    ref = read_reference(reference(tmp_path, ["A,2026/01/01,08:00,5.00,3.00,,60.0,2.0,0.01,"]))
    p = load_protocol(
        protocol(
            tmp_path,
            "count_mode: volumetric\nmeasurands: {WBC: {allowable_error_pct: 10}, NEUT#: {allowable_error_pct: 10}}\n",
        )
    )
    t = {r["measurand"]: r for r in compare(counts, ref, p).table.iter_rows(named=True)}
    assert t["WBC"]["predicted"] == pytest.approx(500 / 0.1 / 1000)  # 5.0 x 10^3/uL
    assert t["NEUT#"]["predicted"] == pytest.approx(0.6 * 5.0)


def test_missing_reference_column_is_an_input_error(tmp_path):
    counts = counts_frame([{"sample_id": "A", "neutrophil": 60, "lymphocyte": 40}])
    ref = read_reference(reference(tmp_path, ["A,2026/01/01,08:00,5.00,3.00,,60.0,2.0,0.01,"]))
    from wbcv.base.errors import WbcvError

    with pytest.raises(WbcvError, match="needs column"):
        compare(
            counts,
            ref,
            load_protocol(protocol(tmp_path, "measurands: {MONO#: {allowable_error_pct: 10}}\n")),
        )


def test_verdict_point_estimate_versus_lower_bound(tmp_path):
    rows = [{"sample_id": f"S{i:03d}", "neutrophil": 60, "lymphocyte": 40} for i in range(100)]
    wbc = [4 + 0.05 * i for i in range(100)]  # predicted NEUT# = 0.6 x WBC
    ref_rows = [
        # LYMPH# 1.0: NEUT# + LYMPH# stays below the WBC (a part sum above it is implausible and excluded)
        f"S{i:03d},2026/01/01,08:00,{w:.2f},{w * (0.6 if i < 96 else 0.4):.4f},,60.0,1.0,0.01,"
        for i, w in enumerate(wbc)
    ]
    counts, ref = counts_frame(rows), read_reference(reference(tmp_path, ref_rows))
    for basis, expect in (("point_estimate", True), ("lower_bound", False)):
        p = load_protocol(
            protocol(
                tmp_path,
                "measurands: {NEUT#: {allowable_error_pct: 10}}\n"
                f"acceptance: {{required_coverage: 0.95, basis: {basis}}}\n",
            )
        )
        verdicts, stats = decide(compare(counts, ref, p).table, p)
        v = verdicts[0]
        assert (v.n, v.n_within, v.passed, overall(verdicts)) == (100, 96, expect, expect)
        assert "96 of 100 samples within ±10 %" in v.reason
        assert stats["NEUT#"]["passing_bablok"]["method"]
        assert stats["NEUT#"]["samples_needed_at_observed_coverage"]["n_samples"] > 100  # 96 % is close to 95 %


@pytest.mark.slow
def test_wbcv_run_end_to_end_on_real_cells(tmp_path, pbc_cells, model_dir):
    batch = build_slide_set(pbc_cells, tmp_path / "batch", n_samples=6, cells_per_slide=30, seed=5)
    labels = pl.read_csv(batch / "cell_labels.csv")
    rows = []
    for sid, g in labels.group_by("sample_id", maintain_order=True):
        n = g.height
        f = {c: (g["label"] == c).sum() / n for c in ("neutrophil", "lymphocyte")}
        rows.append(
            f"{sid[0]},2026/01/01,08:00,5.00,{5 * f['neutrophil']:.2f},,{100 * f['neutrophil']:.1f},"
            f"{5 * f['lymphocyte']:.2f},0.01,"
        )
    ref = reference(tmp_path, rows)
    proto = protocol(
        tmp_path,
        "measurands: {NEUT#: {allowable_error_pct: 10}, NEUT%: {allowable_error_pct: 10}}\n",
    )
    runs = tmp_path / "runs"
    r = run_wbcv(
        "run",
        str(batch),
        "--model",
        str(model_dir),
        "--out",
        str(runs),
        "--reference",
        str(ref),
        "--protocol",
        str(proto),
        "--no-progress",
        timeout=300,
    )
    # An untrained model fails acceptance: the run completes and says so with exit status 3.
    assert r.returncode == 3, r.stdout + r.stderr
    assert "OVERALL: FAIL" in r.stdout and "Traceback" not in r.stderr
    comparison = next(p for p in runs.iterdir() if "-compare-" in p.name)
    record = json.loads((comparison / "run.json").read_text())
    assert record["kind"] == "comparison" and record["verdict"] == "fail"
    assert record["inputs"]["protocol"]["sha256"] and record["inputs"]["reference"]["sha256"]
    verdict = json.loads((comparison / "verdict.json").read_text())
    assert [m["measurand"] for m in verdict["measurands"]] == ["NEUT#", "NEUT%"]
    assert (comparison / "statistics.json").is_file() and (comparison / "comparison.parquet").is_file()

    # bad inputs: exit 2, a message naming the file and the key, no traceback
    bad = protocol(
        tmp_path,
        "measurands: {NEUT#: {allowable_error_pct: 10}}\nacceptance: {required_coverage: 1.5}\n",
        "bad.yaml",
    )
    inference_run = next(p for p in runs.iterdir() if "-compare-" not in p.name)
    r = run_wbcv("compare", str(inference_run), "--reference", str(ref), "--protocol", str(bad), timeout=120)
    assert r.returncode == 2 and "acceptance.required_coverage: is 1.5" in r.stderr and "Traceback" not in r.stderr
    r = run_wbcv(
        "compare",
        str(inference_run),
        "--reference",
        str(tmp_path / "nope.csv"),
        "--protocol",
        str(proto),
        timeout=120,
    )
    assert r.returncode == 2 and "nope.csv" in r.stderr and "Traceback" not in r.stderr
