"""The acceptance of a flag-agreement study from the protocol (``flag_acceptance``): the verdict rule,
the protocol keys, the sealed run and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wbcv.base.atomic import sha256_file
from wbcv.base.errors import WbcvError
from wbcv.base.records import FlagAcceptance
from wbcv.cli import EXIT_FAILED_ACCEPTANCE, EXIT_INPUT_ERROR, EXIT_OK, main
from wbcv.validation.protocol import load_protocol
from wbcv.validation.qualitative import flag_agreement, flag_verdict
from wbcv.validation.study_report import render_study_html
from wbcv.validation.study_run import qualitative_run, study_result

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "samples"
BASE = """protocol: {id: F, version: '2', title: Flags}
measurands: {NEUT#: {allowable_error_pct: 10}}
"""


def _protocol(tmp_path: Path, section: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(BASE + section)
    return p


def test_verdict_on_the_point_estimate_boundary_included():
    f = flag_agreement("blasts", 8, 1, 2, 9)  # PPA 8/10 = 0.8, NPA 9/10 = 0.9
    v = flag_verdict(f, FlagAcceptance(min_ppa=0.8, min_npa=0.9))
    assert v.passed and v.reason == "PPA 80.0 % ≥ required 80 %; NPA 90.0 % ≥ required 90 %"
    assert not flag_verdict(f, FlagAcceptance(min_ppa=0.81, min_npa=0.9)).passed


def test_verdict_on_the_lower_bound_is_stricter():
    f = flag_agreement("blasts", 19, 0, 1, 20)  # PPA 95 %, Wilson lower bound 76.4 %
    assert flag_verdict(f, FlagAcceptance(min_ppa=0.9, min_npa=0.9)).passed
    v = flag_verdict(f, FlagAcceptance(min_ppa=0.9, min_npa=0.8, basis="lower_bound"))
    assert not v.passed and "PPA 95.0 % (lower bound 76.4 %) < required 90 %" in v.reason
    assert f.ppa.wilson is not None and f.ppa.wilson[0] == pytest.approx(0.7639, abs=1e-4)


def test_an_undefined_proportion_fails():
    f = flag_agreement("blasts", 0, 1, 0, 9)  # no reference-positive sample: PPA undefined
    v = flag_verdict(f, FlagAcceptance(min_ppa=0.0, min_npa=0.5))
    assert not v.passed and v.reason.startswith("PPA undefined (0/0: no sample in this margin)")


def test_protocol_section_parsed_and_checked(tmp_path):
    p = load_protocol(_protocol(tmp_path, "flag_acceptance: {min_ppa: 0.8, min_npa: 0.95, basis: lower_bound}\n"))
    assert p.flag_acceptance == FlagAcceptance(min_ppa=0.8, min_npa=0.95, basis="lower_bound")
    assert load_protocol(_protocol(tmp_path, "")).flag_acceptance is None
    bad = "flag_acceptance: {min_ppa: 1.5, basis: median, min_sens: 1}\n"
    with pytest.raises(WbcvError) as e:
        load_protocol(_protocol(tmp_path, bad))
    message = str(e.value)
    for part in (
        "flag_acceptance.min_ppa: is 1.5; expected a number in [0.0, 1.0]",
        "flag_acceptance.min_npa: is required",
        "flag_acceptance.basis: is 'median'; expected one of point_estimate, lower_bound",
        "flag_acceptance.min_sens: unknown key",
    ):
        assert part in message


def test_sealed_run_records_the_protocol_and_judges_each_flag(tmp_path):
    protocol = _protocol(tmp_path, "flag_acceptance: {min_ppa: 0.8, min_npa: 0.9}\n")
    report, run = qualitative_run(SAMPLES / "flags.csv", tmp_path / "runs", protocol=protocol)
    record = run.record
    assert record.acceptance == FlagAcceptance(min_ppa=0.8, min_npa=0.9)
    assert record.protocol is not None and record.protocol.sha256 == sha256_file(protocol)
    result = study_result(run)
    verdicts = {v["flag"]: v["passed"] for v in result["verdicts"]}
    # the fixture: atypical_lymphocytes PPA 12/16 = 75 % < 80 %; blasts PPA 81.8 %, NPA 95.9 %
    assert verdicts == {"atypical_lymphocytes": False, "blasts": True} and result["overall"] == "fail"
    assert report.passed is False
    html = render_study_html(run, sha256_file(run.run_dir / "run.json"))
    assert "FAIL: PPA 75.0 % &lt; required 80 %" in html or "FAIL: PPA 75.0 % < required 80 %" in html
    assert "Overall: FAIL" in html


def test_command_line_exit_codes(tmp_path, capsys):
    passing = _protocol(tmp_path, "flag_acceptance: {min_ppa: 0.7, min_npa: 0.8}\n")
    assert main(["qualitative", str(SAMPLES / "flags.csv"), "--protocol", str(passing)]) == EXIT_OK
    assert "OVERALL: PASS" in capsys.readouterr().out
    strict = tmp_path / "strict.yaml"
    strict.write_text(BASE + "flag_acceptance: {min_ppa: 0.99, min_npa: 0.99}\n")
    out = tmp_path / "out.json"
    assert main(["qualitative", str(SAMPLES / "flags.csv"), "--protocol", str(strict), "--json", str(out)]) == (
        EXIT_FAILED_ACCEPTANCE
    )
    assert json.loads(out.read_text())["overall"] == "fail"
    none = tmp_path / "none.yaml"
    none.write_text(BASE)
    assert main(["qualitative", str(SAMPLES / "flags.csv"), "--protocol", str(none)]) == EXIT_INPUT_ERROR
    assert "flag_acceptance: the protocol has no flag_acceptance section" in capsys.readouterr().err
    # without a protocol: estimated only, exit 0 and no verdict
    assert main(["qualitative", str(SAMPLES / "flags.csv")]) == EXIT_OK
    assert "OVERALL" not in capsys.readouterr().out
