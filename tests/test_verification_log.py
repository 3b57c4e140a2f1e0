"""The verification log's hash chain (validation/verification_log.py): records, edits and removals named."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wbcv.base.errors import WbcvError
from wbcv.validation.preclassification import preclassification_statistics
from wbcv.validation.verification_log import (
    NOT_A_WBC,
    VERIFIED_CHOICES,
    Decision,
    append_decision,
    check_log,
    head_path,
    log_path,
    verified_cells,
)

CELLS = ("s1/a.jpg", "s1/b.jpg", "s2/c.jpg")


def predictions() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "sample_id": ["s1", "s1", "s2"],
            "cell_path": list(CELLS),
            "sha256": ["aa" * 32, "bb" * 32, "cc" * 32],
            "predicted_class": ["neutrophil", "lymphocyte", "monocyte"],
            "unclassified": [False, False, True],
        }
    )


def sealed_run(tmp: Path, name: str = "infer-1") -> Path:
    run = tmp / "runs" / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"run_id": name}))
    return run


def three_decisions(run: Path) -> list[dict]:
    p = predictions()
    return [
        append_decision(run, p, Decision("ana", "s1/a.jpg", None)),
        append_decision(run, p, Decision("ana", "s1/b.jpg", "monocyte")),
        append_decision(run, p, Decision("ben", "s1/b.jpg", "lymphocyte")),
    ]


def lines_of(run: Path) -> list[bytes]:
    return log_path(run).read_bytes().splitlines()


def write_lines(run: Path, lines: list[bytes]) -> None:
    log_path(run).write_bytes(b"".join(ln + b"\n" for ln in lines))


def test_records_chain_from_the_run_record_and_carry_who_what_and_from_to(tmp_path: Path):
    run = sealed_run(tmp_path)
    a, b, c = three_decisions(run)
    assert log_path(run) == tmp_path / "runs" / ".verification" / "infer-1.jsonl"
    assert (a["action"], a["from"], a["to"], a["cell_sha256"]) == ("accept", "neutrophil", "neutrophil", "aa" * 32)
    assert (b["from"], b["to"], b["user"]) == ("lymphocyte", "monocyte", "ana")
    assert (c["from"], c["to"], c["user"], c["seq"]) == ("monocyte", "lymphocyte", "ben", 3)
    assert c["time_utc"].endswith("Z")
    check = check_log(run)
    assert check.intact, check.findings
    assert [e["seq"] for e in check.entries] == [1, 2, 3]
    assert json.loads(head_path(run).read_text())["lines"] == 3


def test_no_log_is_an_intact_empty_log(tmp_path: Path):
    check = check_log(sealed_run(tmp_path))
    assert check.intact and check.entries == () and check.head_sha256 is None


def test_an_edited_line_in_the_middle_is_named(tmp_path: Path):
    run = sealed_run(tmp_path)
    three_decisions(run)
    lines = lines_of(run)
    lines[1] = lines[1].replace(b'"to":"monocyte"', b'"to":"basophil"')
    write_lines(run, lines)
    assert [(f.kind, f.where) for f in check_log(run).findings] == [("changed", "line 2")]


def test_a_removed_line_in_the_middle_is_named_by_its_seq(tmp_path: Path):
    run = sealed_run(tmp_path)
    three_decisions(run)
    lines = lines_of(run)
    write_lines(run, [lines[0], lines[2]])
    findings = check_log(run).findings
    assert findings[0].kind == "missing" and "seq 2 removed" in findings[0].detail
    assert any(f.where == "lines 3 to 3" for f in findings)  # the head file says there were three


def test_the_last_line_edited_or_removed_is_named_against_the_head_file(tmp_path: Path):
    run = sealed_run(tmp_path)
    three_decisions(run)
    lines = lines_of(run)
    write_lines(run, [*lines[:2], lines[2].replace(b'"user":"ben"', b'"user":"eve"')])
    assert [(f.kind, f.where) for f in check_log(run).findings] == [("changed", "line 3")]
    write_lines(run, lines[:2])
    assert [(f.kind, f.where) for f in check_log(run).findings] == [("missing", "lines 3 to 3")]


def test_the_first_line_binds_the_log_to_its_run(tmp_path: Path):
    run = sealed_run(tmp_path)
    three_decisions(run)
    other = sealed_run(tmp_path, "infer-2")
    log_path(other).write_bytes(log_path(run).read_bytes())
    head_path(other).write_bytes(head_path(run).read_bytes())
    findings = check_log(other).findings
    assert ("changed", "line 1") in [(f.kind, f.where) for f in findings]
    assert any("names run 'infer-1'" in f.detail for f in findings)


def test_garbage_and_a_cut_short_line_are_unreadable_findings(tmp_path: Path):
    run = sealed_run(tmp_path)
    three_decisions(run)
    log_path(run).write_bytes(log_path(run).read_bytes() + b'{"seq": 4, "to"')
    kinds = [(f.kind, f.where) for f in check_log(run).findings]
    assert ("unreadable", "line 4") in kinds


def test_nothing_is_appended_to_a_broken_chain_nor_for_bad_decisions(tmp_path: Path):
    run = sealed_run(tmp_path)
    three_decisions(run)
    p = predictions()
    with pytest.raises(WbcvError, match="expected one of neutrophil"):
        append_decision(run, p, Decision("ana", "s1/a.jpg", "blast"))
    with pytest.raises(WbcvError, match="not a classified cell"):
        append_decision(run, p, Decision("ana", "../etc/passwd", "monocyte"))
    with pytest.raises(WbcvError, match="no authenticated user"):
        append_decision(run, p, Decision("", "s1/a.jpg", "monocyte"))
    lines = lines_of(run)
    write_lines(run, [lines[0], lines[2]])
    with pytest.raises(WbcvError, match="not intact"):
        append_decision(run, p, Decision("ana", "s1/a.jpg", "monocyte"))
    assert len(lines_of(run)) == 2


def test_verified_cells_feed_the_preclassification_statistics(tmp_path: Path):
    run = sealed_run(tmp_path)
    three_decisions(run)
    append_decision(run, predictions(), Decision("ana", "s2/c.jpg", NOT_A_WBC))
    table = verified_cells(predictions(), check_log(run).entries)
    assert table.select("preclassified", "verified", "verified_target").rows() == [
        ("neutrophil", "neutrophil", "neutrophil"),
        ("lymphocyte", "lymphocyte", "lymphocyte"),  # reclassified, then back: the last record counts
        ("unclassified", NOT_A_WBC, "excluded"),
    ]
    st_ = preclassification_statistics(table, 0.95)
    assert st_["n_cells"] == 3
    assert st_["agreement"]["k"] == 2
    assert st_["reclassification_rate"]["k"] == 1


def test_unverified_cells_are_counted_as_without_both(tmp_path: Path):
    run = sealed_run(tmp_path)
    append_decision(run, predictions(), Decision("ana", "s1/a.jpg", None))
    st_ = preclassification_statistics(verified_cells(predictions(), check_log(run).entries), 0.95)
    assert (st_["n_cells"], st_["n_cells_without_both"]) == (1, 2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    decisions=st.lists(
        st.tuples(st.sampled_from(CELLS), st.one_of(st.none(), st.sampled_from(VERIFIED_CHOICES))),
        min_size=1,
        max_size=8,
    ),
    data=st.data(),
)
def test_any_single_byte_changed_anywhere_is_found(tmp_path_factory, decisions, data):
    run = sealed_run(tmp_path_factory.mktemp("chain"))
    for cell, to in decisions:
        append_decision(run, predictions(), Decision("ana", cell, to))
    check = check_log(run)
    assert check.intact
    last = {cell: e["to"] for cell, e in ((e["cell_path"], e) for e in check.entries)}
    table = verified_cells(predictions(), check.entries)
    assert dict(table.filter(pl.col("verified").is_not_null()).select("cell_path", "verified").iter_rows()) == last
    raw = bytearray(log_path(run).read_bytes())
    at = data.draw(st.integers(0, len(raw) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[at]))
    raw[at] = new
    log_path(run).write_bytes(bytes(raw))
    assert not check_log(run).intact
