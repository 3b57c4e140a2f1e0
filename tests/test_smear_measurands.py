"""RBC and PLT as measurands: counted in smear fields (``wbcv segment``), carried into the counts
table by ``wbcv infer``, compared with the Sysmex XN's ``RBC(10^6/uL)`` and ``PLT(10^3/uL)``."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import REPO
from wbcv.base.tables import COUNT_COLUMNS, COUNTS_FILE, FIELD_COUNT_COLUMNS, FIELD_SAMPLES_FILE
from wbcv.cli import main
from wbcv.inference.segment import smear_concentrations
from wbcv.validation.compare import compare
from wbcv.validation.measurands import MEASURANDS, unit_factor
from wbcv.validation.protocol import load_protocol
from wbcv.validation.reference import read_reference

RAABIN = REPO.parent / "shared" / "data" / "raabin_fields"


def test_rbc_and_plt_are_measurands_in_the_analyzers_units():
    assert MEASURANDS["RBC"].unit == "10^6/uL" and MEASURANDS["RBC"].smear_object == "rbc"
    assert MEASURANDS["PLT"].unit == "10^3/uL" and MEASURANDS["PLT"].smear_object == "platelet"
    assert MEASURANDS["WBC"].unit == "10^3/uL" and MEASURANDS["WBC"].smear_object is None


@pytest.mark.parametrize(
    ("unit", "exponent", "factor"),
    [
        ("10^6/uL", 6, 1.0),
        ("10^12/L", 6, 1.0),
        ("10^4/uL", 6, 0.01),
        ("10^3/uL", 3, 1.0),
        ("10^9/L", 3, 1.0),
        ("/uL", 3, 0.001),
    ],
)
def test_unit_factor_to_the_measurands_own_unit(unit, exponent, factor):
    assert unit_factor(unit, "count", exponent) == pytest.approx(factor)


def test_smear_concentration_worked_example():
    # A Raabin field: 575 x 575 px at 0.052 um/px (894.0 um^2); 2.7 um of blood: 2.414e-6 uL imaged.
    got = smear_concentrations(12, 1, 1, 575.0 * 575.0, 0.052, None, 2.7)
    volume = 575.0**2 * 0.052**2 * 2.7 / 1e9
    assert got["analysed_area_um2"] == pytest.approx(894.01, abs=0.01)
    assert got["imaged_blood_ul"] == pytest.approx(volume)
    assert got["rbc_10e6_per_ul"] == pytest.approx(12 / volume / 1e6)  # 4.97
    assert got["rbc_10e6_per_ul"] == pytest.approx(4.97, abs=0.01)
    assert got["plt_10e3_per_ul"] == pytest.approx(1 / volume / 1e3)


def test_smear_concentration_from_the_field_area_and_undefined_without_a_volume():
    by_area = smear_concentrations(30, 3, 3, 0.0, None, 1000.0, 2.0)
    assert by_area["imaged_blood_ul"] == pytest.approx(3000.0 * 2.0 / 1e9)
    assert by_area["rbc_10e6_per_ul"] == pytest.approx(30 / 6e-6 / 1e6)
    assert smear_concentrations(30, 3, 3, 1e6, 0.05, None, None)["rbc_10e6_per_ul"] is None  # no thickness
    assert smear_concentrations(30, 3, 3, 1e6, None, None, 2.0)["imaged_blood_ul"] is None  # no area
    assert smear_concentrations(0, 0, 0, 0.0, 0.05, None, 2.0)["rbc_10e6_per_ul"] is None  # nothing analysed


def test_sysmex_rbc_and_plt_columns_are_read_in_canonical_units(tmp_path):
    csv = tmp_path / "XN.csv"
    csv.write_text("Sample No.,Date,Time,WBC(10^9/L),RBC(10^12/L),PLT(10^9/L)\nS1,2024/01/02,10:00:00,6.0,4.5,250\n")
    ref = read_reference(csv)
    row = ref.table.row(0, named=True)
    assert (row["RBC"], row["PLT"]) == (pytest.approx(4.5), pytest.approx(250.0))


@pytest.fixture(scope="module")
def smear_run(tmp_path_factory, model_dir) -> tuple[Path, pl.DataFrame]:
    """Two samples of two val fields each; S1's manifest gives the scale and the smear thickness."""
    root = tmp_path_factory.mktemp("smear")
    import csv as csvmod

    rows = [r for r in csvmod.DictReader((RAABIN / "manifest.csv").open()) if r["split"] == "val"][:4]
    for sid, part in (("S1", rows[:2]), ("S2", rows[2:])):
        (root / "fields" / sid).mkdir(parents=True)
        for r in part:
            (root / "fields" / sid / Path(r["path"]).name).write_bytes((RAABIN / r["path"]).read_bytes())
    (root / "fields" / "manifest.csv").write_text("sample_id,um_per_px,smear_thickness_um\nS1,0.052,2.7\nS2,,\n")
    batch = root / "batch"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["segment", str(root / "fields"), "--out", str(batch)]) == 0
        rc = main(["infer", str(batch), "--model", str(model_dir), "--out", str(root / "runs"), "--no-progress"])
    assert rc == 0
    (run,) = list((root / "runs").iterdir())
    return batch, pl.read_parquet(run / COUNTS_FILE)


