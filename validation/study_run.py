"""`wbcv precision --out RUNS` and `wbcv qualitative --out RUNS`: a study as a sealed run.

A study run is sealed like every other run (``wbcv.base.runstore``): read-only once renamed into
place, every file's sha256 in its run.json, checked by `wbcv verify`. It holds::

    RUN/run.json          PrecisionRecord or QualitativeRecord: the input table's path, size and
                          sha256, the confidence level, the claims (precision) and a summary
    RUN/result.json       the whole result, as `--json` writes it (validation/precision_table.py,
                          validation/flag_table.py)
    RUN/excluded.parquet  every row of the input left out: its line and the reason (STUDY_EXCLUDED_SCHEMA)

The result is computed from the file whose sha256 is recorded: the table is hashed first, then
read, and the run is refused if the file changed in between. `wbcv report RUN` writes its report
(``wbcv.validation.study_report``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import polars as pl

from wbcv.base.atomic import sha256_file
from wbcv.base.errors import WbcvError
from wbcv.base.records import (
    FlagAcceptance,
    PrecisionRecord,
    ProtocolInput,
    QualitativeRecord,
    StudyInput,
    StudySummary,
    to_json,
)
from wbcv.base.runstore import AlreadySealed, WorkingRun, read_run_record
from wbcv.base.software import software_info
from wbcv.validation import flag_table, precision_table

RESULT_FILE: Final[str] = "result.json"
STUDY_EXCLUDED_FILE: Final[str] = "excluded.parquet"
STUDY_EXCLUDED_SCHEMA: Final[dict[str, pl.DataType]] = {"line": pl.Int64(), "reason": pl.String()}


@dataclass(frozen=True)
class StudyRun:
    run_dir: Path
    record: PrecisionRecord | QualitativeRecord


def _input(path: Path) -> StudyInput:
    try:
        size = path.stat().st_size
    except OSError as e:
        raise WbcvError(f"{path}: cannot read the study table: {e.strerror}") from None
    return StudyInput(path=path.resolve(), sha256=sha256_file(path), bytes=size)


def _unchanged(source: StudyInput, path: Path) -> None:
    if sha256_file(path) != source.sha256:
        raise WbcvError(f"{path}: the file changed while it was read; run the study again when it is no longer written")


def _excluded(rows: Sequence[Any]) -> pl.DataFrame:
    return pl.DataFrame(
        {"line": [r.line for r in rows], "reason": [r.reason for r in rows]}, schema=STUDY_EXCLUDED_SCHEMA
    )


def _seal(
    runs_dir: Path,
    kind: str,
    key_doc: dict[str, Any],
    build: Callable[[str], PrecisionRecord | QualitativeRecord],
    payload: dict[str, Any],
    excluded: Sequence[Any],
) -> StudyRun:
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    started = {"run_id": f"{created:%Y%m%dT%H%M%SZ}-{kind}-{key[:8]}", "created_utc": created.isoformat()}
    try:
        work, _ = WorkingRun.open(Path(runs_dir), key, started)
    except AlreadySealed as done:  # pragma: no cover - only after a crash between commit and clean-up
        return load_study(done.run_dir)
    with work.locked():
        record = build(work.started["created_utc"])
        tables = {STUDY_EXCLUDED_FILE: _excluded(excluded)}
        run_dir = work.seal(Path(runs_dir), work.started["run_id"], tables, record, {RESULT_FILE: payload})
    return load_study(run_dir)


def precision_run(
    path: Path | str, runs_dir: Path, claims: Sequence[precision_table.Claim] = (), confidence: float = 0.95
) -> tuple[precision_table.PrecisionReport, StudyRun]:
    """Analyse a precision table (``run_precision``) and seal the result as a precision run."""
    path = Path(path)
    source = _input(path)
    report = precision_table.run_precision(path, list(claims), confidence=confidence)
    _unchanged(source, path)
    claim_docs = tuple(dataclasses.asdict(c) for c in claims)
    summary = StudySummary(
        n_rows=report.n_rows,
        n_rows_excluded=len(report.excluded),
        n_groups=len(report.groups),
        n_groups_not_analysed=sum(g.result is None for g in report.groups),
    )

    def build(created: str) -> PrecisionRecord:
        return PrecisionRecord(
            created_utc=created,
            software=software_info(),
            input=source,
            confidence=confidence,
            claims=claim_docs,
            summary=summary,
        )

    key_doc = {"kind": "precision", "input": to_json(source), "claims": claim_docs, "confidence": confidence}
    run = _seal(runs_dir, "precision", key_doc, build, precision_table.report_payload(report), report.excluded)
    return report, run


def qualitative_run(
    path: Path | str, runs_dir: Path, confidence: float = 0.95, protocol: Path | None = None
) -> tuple[flag_table.FlagReport, StudyRun]:
    """Analyse a flag table (``run_qualitative``) and seal the result as a qualitative run; with a
    protocol, each flag is judged against its ``flag_acceptance`` and the run records both."""
    path = Path(path)
    source = _input(path)
    protocol_input, acceptance = (None, None) if protocol is None else flag_protocol(Path(protocol))
    report = flag_table.run_qualitative(path, confidence=confidence, acceptance=acceptance)
    _unchanged(source, path)
    summary = StudySummary(
        n_rows=report.n_rows, n_rows_excluded=len(report.excluded), n_groups=len(report.flags), n_groups_not_analysed=0
    )

    def build(created: str) -> QualitativeRecord:
        return QualitativeRecord(
            created_utc=created,
            software=software_info(),
            input=source,
            confidence=confidence,
            summary=summary,
            protocol=protocol_input,
            acceptance=acceptance,
        )

    key_doc = {"kind": "qualitative", "input": to_json(source), "confidence": confidence}
    if protocol_input is not None:
        key_doc["protocol"] = to_json(protocol_input)
    run = _seal(runs_dir, "qualitative", key_doc, build, flag_table.report_payload(report), report.excluded)
    return report, run


def flag_protocol(path: Path) -> tuple[ProtocolInput, FlagAcceptance]:
    """The protocol of a flag study and its flag_acceptance (a protocol without one is an error)."""
    from wbcv.validation.protocol import load_protocol

    protocol = load_protocol(path)
    if protocol.flag_acceptance is None:
        raise WbcvError(
            f"{path}: flag_acceptance: the protocol has no flag_acceptance section; expected e.g. "
            "flag_acceptance: {min_ppa: 0.8, min_npa: 0.9} (or leave out --protocol to estimate only)"
        )
    source = ProtocolInput(path=path.resolve(), sha256=sha256_file(path), id=protocol.id, version=protocol.version)
    return source, protocol.flag_acceptance


def load_study(run_dir: Path) -> StudyRun:
    """A sealed precision or qualitative run; any other run is a WbcvError saying what to give."""
    record = read_run_record(Path(run_dir))
    if not isinstance(record, PrecisionRecord | QualitativeRecord):
        raise WbcvError(
            f"{run_dir}: this is a {record.kind} run; give a run of `wbcv precision --out` or `wbcv qualitative --out`"
        )
    return StudyRun(Path(run_dir), record)


def study_result(run: StudyRun) -> dict[str, Any]:
    """result.json of a study run (checked against run.json by the caller: ``require_intact``)."""
    text = (run.run_dir / RESULT_FILE).read_text(encoding="utf-8")
    result = json.loads(text)
    if not isinstance(result, dict):
        raise WbcvError(f"{run.run_dir / RESULT_FILE}: expected a JSON object")
    return result
