"""Protocol files: the sample protocol loads; every mistake is named with its key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from wbcv.base.errors import WbcvError
from wbcv.validation.protocol import load_protocol

SAMPLE = Path(__file__).resolve().parent.parent / "fixtures" / "samples" / "protocol.yaml"


def test_sample_protocol_loads():
    p = load_protocol(SAMPLE)
    assert p.id == "WBC-DIFF-VAL-001" and p.version == "1.0"
    assert p.measurands["NEUT#"].allowable_error_pct == 10 and p.measurands["NEUT#"].absolute_limit == 0.2
    assert p.required_coverage == 0.95 and p.basis == "point_estimate" and p.min_cells == 100
    assert p.decision_levels["NEUT#"] == (1.5, 7.0)


def _fails(tmp_path: Path, text: str, *fragments: str) -> str:
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(WbcvError) as e:
        load_protocol(f)
    for fr in fragments:
        assert fr in str(e.value), f"{fr!r} not in {e.value}"
    return str(e.value)


BASE = "protocol: {id: P, version: '1'}\nmeasurands: {NEUT#: {allowable_error_pct: 10}}\n"


def test_minimal_protocol_gets_defaults(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(BASE)
    p = load_protocol(f)
    assert (p.count_mode, p.rerun_rule, p.exclude_flags, p.exclude_marks) == ("relative", "last", "any", ("*", "@"))


def test_typos_get_suggestions(tmp_path):
    _fails(
        tmp_path,
        BASE + "acceptence: {required_coverage: 0.9}\n",
        "acceptence: unknown key (did you mean 'acceptance'?)",
    )
    _fails(
        tmp_path,
        BASE + "acceptance: {required_coverag: 0.9}\n",
        "acceptance.required_coverag: unknown key (did you mean 'required_coverage'?)",
    )
    _fails(
        tmp_path,
        "protocol: {id: P, version: '1'}\nmeasurands: {NEUTS#: {allowable_error_pct: 10}}\n",
        "measurands.NEUTS#: unknown measurand 'NEUTS#' (did you mean 'NEUT#'?)",
    )


@pytest.mark.parametrize(
    "extra, fragment",
    [
        ("acceptance: {required_coverage: 1.5}\n", "acceptance.required_coverage: is 1.5; expected a number in (0, 1]"),
        ("acceptance: {required_coverage: high}\n", "acceptance.required_coverage: must be a number, got 'high'"),
        ("acceptance: {basis: median}\n", "acceptance.basis: is 'median'; expected one of point_estimate, lower_bound"),
        ("exclusions: {min_cells: -5}\n", "exclusions.min_cells: is -5; expected a whole number >= 0"),
        ("exclusions: {marks: ['?']}\n", "exclusions.marks"),
        ("rerun_rule: newest\n", "rerun_rule: is 'newest'; expected one of last, first, reject"),
        ("decision_levels: {NEUT#: [a]}\n", "decision_levels.NEUT#: is ['a']; expected a list of numbers"),
    ],
)
def test_wrong_types_and_impossible_values(tmp_path, extra, fragment):
    _fails(tmp_path, BASE + extra, fragment)


def test_negative_limit_and_missing_fields(tmp_path):
    _fails(
        tmp_path,
        "protocol: {id: P, version: '1'}\nmeasurands: {NEUT#: {allowable_error_pct: -10}}\n",
        "measurands.NEUT#.allowable_error_pct: is -10; expected a number in (0, 1000]",
    )
    _fails(
        tmp_path,
        "protocol: {id: P}\nmeasurands: {NEUT#: {absolute_limit: 1}}\n",
        "protocol.version: is required",
        "measurands.NEUT#.allowable_error_pct: is required",
    )
    _fails(tmp_path, "protocol: {id: P, version: '1'}\n", "measurands: is required")


def test_wbc_needs_volumetric_mode(tmp_path):
    _fails(
        tmp_path,
        "protocol: {id: P, version: '1'}\nmeasurands: {WBC: {allowable_error_pct: 10}}\n",
        "measurands.WBC: needs count_mode: volumetric",
    )


def test_unsafe_yaml_is_refused(tmp_path):
    _fails(
        tmp_path,
        BASE + "study: !!python/object/apply:os.system ['echo pwned']\n",
        "YAML tag '!!python/object/apply:os.system' is not supported",
    )


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(WbcvError, match="protocol file does not exist"):
        load_protocol(tmp_path / "nope.yaml")
    _fails(tmp_path, "- a\n- b\n", "a protocol is a YAML mapping")
