"""`wbcv compare`: a finished inference run + a reference file + a protocol -> a comparison run.

The comparison is its own run record (the inference run stays untouched, as every sealed run
does): ``RUNS/<time>-compare-<key>/`` with ``comparison.parquet`` (one row per sample and
measurand), ``excluded.parquet`` (every exclusion with its reason and, for a value, what it would
have been: ``wbcv.validation.compare``; its rows are ``ComparisonSummary.n_exclusions``),
``reference.parquet`` (the parsed reference, reruns included), ``statistics.json``,
``verdict.json`` and ``run.json`` (inputs with their sha256: the inference run's record, the
reference file, the protocol file).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from wbcv.base.atomic import sha256_file
from wbcv.base.records import (
    ComparisonInputs,
    ComparisonRecord,
    ComparisonSummary,
    InferenceLink,
    InferenceRecord,
    PlanInput,
    ProtocolInput,
    ReferenceInput,
    to_json,
)
from wbcv.base.runstore import RUN_RECORD, AlreadySealed, WorkingRun, read_record_of
from wbcv.base.software import software_info
from wbcv.base.tables import COMPARISON_FILE, COUNTS_FILE, EXCLUDED_FILE, REFERENCE_FILE, STATISTICS_FILE, VERDICT_FILE
from wbcv.validation.compare import EXCLUDED_SCHEMA, compare
from wbcv.validation.integrity import require_intact
from wbcv.validation.protocol import Protocol, load_protocol
from wbcv.validation.reference import ReferenceData, read_reference
from wbcv.validation.verdict import MeasurandVerdict, decide, overall, to_jsonable


@dataclass(frozen=True)
class ComparisonResult:
    run_dir: Path
    record: ComparisonRecord
    verdicts: list[MeasurandVerdict]
    passed: bool


def run_comparison(
    inference_run: Path,
    reference_path: Path,
    protocol_path: Path,
    runs_dir: Path | None = None,
    *,
    reference: ReferenceData | None = None,
    protocol: Protocol | None = None,
    plan_dir: Path | None = None,
) -> ComparisonResult:
    inference_run = Path(inference_run)
    plan = None if plan_dir is None else _plan_input(Path(plan_dir))
    record = read_record_of(inference_run, InferenceRecord, "give the run of `wbcv infer`")
    require_intact(inference_run, "a comparison would validate counts that are not what was computed")
    protocol = protocol or load_protocol(protocol_path)
    reference = reference or read_reference(reference_path)
    counts = pl.read_parquet(inference_run / COUNTS_FILE)
    result = compare(counts, reference, protocol)
    verdicts, stats = decide(result.table, protocol)
    passed = overall(verdicts)

    runs_dir = Path(runs_dir) if runs_dir is not None else inference_run.parent
    inputs = ComparisonInputs(
        inference_run=InferenceLink(
            run_id=record.run_id,
            path=inference_run.resolve(),
            record_sha256=sha256_file(inference_run / RUN_RECORD),
            model=record.model,
        ),
        reference=ReferenceInput(
            path=Path(reference_path).resolve(),
            sha256=sha256_file(Path(reference_path)),
            format=reference.format,
            encoding=reference.encoding,
        ),
        protocol=ProtocolInput(
            path=Path(protocol_path).resolve(),
            sha256=sha256_file(Path(protocol_path)),
            id=protocol.id,
            version=protocol.version,
        ),
        plan=plan,
    )
    key = hashlib.sha256(json.dumps(to_json(inputs), sort_keys=True).encode()).hexdigest()
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    run_id = f"{created:%Y%m%dT%H%M%SZ}-compare-{key[:8]}"
    verdict_doc = {"overall": "pass" if passed else "fail", "measurands": to_jsonable(verdicts)}
    try:
        work, _ = WorkingRun.open(runs_dir, key, {"run_id": run_id, "created_utc": created.isoformat()})
    except AlreadySealed as done:  # pragma: no cover - only after a crash between commit and clean-up
        return ComparisonResult(done.run_dir, load_comparison(done.run_dir), verdicts, passed)
    with work.locked():
        run_id = work.started["run_id"]
        full_record = ComparisonRecord(
            created_utc=work.started["created_utc"],
            inputs=inputs,
            # The whole protocol as applied, so the report's methods section needs nothing else.
            protocol=protocol.as_record(),
            verdict=verdict_doc["overall"],
            summary=ComparisonSummary(
                n_samples_run=result.n_samples_run,
                n_samples_reference=result.n_samples_reference,
                n_values_compared=result.table.height,
                n_excluded=result.excluded.height,
                n_reference_rows_excluded_by_parser=reference.excluded.height,
            ),
            software=software_info(),
        )
        excluded = pl.concat(
            [result.excluded, reference.excluded.select("sample_id", "source_row", "reason")],
            how="diagonal_relaxed",
        ).select(list(EXCLUDED_SCHEMA))
        run_dir = work.seal(
            runs_dir,
            run_id,
            {COMPARISON_FILE: result.table, EXCLUDED_FILE: excluded, REFERENCE_FILE: reference.table},
            full_record,
            {STATISTICS_FILE: to_jsonable(stats), VERDICT_FILE: verdict_doc},
        )
    return ComparisonResult(run_dir, load_comparison(run_dir), verdicts, passed)


def _plan_input(plan_dir: Path) -> PlanInput:
    """The plan folder, verified against its manifest (``wbcv.validation.plan.read_plan``)."""
    from wbcv.validation.plan import read_plan

    check = read_plan(plan_dir)
    return PlanInput(
        path=plan_dir.resolve(),
        manifest_sha256=check.manifest_sha256,
        protocol_sha256=check.protocol_sha256,
        strata=check.strata,
    )


def load_comparison(run_dir: Path) -> ComparisonRecord:
    """The record of a comparison run (`wbcv compare` or `wbcv run`)."""
    return read_record_of(run_dir, ComparisonRecord, "give a comparison run (of `wbcv compare` or `wbcv run`)")
