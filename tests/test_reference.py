"""Sysmex XN exports and plain CSV references: every format detail and every bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from wbcv.base.errors import WbcvError
from wbcv.validation.reference import read_reference

HEADER = (
    "Nickname,Analyzer ID,Date,Time,Rack,Position,Sample No.,WBC(10^3/uL),WBC/M,NEUT#(10^3/uL),NEUT#/M,"
    "LYMPH#(10^3/uL),NEUT%(%),NEUT%/M,IG#(10^3/uL),IP SUS(WBC)Blasts/Abn Lympho?,Q-Flag(Blasts?)"
)
ROWS = [
    "XN-10^A1,11001,2026/03/01,08:00:00,1,1,S001,6.12,,3.80,,1.70,62.1,,0.02,,",
    "XN-10^A1,11001,2026/03/01,08:01:00,1,2,QC-L1-123,5.00,,2.5,,1.5,50.0,,0.0,,",
    "XN-10^A1,11001,2026/03/01,08:02:00,1,3,S002,----,,++++,,1.20,55.0,*,0.01,1,",
    "XN-10^A1,11001,2026/03/01,08:03:00,1,4,S003,7.00,@,4.00,*@,2.00,57.1,,0.03,,120",
    "XN-10^A1,11001,2026/03/01,09:00:00,1,5,S001,6.30,,3.90,,1.75,61.9,,0.02,,",
    "XN-10^A1,11001,2026/03/01,09:01:00,1,6,BACKGROUNDCHECK,0.00,,0.00,,0.00,0.0,,0.0,,",
]


def write(tmp_path: Path, text: str, name: str = "XN_SAMPLE.csv", encoding: str = "utf-8") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode(encoding))
    return p


def sysmex(
    tmp_path: Path, header: str = HEADER, rows: list[str] = ROWS, preamble: str = "XN-Series export\n\n", **kw: str
) -> Path:
    return write(tmp_path, preamble + header + "\n" + "\n".join(rows) + "\n", **kw)


def test_sysmex_export_is_read_by_column_name(tmp_path):
    ref = read_reference(sysmex(tmp_path))
    assert ref.format == "sysmex-xn"
    t = ref.table
    assert t["sample_id"].to_list() == ["S001", "S002", "S003", "S001"]  # reruns kept; rule applied later
    s1 = t.row(0, named=True)
    assert (s1["WBC"], s1["NEUT#"], s1["NEUT%"], s1["IG#"]) == (6.12, 3.80, 62.1, 0.02)
    assert s1["source_row"] == 4 and str(s1["measured_at"]) == "2026-03-01 08:00:00"
    s2 = t.row(1, named=True)
    assert s2["WBC"] is None and s2["WBC status"] == "no result"
    assert s2["NEUT#"] is None and s2["NEUT# status"] == "over range"
    assert s2["NEUT% marks"] == "*"
    assert s2["flags"] == ["IP SUS(WBC)Blasts/Abn Lympho?"]
    s3 = t.row(2, named=True)
    assert s3["NEUT# marks"] == "*@" and s3["WBC marks"] == "@" and s3["flags"] == ["Q-Flag(Blasts?)"]
    reasons = dict(zip(ref.excluded["source_row"], ref.excluded["reason"], strict=True))
    assert reasons == {5: "technical row (QC-L1-123)", 9: "technical row (BACKGROUNDCHECK)"}


def test_si_and_scaled_units_are_converted(tmp_path):
    header = "Sample No.,WBC(10^9/L),NEUT#(10^2/uL),NEUT%(10^(-1)%)"
    ref = read_reference(sysmex(tmp_path, header, ["S1,6.1,38,621"], preamble=""))
    r = ref.table.row(0, named=True)
    assert r["WBC"] == pytest.approx(6.1) and r["NEUT#"] == pytest.approx(3.8) and r["NEUT%"] == pytest.approx(62.1)


def test_bom_windows_code_page_semicolons_and_decimal_commas(tmp_path):
    header = "Nickname;Sample No.;WBC(10^3/µL);NEUT#(10^3/µL);NEUT%(%)"
    text = header + "\nLabor Zürich;S1;6,12;3,80;62,1\n"
    for name, enc in (("bom.csv", "utf-8-sig"), ("cp.csv", "cp1252")):
        ref = read_reference(write(tmp_path, text, name, enc))
        r = ref.table.row(0, named=True)
        assert (r["WBC"], r["NEUT#"], r["NEUT%"]) == (6.12, 3.80, 62.1)
    assert read_reference(tmp_path / "cp.csv").encoding == "cp1252"


def test_plain_csv_reference(tmp_path):
    ref = read_reference(write(tmp_path, "sample_id,WBC,NEUT#,NEUT%(%)\nA,5,3,60\nB,7.5,----,55\nA,5,3,60\n"))
    assert ref.format == "plain-csv"
    assert ref.table["sample_id"].to_list() == ["A", "B"]
    assert ref.table.row(1, named=True)["NEUT# status"] == "no result"
    assert ref.excluded["reason"].to_list() == ["exact repeat of row 2"]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "the reference file is empty"),
        ("just,some,columns\n1,2,3\n", "no header row found"),
        ("Sample No.,Foo,Bar\nS1,1,2\n", "no measurand columns found"),
        ("Sample No.,WBC(10^3/uL)\nS1,abc\n", "row 2, column 'WBC(10^3/uL)': 'abc' is not a number"),
        ("Sample No.,WBC(10^3/uL)\nS1,-4\n", "row 2, column 'WBC(10^3/uL)': negative value"),
        ("Sample No.,WBC(furlongs)\nS1,4\n", "unrecognised unit 'furlongs'"),
        ("Sample No.,WBC(10^3/uL),WBC/M\nS1,4,#\n", "unknown mark '#'"),
        ("Sample No.,WBC(10^3/uL)\nS1,4,5,6\n", "1 row excluded, e.g. row 2: long row: 4 fields but the header has 2"),
        ("Sample No.,WBC(10^3/uL)\nQC-1,4\n", "no sample measurements found"),
        ("sample_id,WBC\nA,5\nA,6\n", "row 3: sample_id 'A' repeats row 2 with different values"),
        ("sample_id,WBC,colour\nA,5,red\n", "unknown column(s) 'colour'"),
        ("sample_id,WBC\n,5\n", "row 2, column 'sample_id': empty sample id"),
    ],
)
def test_bad_reference_files_name_file_row_and_column(tmp_path, text, fragment):
    p = write(tmp_path, text)
    with pytest.raises(WbcvError) as e:
        read_reference(p)
    assert fragment in str(e.value) and str(p) in str(e.value)
