"""`wbcv compare`: a finished inference run (or results run) + a reference file + a protocol -> a comparison run.

The counts come from an inference run (`wbcv infer`) or from a results run (`wbcv import-results`:
an analyzer's exported results, ``wbcv.validation.results``); both have the same counts table. The
comparison records which (``inputs.inference_run.kind``). A sample that the import excluded as a
whole is in the comparison's excluded table with the import's reason; a results run with per-cell
input adds the pre-classification statistics (``wbcv.validation.preclassification``) to
statistics.json under ``preclassification``.

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
from typing import TYPE_CHECKING, Final

import polars as pl

from wbcv.base.atomic import sha256_file
from wbcv.base.errors import WbcvError
from wbcv.base.records import (
    ComparisonInputs,
    ComparisonRecord,
    ComparisonSummary,
    DomainCheck,
    InferenceLink,
    InferenceRecord,
    PlanInput,
    ProtocolInput,
    ReferenceInput,
    ResultsRecord,
    to_json,
)
from wbcv.base.runstore import RUN_RECORD, AlreadySealed, WorkingRun, read_record_of, read_run_record
from wbcv.base.software import software_info
from wbcv.base.tables import (
    CELLS_FILE,
    COMPARISON_FILE,
    COUNTS_FILE,
    EXCLUDED_FILE,
    IMPORT_EXCLUDED_FILE,
    REFERENCE_FILE,
    STATISTICS_FILE,
    VERDICT_FILE,
)
from wbcv.validation.compare import EXCLUDED_SCHEMA, NOT_IN_RUN, check_reference_columns, compare
from wbcv.validation.integrity import require_intact
from wbcv.validation.protocol import Protocol, load_protocol
from wbcv.validation.reference import ReferenceData, read_reference
from wbcv.validation.results.run import Format, ImportOptions, ResultsRun, import_results
from wbcv.validation.verdict import MeasurandVerdict, decide, domain_failure, overall, to_jsonable

if TYPE_CHECKING:
    from wbcv.validation.plan import PlanCheck

#: The operating-domain check of a results run: it is of wbcv's own model, and an analyzer's exported
#: results were not made by it.
RESULTS_DOMAIN: Final[DomainCheck] = DomainCheck(
    method="none: not applicable to an analyzer's exported results (the check is of wbcv's model)"
)


@dataclass(frozen=True)
class ComparisonResult:
    run_dir: Path
    record: ComparisonRecord
    verdicts: list[MeasurandVerdict]
    passed: bool
    domain_failure: str | None = None  # why the protocol's require_in_domain fails the batch


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
    record = read_run_record(inference_run)
    if not isinstance(record, InferenceRecord | ResultsRecord):
        raise WbcvError(
            f"{inference_run}: this is a {record.kind} run; give the run of `wbcv infer` or `wbcv import-results`"
        )
    plan_check = None if plan_dir is None else _read_plan(Path(plan_dir))
    require_intact(inference_run, "a comparison would validate counts that are not what was computed")
    protocol = protocol or load_protocol(protocol_path)
    plan = None if plan_check is None else _plan_input(Path(plan_dir or "."), plan_check, protocol)
    reference = reference or read_reference(reference_path)
    counts = pl.read_parquet(inference_run / COUNTS_FILE)
    result = compare(counts, reference, protocol)
    verdicts, stats = decide(result.table, protocol)
    domain = record.domain if isinstance(record, InferenceRecord) else RESULTS_DOMAIN
    domain_reason = domain_failure(domain, protocol)
    passed = overall(verdicts) and domain_reason is None
    result_excluded = result.excluded
    if isinstance(record, ResultsRecord):
        result_excluded = with_import_exclusions(result.excluded, inference_run, counts)
        stats = {**stats, **_preclassification(inference_run, protocol.confidence)}

    runs_dir = Path(runs_dir) if runs_dir is not None else inference_run.parent
    inputs = ComparisonInputs(
        inference_run=InferenceLink(
            kind=record.kind,
            run_id=record.run_id,
            path=inference_run.resolve(),
            record_sha256=sha256_file(inference_run / RUN_RECORD),
            model=record.model if isinstance(record, InferenceRecord) else None,
            analyzer=record.analyzer if isinstance(record, ResultsRecord) else None,
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
    verdict_doc = {
        "overall": "pass" if passed else "fail",
        "measurands": to_jsonable(verdicts),
        "domain": to_json(domain),
        "failure_reasons": [domain_reason] if domain_reason else [],
    }
    try:
        work, _ = WorkingRun.open(runs_dir, key, {"run_id": run_id, "created_utc": created.isoformat()})
    except AlreadySealed as done:  # pragma: no cover - only after a crash between commit and clean-up
        return ComparisonResult(done.run_dir, load_comparison(done.run_dir), verdicts, passed, domain_reason)
    with work.locked():
        run_id = work.started["run_id"]
        full_record = ComparisonRecord(
            created_utc=work.started["created_utc"],
            inputs=inputs,
            # The whole protocol as applied, so the report's methods section needs nothing else.
            protocol=protocol.as_record(),
            verdict=verdict_doc["overall"],
            domain=domain,
            summary=ComparisonSummary(
                n_samples_run=result.n_samples_run,
                n_samples_reference=result.n_samples_reference,
                n_values_compared=result.table.height,
                n_excluded=result_excluded.height,
                n_reference_rows_excluded_by_parser=reference.excluded.height,
            ),
            software=software_info(),
        )
        excluded = pl.concat(
            [result_excluded, reference.excluded.select("sample_id", "source_row", "reason")],
            how="diagonal_relaxed",
        ).select(list(EXCLUDED_SCHEMA))
        run_dir = work.seal(
            runs_dir,
            run_id,
            {COMPARISON_FILE: result.table, EXCLUDED_FILE: excluded, REFERENCE_FILE: reference.table},
            full_record,
            {STATISTICS_FILE: to_jsonable(stats), VERDICT_FILE: verdict_doc},
        )
    return ComparisonResult(run_dir, load_comparison(run_dir), verdicts, passed, domain_reason)


def compare_export(
    export: Path,
    fmt: Format,
    options: ImportOptions,
    reference_path: Path,
    protocol_path: Path,
    runs_dir: Path,
    comparison_dir: Path | None = None,
) -> tuple[ResultsRun, ComparisonResult]:
    """`wbcv compare --results`: import an analyzer's export into a results run under ``runs_dir``,
    then compare it. The protocol, the reference and the columns the protocol needs from it are
    checked first, so a wrong reference writes no results run."""
    protocol, reference = load_protocol(protocol_path), read_reference(reference_path)
    check_reference_columns(reference, protocol)
    imported = import_results(export, fmt, runs_dir, options)
    result = run_comparison(
        imported.run_dir, reference_path, protocol_path, comparison_dir, reference=reference, protocol=protocol
    )
    return imported, result


def with_import_exclusions(excluded: pl.DataFrame, results_run: Path, counts: pl.DataFrame) -> pl.DataFrame:
    """The comparison's exclusions with the samples the import excluded as a whole: a reference
    sample's "not in the run" row takes the import's reason; a sample in neither gets a row."""
    imported = pl.read_parquet(results_run / IMPORT_EXCLUDED_FILE)
    whole = (
        imported.filter(
            pl.col("export_class").is_null()
            & pl.col("sample_id").is_not_null()
            & ~pl.col("sample_id").is_in(counts["sample_id"].implode())
        )
        .group_by("sample_id", maintain_order=True)
        .agg(pl.format("excluded at import ({}): {}", pl.col("location"), pl.col("reason")).first().alias("why"))
    )
    if whole.height == 0:
        return excluded
    joined = excluded.join(whole, on="sample_id", how="left", maintain_order="left")
    not_in_run = pl.col("measurand").is_null() & (pl.col("reason") == NOT_IN_RUN) & pl.col("why").is_not_null()
    replaced = joined.with_columns(reason=pl.when(not_in_run).then(pl.col("why")).otherwise(pl.col("reason")))
    named = joined.filter(not_in_run)["sample_id"]
    rest = whole.filter(~pl.col("sample_id").is_in(named.implode())).select("sample_id", reason="why")
    return pl.concat([replaced.drop("why"), rest], how="diagonal_relaxed").select(list(EXCLUDED_SCHEMA))


def _preclassification(results_run: Path, confidence: float) -> dict[str, object]:
    """Pre-classification against verification, for a results run made from a per-cell table."""
    from wbcv.validation.preclassification import preclassification_statistics

    if not (results_run / CELLS_FILE).is_file():
        return {}
    return {"preclassification": preclassification_statistics(pl.read_parquet(results_run / CELLS_FILE), confidence)}


def _read_plan(plan_dir: Path) -> PlanCheck:
    """The plan folder, verified against its manifest (``wbcv.validation.plan.read_plan``)."""
    from wbcv.validation.plan import read_plan

    return read_plan(plan_dir)


def _plan_input(plan_dir: Path, check: PlanCheck, protocol: Protocol) -> PlanInput:
    """What the comparison records of its plan, with the protocol fields applied otherwise than planned."""
    from wbcv.validation.plan import protocol_changes

    return PlanInput(
        path=plan_dir.resolve(),
        manifest_sha256=check.manifest_sha256,
        protocol_sha256=check.protocol_sha256,
        strata=check.strata,
        changed_fields=protocol_changes(check.protocol_record, to_json(protocol.as_record())),
    )


def load_comparison(run_dir: Path) -> ComparisonRecord:
    """The record of a comparison run (`wbcv compare` or `wbcv run`)."""
    return read_record_of(run_dir, ComparisonRecord, "give a comparison run (of `wbcv compare` or `wbcv run`)")
