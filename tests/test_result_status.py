"""Result status of HL7 OBX-11 (v2.5 Table 0085) and ASTM E1394 R-9: a correction replaces the
final value of the same observation, a deletion or "posted as wrong" takes it back, and every other
status is listed as excluded with its meaning (wbcv.validation.results.status).

The messages are written as an analyzer and a laboratory system exchange them: a final result,
then a later message with the corrected OBX (same OBX-3, OBX-11 C), preliminary results followed by
final ones, a deletion; ASTM records with R-9 C after R-9 F.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from wbcv.cli import main
from wbcv.validation.results.astm_records import read_astm
from wbcv.validation.results.counting import Collected, Counted, count_samples
from wbcv.validation.results.hl7_oru import read_hl7
from wbcv.validation.results.mapping import default_mapping

LOINC = {"NEUT": "770-8", "LYMPH": "736-9", "MONO": "5905-5", "EO": "713-8", "BASO": "706-2"}
TEXT = {"NEUT": "Neutrophils", "LYMPH": "Lymphocytes", "MONO": "Monocytes", "EO": "Eosinophils", "BASO": "Basophils"}


def msh(n: int) -> str:
    return f"MSH|^~\\&|DI-60^DM^L|CORELAB|LIS|HOSP|2026011508{n:02d}00||ORU^R01^ORU_R01|DM{n:04d}|P|2.5.1"


def obr(sample: str, status: str = "F") -> str:
    fields = ["OBR", "1", f"ORD-{sample}", sample, "57021-8^CBC W Auto Differential panel - Blood^LN", "", ""]
    fields += ["20260115080000"] + [""] * 17 + [status]  # OBR-25, result status of the order
    return "|".join(fields)


def obx(i: int, cls: str, value: str, status: str, sub_id: str = "") -> str:
    unit = "{cells}^cells^UCUM" if cls == "CELLCNT" else "%^percent^UCUM"
    ident = "CELLCNT^Cells counted^L" if cls == "CELLCNT" else f"{LOINC[cls]}^{TEXT[cls]}/100 leukocytes^LN"
    return f"OBX|{i}|NM|{ident}|{sub_id}|{value}|{unit}|||||{status}|||20260115080000||TECH01||SN1"


def message(n: int, sample: str, results: list[tuple[str, str, str]], obr_status: str = "F") -> str:
    lines = [msh(n), f"PID|1||P{n:04d}^^^HOSP^MR", obr(sample, obr_status)]
    lines += [obx(i, cls, value, status) for i, (cls, value, status) in enumerate(results, start=1)]
    return "\r\n".join(lines) + "\r\n"


FINAL_S1 = [("NEUT", "60.0", "F"), ("LYMPH", "30.0", "F"), ("MONO", "5.0", "F"), ("EO", "4.0", "F")]
FINAL_S1 += [("BASO", "1.0", "F"), ("CELLCNT", "200", "F")]


def read(path: Path, fmt: str) -> Counted:
    collected, mapping = Collected(), default_mapping()
    (read_hl7 if fmt == "hl7" else read_astm)(path, mapping, collected)
    return count_samples(collected, mapping, "DI-60", None)


def counts_of(c: Counted, sample: str) -> dict[str, int]:
    row = c.counts.filter(pl.col("sample_id") == sample).row(0, named=True)
    return {k.removeprefix("k_"): v for k, v in row.items() if k.startswith("k_")}


def reasons_of(c: Counted, sample: str) -> list[str]:
    return c.excluded.filter(pl.col("sample_id") == sample)["reason"].to_list()


def test_hl7_corrected_result_replaces_the_final_one(tmp_path):
    """The LIS received S1's differential, then the technologist corrected two classes: a second
    ORU^R01 (OBR-25 C) carries the corrected OBX with OBX-11 C, as Table 0085 says ("a correction
    that replaces a final result")."""
    f = tmp_path / "corrected.hl7"
    correction = [("NEUT", "62.0", "C"), ("LYMPH", "28.0", "C")]
    f.write_text(message(1, "S1", FINAL_S1) + message(2, "S1", correction, obr_status="C"), newline="")
    c = read(f, "hl7")
    assert counts_of(c, "S1") == {"neutrophil": 124, "lymphocyte": 56, "monocyte": 10, "eosinophil": 8, "basophil": 2}
    reasons = reasons_of(c, "S1")
    assert len(reasons) == 2  # the two values replaced, each naming the correction; nothing else
    assert "result 60 (F): replaced by the corrected result (OBX-11 C) at message 2 (line 13), OBX 1: 62" in reasons
    assert "result 30 (F): replaced by the corrected result (OBX-11 C) at message 2 (line 14), OBX 2: 28" in reasons
    used = c.observations.filter(pl.col("export_class") == "neutrophils")
    assert used["value"].to_list() == [62.0] and used["location"].to_list() == ["message 2 (line 13), OBX 1"]


def test_hl7_correction_in_the_same_message_and_a_second_correction(tmp_path):
    """Within one message, and corrected twice: the last correction counts, both earlier values are listed."""
    f = tmp_path / "twice.hl7"
    results = [*FINAL_S1, ("NEUT", "61.0", "C"), ("NEUT", "59.0", "C"), ("LYMPH", "31.0", "C")]
    f.write_text(message(1, "S1", results), newline="")
    c = read(f, "hl7")
    assert counts_of(c, "S1")["neutrophil"] == 118 and counts_of(c, "S1")["lymphocyte"] == 62
    reasons = reasons_of(c, "S1")
    assert any(r.startswith("result 60 (F): replaced by the corrected result") and r.endswith(": 61") for r in reasons)
    assert any(r.startswith("result 61 (C): replaced by the corrected result") and r.endswith(": 59") for r in reasons)


def test_hl7_preliminary_then_final_counts_the_final_and_lists_the_preliminary(tmp_path):
    f = tmp_path / "prelim.hl7"
    preliminary = [(cls, value, "P") for cls, value, _ in FINAL_S1]
    f.write_text(message(1, "S1", preliminary, obr_status="P") + message(2, "S1", FINAL_S1), newline="")
    c = read(f, "hl7")
    assert counts_of(c, "S1") == {"neutrophil": 120, "lymphocyte": 60, "monocyte": 10, "eosinophil": 8, "basophil": 2}
    reasons = reasons_of(c, "S1")
    assert len(reasons) == len(FINAL_S1)
    assert all("result status 'P' (preliminary result); only F or C are used" in r for r in reasons)


@pytest.mark.parametrize(
    ("status", "meaning"),
    [("D", "deletes the OBX record"), ("W", "posts the original as wrong")],
)
def test_hl7_deleted_or_wrong_takes_the_final_value_back(tmp_path, status, meaning):
    """S1's neutrophils sent, then deleted (or posted as wrong): no neutrophil value is left, so the
    percentages no longer sum to 100 and the sample is excluded, every step listed with its reason."""
    f = tmp_path / "deleted.hl7"
    f.write_text(message(1, "S1", FINAL_S1) + message(2, "S1", [("NEUT", "", status)]), newline="")
    c = read(f, "hl7")
    assert c.counts.filter(pl.col("sample_id") == "S1").is_empty()
    reasons = reasons_of(c, "S1")
    assert f"result 60 (F): OBX-11 {status} ({meaning}) at message 2 (line 13), OBX 1" in reasons
    assert any(f"result status '{status}' ({meaning}); only F or C are used" in r for r in reasons)
    assert any("the percentages sum to 40, expected 100" in r for r in reasons)


def test_hl7_other_statuses_are_listed_with_their_table_0085_meaning(tmp_path):
    f = tmp_path / "statuses.hl7"
    results = [*FINAL_S1[:4], ("BASO", "", "X"), ("BASO", "1.0", "U"), ("BASO", "1.0", "R"), ("BASO", "1.0", "I")]
    results += [("BASO", "1.0", "F"), ("CELLCNT", "200", "F")]
    f.write_text(message(1, "S1", results), newline="")
    c = read(f, "hl7")
    assert counts_of(c, "S1")["basophil"] == 2
    text = " | ".join(reasons_of(c, "S1"))
    for meaning in (
        "'X' (result cannot be obtained)",
        "'U' (status changed to final without retransmitting the preliminary result)",
        "'R' (result entered, not verified)",
        "'I' (specimen in lab, results pending)",
    ):
        assert meaning in text


def test_hl7_correction_that_cannot_be_read_takes_the_final_value_back(tmp_path):
    """A correction says the final value is wrong; when its own value is not a number, neither is used."""
    f = tmp_path / "bad-correction.hl7"
    f.write_text(message(1, "S1", FINAL_S1) + message(2, "S1", [("MONO", "five", "C")]), newline="")
    c = read(f, "hl7")
    reasons = reasons_of(c, "S1")
    assert any("OBX-5 'five' is not a number" in r for r in reasons)
    withdrawn = "result 5 (F): corrected at message 2 (line 13), OBX 1, whose value cannot be used"
    assert any(r.startswith(withdrawn) for r in reasons)
    assert c.counts.filter(pl.col("sample_id") == "S1").is_empty()  # 95 % left: the sample is excluded


def test_hl7_two_finals_without_a_correction_still_exclude_the_sample(tmp_path):
    f = tmp_path / "two-finals.hl7"
    f.write_text(message(1, "S1", FINAL_S1) + message(2, "S1", [("NEUT", "62.0", "F")]), newline="")
    c = read(f, "hl7")
    assert c.counts.filter(pl.col("sample_id") == "S1").is_empty()
    assert any("class 'neutrophils' reported 2 times" in r for r in reasons_of(c, "S1"))


def test_hl7_observation_sub_ids_are_different_observations(tmp_path):
    """OBX-4 (sub-ID) tells observations with one OBX-3 apart: a correction of sub-ID 2 leaves sub-ID 1."""
    lines = [msh(1), "PID|1||P1^^^HOSP^MR", obr("S1")]
    lines += [obx(1, "NEUT", "50.0", "F", "1"), obx(2, "NEUT", "10.0", "F", "2"), obx(3, "NEUT", "12.0", "C", "2")]
    f = tmp_path / "subid.hl7"
    f.write_text("\r".join(lines) + "\r", newline="")
    c = read(f, "hl7")
    used = c.observations.filter(pl.col("export_class") == "neutrophils")["value"].to_list()
    assert used == [50.0, 12.0]


# --- ASTM E1394 R-9 -----------------------------------------------------------------------------


def astm(records: list[str]) -> str:
    return "\n".join(["H|\\^&|||MC-80^2.0^M123", "P|1", *records, "L|1|N"]) + "\n"


def r(i: int, code: str, value: str, status: str) -> str:
    return f"R|{i}|^^^{code}#|{value}|cells||N||{status}||TECH01||20260115080000|MC-80"


ASTM_S1 = [r(1, "NEUT", "120", "F"), r(2, "LYMPH", "60", "F"), r(3, "MONO", "10", "F"), r(4, "EO", "8", "")]
ASTM_S1 += [r(5, "BASO", "2", "V")]


def test_astm_correction_replaces_the_final_result(tmp_path):
    """E1394 R-9 C, "correction of previously transmitted results", in a later message for the same specimen."""
    f = tmp_path / "corrected.astm"
    first = astm(["O|1|S1||^^^DIFF|R", *ASTM_S1])
    later = astm(["O|1|S1||^^^DIFF|R", r(1, "NEUT", "118", "C"), r(2, "LYMPH", "62", "C")])
    f.write_text(first + later)
    c = read(f, "astm")
    assert counts_of(c, "S1") == {"neutrophil": 118, "lymphocyte": 62, "monocyte": 10, "eosinophil": 8, "basophil": 2}
    assert sorted(reasons_of(c, "S1")) == [
        "result 120 (F): replaced by the corrected result (R-9 C) at line 13, R 1: 118",
        "result 60 (F): replaced by the corrected result (R-9 C) at line 14, R 2: 62",
    ]


def test_astm_other_statuses_are_listed_with_their_meaning(tmp_path):
    f = tmp_path / "statuses.astm"
    records = ["O|1|S1||^^^DIFF|R", *ASTM_S1, r(6, "NEUT", "119", "P"), r(7, "NEUT", "121", "R")]
    records += [r(8, "MONO", "11", "W"), r(9, "EO", "", "X")]
    f.write_text(astm(records))
    c = read(f, "astm")
    assert counts_of(c, "S1") == {"neutrophil": 120, "lymphocyte": 60, "monocyte": 10, "eosinophil": 8, "basophil": 2}
    text = " | ".join(reasons_of(c, "S1"))
    for meaning in (
        "'P' (preliminary results)",
        "'R' (this result was previously transmitted)",
        "'W' (warning: validity is questionable)",
        "'X' (order cannot be done)",
    ):
        assert meaning in text
    assert len(reasons_of(c, "S1")) == 4


def test_corrected_hl7_file_through_import_and_compare(tmp_path, capsys):
    """The same correction through `wbcv import-results`: the replaced value is in import_excluded.parquet."""
    f = tmp_path / "corrected.hl7"
    f.write_text(message(1, "S1", FINAL_S1) + message(2, "S1", [("NEUT", "62.0", "C"), ("LYMPH", "28.0", "C")]))
    assert main(["import-results", str(f), "--format", "hl7", "--out", str(tmp_path / "runs")]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    counts = pl.read_parquet(run / "counts.parquet").row(0, named=True)
    assert (counts["k_neutrophil"], counts["k_lymphocyte"], counts["n_classified"]) == (124, 56, 200)
    left = pl.read_parquet(run / "import_excluded.parquet")
    assert left.height == 2 and all("replaced by the corrected result (OBX-11 C)" in x for x in left["reason"])
    capsys.readouterr()