def test_segment_writes_concentrations_where_the_manifest_allows(smear_run):
    batch, _ = smear_run
    fs = pl.read_parquet(batch / FIELD_SAMPLES_FILE).sort("sample_id")
    s1, s2 = fs.row(0, named=True), fs.row(1, named=True)
    assert s1["analysed_area_um2"] == pytest.approx(2 * 575 * 575 * 0.052**2)
    assert s1["rbc_10e6_per_ul"] == pytest.approx(s1["rbc_counted"] / s1["imaged_blood_ul"] / 1e6)
    assert 1.0 < s1["rbc_10e6_per_ul"] < 10.0  # about 12 red cells a field: near 5 x 10^6/uL
    assert s2["analysed_area_um2"] is None and s2["rbc_10e6_per_ul"] is None and s2["rbc_counted"] > 0


def test_infer_carries_the_field_counts_into_the_counts_table(smear_run):
    batch, counts = smear_run
    assert counts.columns == [*COUNT_COLUMNS, *FIELD_COUNT_COLUMNS]
    fs = pl.read_parquet(batch / FIELD_SAMPLES_FILE)
    joined = counts.join(fs, on="sample_id", suffix="_fs")
    for col in FIELD_COUNT_COLUMNS:
        assert joined[col].equals(joined[f"{col}_fs"], null_equal=True), col


def test_rbc_and_plt_are_compared_or_excluded_with_the_reason(smear_run, tmp_path):
    _, counts = smear_run
    ref_csv = tmp_path / "XN.csv"
    ref_csv.write_text(
        "Sample No.,Date,Time,WBC(10^3/uL),RBC(10^6/uL),PLT(10^3/uL)\n"
        "S1,2024/01/02,10:00:00,6.0,4.8,250\nS2,2024/01/02,10:05:00,7.0,4.6,300\n"
    )
    text = (REPO / "fixtures" / "samples" / "protocol.yaml").read_text().replace("min_cells: 100", "min_cells: 1")
    head, _, rest = text.partition("measurands:\n")
    rest = rest[rest.index("acceptance:") :].split("decision_levels:")[0]  # levels of the WBC measurands
    measurands = "measurands:\n  RBC: {allowable_error_pct: 10}\n  PLT: {allowable_error_pct: 25}\n"
    (tmp_path / "p.yaml").write_text(head + measurands + rest)
    # the untrained test model classifies no white cell: RBC and PLT are compared all the same
    result = compare(counts, read_reference(ref_csv), load_protocol(tmp_path / "p.yaml"))
    s1 = counts.filter(pl.col("sample_id") == "S1").row(0, named=True)
    rbc = result.table.filter((pl.col("sample_id") == "S1") & (pl.col("measurand") == "RBC")).row(0, named=True)
    assert rbc["predicted"] == pytest.approx(s1["rbc_10e6_per_ul"]) and rbc["reference"] == pytest.approx(4.8)
    assert rbc["error_pct"] == pytest.approx(100 * (s1["rbc_10e6_per_ul"] - 4.8) / 4.8)
    s2 = result.excluded.filter(pl.col("sample_id") == "S2")
    assert sorted(s2["measurand"].to_list()) == ["PLT", "RBC"]
    assert all("smear_thickness_um" in r for r in s2["reason"].to_list())


def test_the_field_counts_are_a_hashed_input_of_the_run_and_a_change_is_found(smear_run):
    """counts.parquet takes red cells and platelets from field_samples.parquet: the run lists that file
    with its sha256 among its inputs, and `wbcv verify --inputs` finds it changed."""
    from wbcv.base.tables import INPUTS_FILE
    from wbcv.inference.input_check import verify_inputs

    batch, _ = smear_run
    (run,) = list((batch.parent / "runs").iterdir())
    inputs = pl.read_parquet(run / INPUTS_FILE)
    path = batch / FIELD_SAMPLES_FILE
    row = inputs.filter(pl.col("path") == FIELD_SAMPLES_FILE).row(0, named=True)
    assert row["bytes"] == path.stat().st_size
    assert not verify_inputs(run).findings
    original = path.read_bytes()
    try:
        fs = pl.read_parquet(path).with_columns(pl.col("rbc_counted") * 2)
        fs.write_parquet(path)
        findings = verify_inputs(run).findings
        assert [(f.kind, f.path) for f in findings] == [("changed", FIELD_SAMPLES_FILE)]
    finally:
        path.write_bytes(original)
