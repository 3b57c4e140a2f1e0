"""`wbcv precision` and `wbcv qualitative` (in-process): fixtures, JSON, excluded rows, input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wbcv.cli import EXIT_INPUT_ERROR, EXIT_OK, main
from wbcv.validation.precision_table import run_precision

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "samples"


def test_precision_fixture_and_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["precision", str(SAMPLES / "precision.csv"), "--claim-cv", "NEUT%:6,7", "--json", str(out)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "L1 NEUT% (n=80)" in text and "negative estimate set to 0" in text and "binomial floor (200 cells)" in text
    payload = json.loads(out.read_text())
    groups = {(g["sample"], g["measurand"]): g for g in payload["groups"]}
    assert len(groups) == 4 and payload["excluded"] == []
    neut = groups[("L1", "NEUT%")]
    assert [c["name"] for c in neut["components"]] == [
        "repeatability",
        "between-run",
        "between-day",
        "within-laboratory",
    ]
    assert neut["components"][0]["variance"] == pytest.approx(541.625 / 40)  # R anova(lm): SS_error / df
    assert len(neut["verifications"]) == 2 and groups[("L1", "LYMPH%")]["verifications"] == []
    ep15 = groups[("L2", "NEUT%")]
    assert [c["name"] for c in ep15["components"]] == ["repeatability", "between-day", "within-laboratory"]
    assert ep15["components"][1]["df"] is None  # no CI for between-day: JSON null, not NaN


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "in.csv"
    p.write_text(text, encoding="utf-8")
    return p


def test_precision_bad_rows_excluded_and_counted(tmp_path):
    rows = ["level,day,replicate,measurand,value"]
    rows += [f"A,{d},{r},WBC,{5 + 0.1 * d + 0.01 * r}" for d in range(1, 6) for r in range(1, 4)]
    rows += ["A,6,1,WBC,abc", "A,1,1,WBC,9.9", "A,,1,WBC,1.0", "A,7,1,WBC", "A,8,1,WBC,nan"]
    report = run_precision(_write(tmp_path, "\n".join(rows) + "\n"))
    reasons = [e.reason for e in report.excluded]
    assert len(reasons) == 5 and report.n_rows == 20
    assert "is not a number" in reasons[0] and "repeats" in reasons[1] and "empty day" in reasons[2]
    assert "fields but the header has 5" in reasons[3] and "'nan' is not a number" in reasons[4]
    assert report.groups[0].n == 15 and report.groups[0].floor_sd is None  # WBC is not a class percentage


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sample_id,day,replicat,measurand,value\n", "unknown column 'replicat' (did you mean 'replicate'?)"),
        ("sample_id,day,measurand,value\n", "missing column(s) replicate"),
        ("", "is empty"),
        ("day,replicate,measurand,value\n1,1,WBC,2\n", "missing column sample_id (or level)"),
        ("sample_id,day,replicate,measurand,value\nA,1,1,WBC,2\n", "not analysed"),
    ],
)
def test_precision_input_errors(tmp_path, capsys, text, message):
    status = main(["precision", str(_write(tmp_path, text))])
    captured = capsys.readouterr()
    if message == "not analysed":  # one day only: the group is reported with why, not an error
        assert status == EXIT_OK and "at least 2 days" in captured.out
    else:
        assert status == EXIT_INPUT_ERROR and message in captured.err


def test_precision_refuses_binary_and_bad_claim(tmp_path, capsys):
    p = tmp_path / "x.csv"
    p.write_bytes(b"PK\x03\x04rest")
    assert main(["precision", str(p)]) == EXIT_INPUT_ERROR
    assert "ZIP archive" in capsys.readouterr().err
    assert main(["precision", str(SAMPLES / "precision.csv"), "--claim-sd", "NEUT%:2"]) == EXIT_INPUT_ERROR
    assert "REPEATABILITY,WITHIN_LAB" in capsys.readouterr().err


def test_qualitative_fixture_and_json(tmp_path, capsys):
    out = tmp_path / "q.json"
    assert main(["qualitative", str(SAMPLES / "flags.csv"), "--json", str(out)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "blasts: n=60" in text and "2 excluded" in text
    payload = json.loads(out.read_text())
    blasts = next(f for f in payload["flags"] if f["flag"] == "blasts")
    a, b, c, d = (blasts[k] for k in ("true_positive", "false_positive", "false_negative", "true_negative"))
    assert blasts["ppa"]["estimate"] == pytest.approx(a / (a + c)) and a + b + c + d == 60
    assert [e["line"] for e in payload["excluded"]] == [122, 123]


def test_qualitative_empty_margin_is_null(tmp_path, capsys):
    p = _write(tmp_path, "sample_id,flag,analyzer,reference\nS1,blasts,0,0\nS2,blasts,+,no\n")
    out = tmp_path / "q.json"
    assert main(["qualitative", str(p), "--json", str(out)]) == EXIT_OK
    assert "undefined (no sample in this margin)" in capsys.readouterr().out
    ppa = json.loads(out.read_text())["flags"][0]["ppa"]
    assert ppa["estimate"] is None and ppa["wilson"] is None


def test_qualitative_unknown_column(tmp_path, capsys):
    p = _write(tmp_path, "sample_id,flag,analyser,reference\n")
    assert main(["qualitative", str(p)]) == EXIT_INPUT_ERROR
    assert "unknown column 'analyser'" in capsys.readouterr().err
