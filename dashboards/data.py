"""Reading run records for the dashboard: the runs of a folder, and one comparison run in full.

The dashboard only reads. Sealed runs never change (``wbcv.base.runstore``), so a loaded run is
cached by its id for the life of the process; the list of runs is re-read when the folder's
entries change, so runs finished while the dashboard is open appear on the next page load.

A comparison run names its inference run (``inputs.inference_run``) by path and by the sha256 of
its run.json (found as ``wbcv.base.runstore.locate_source_run`` says). The dashboard
follows that link only when the hash still matches: the inference run's record says which batch
folder the cell images come from, so an altered record must not be able to widen what the image
route serves (``wbcv.dashboards.cells``).

Everything a comparison shows comes from its own folder: the excluded samples are drawn at the
values excluded.parquet recorded for them at comparison, so a runs folder that was moved, or whose
protocol and reference files are gone, shows the same.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Final

import polars as pl

from wbcv.base.errors import WbcvError
from wbcv.base.records import ComparisonRecord, InferenceRecord, PrecisionRecord, QualitativeRecord
from wbcv.base.runstore import INCOMPLETE_PREFIX, RUN_RECORD, read_record_of, read_run_record, verify_run
from wbcv.base.tables import (
    COMPARISON_FILE,
    COUNTS_FILE,
    EXCLUDED_FILE,
    PREDICTIONS_FILE,
    REFERENCE_FILE,
    STATISTICS_FILE,
    VERDICT_FILE,
)
from wbcv.dashboards.studies import StudyLine, study_line
from wbcv.validation.expert_labels import LabelledCells, labelled_cells
from wbcv.validation.integrity import source_run_findings

#: Columns of the sample table (and of its CSV export), in this order.
TABLE_COLUMNS: Final[tuple[str, ...]] = (
    "sample_id",
    "measurand",
    "reference",
    "predicted",
    "error_pct",
    "limit_pct",
    "within_limit",
    "n_classified",
    "n_unclassified",
    "counting_error_low_pct",
    "counting_error_high_pct",
    "flags",
    "marks",
    "excluded_reason",
)


@dataclass(frozen=True)
class RunSummary:
    """One line of the runs list."""

    run_id: str
    path: Path
    created_utc: str
    study: str
    protocol: str
    model: str
    verdict: str
    n_values: int
    n_exclusions: int  # ComparisonSummary.n_exclusions: the count the command line and the report show
    exclusions_text: str
    domain: str = "not_checked"  # the batch's operating-domain verdict (wbcv.inference.domain)


def _summary(path: Path, record: ComparisonRecord) -> RunSummary:
    proto = record.protocol
    return RunSummary(
        run_id=record.run_id,
        path=path,
        created_utc=record.created_utc,
        study=proto.study.get("id") or proto.title,
        protocol=f"{proto.id} v{proto.version}",
        model=record.inputs.inference_run.producer,
        verdict=record.verdict,
        n_values=record.summary.n_values_compared,
        n_exclusions=record.summary.n_exclusions,
        exclusions_text=record.summary.exclusions_text,
        domain=record.domain.verdict,
    )


class RunCatalog:
    """The comparison runs in ``runs_dir`` (its direct sub-folders), newest first."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = Path(runs_dir)
        if not self.runs_dir.is_dir():
            raise WbcvError(f"{self.runs_dir}: runs folder does not exist; give the --out folder of `wbcv run`")
        self._lock = threading.Lock()
        self._listing: tuple[str, ...] = ()
        self._summaries: list[RunSummary] = []
        self._unreadable: list[tuple[str, str]] = []
        self._studies: list[StudyLine] = []
        self._loaded: dict[str, ComparisonRun] = {}

    def summaries(self) -> list[RunSummary]:
        """The readable comparison runs, newest first. A run folder that cannot be read (a hostile or
        broken run.json, or a copy of a run under another folder name) is left out and listed by
        ``unreadable`` with its reason: one bad folder never takes down the review of the others."""
        names = tuple(
            sorted(
                p.name
                for p in self.runs_dir.iterdir()
                if p.is_dir()
                and not p.name.startswith((".", INCOMPLETE_PREFIX))
                and ((p / RUN_RECORD).exists() or (p / RUN_RECORD).is_symlink())
            )
        )
        with self._lock:
            if names != self._listing:
                found: list[RunSummary] = []
                studies: list[StudyLine] = []
                bad: list[tuple[str, str]] = []
                seen: dict[str, str] = {}
                for name in names:
                    try:
                        record = read_run_record(self.runs_dir / name)
                        if record.run_id != name:
                            raise WbcvError(
                                f"run.json names run {record.run_id!r}, not the folder's name "
                                "(a copy of a run under another name?)"
                            )
                        if record.run_id in seen:
                            raise WbcvError(f"run id {record.run_id!r} is also the run of folder {seen[record.run_id]}")
                        seen[record.run_id] = name
                        if isinstance(record, ComparisonRecord):
                            _require_sealed_files(self.runs_dir / name)
                            found.append(_summary(self.runs_dir / name, record))
                        elif isinstance(record, PrecisionRecord | QualitativeRecord):
                            studies.append(study_line(self.runs_dir / name, record))
                    except WbcvError as e:
                        bad.append((name, str(e).removeprefix(f"{self.runs_dir / name / RUN_RECORD}: ")))
                    except Exception as e:  # noqa: BLE001 - any failure of one run must not stop the page
                        bad.append((name, f"{type(e).__name__}: {e}"[:300]))
                self._summaries = sorted(found, key=lambda s: (s.created_utc, s.run_id), reverse=True)
                self._unreadable = bad
                self._studies = sorted(studies, key=lambda s: (s.created_utc, s.run_id), reverse=True)
                self._listing = names
            return list(self._summaries)

    def studies(self) -> list[StudyLine]:
        """The precision and qualitative study runs, newest first (``wbcv.dashboards.studies``)."""
        self.summaries()
        with self._lock:
            return list(self._studies)

    def unreadable(self) -> list[tuple[str, str]]:
        """(folder name, reason) of each run folder the last ``summaries`` could not read."""
        self.summaries()
        with self._lock:
            return list(self._unreadable)

    def get(self, run_id: str) -> ComparisonRun:
        """A comparison run by id; only ids of the listing are accepted (never a path)."""
        with self._lock:
            if run_id in self._loaded:
                return self._loaded[run_id]
        summary = next((s for s in self.summaries() if s.run_id == run_id), None)
        if summary is None:
            raise WbcvError(f"no comparison run {run_id!r} in {self.runs_dir}")
        run = ComparisonRun(summary.path)
        with self._lock:
            return self._loaded.setdefault(run_id, run)

    def inference_for_cells(self, inference_run_id: str) -> InferenceRun | None:
        """The inference run (by id) of a listed comparison run whose link is intact, else None."""
        for s in self.summaries():
            run = self.get(s.run_id)
            inf = run.inference
            if inf is not None and inf.run_id == inference_run_id:
                return inf
        return None


class InferenceRun:
    """The per-cell side of a comparison: predictions, counts and the registered slide folders."""

    def __init__(self, path: Path, record: InferenceRecord) -> None:
        self.path = path
        self.record = record
        self.run_id = record.run_id
        self.batch_root = record.batch.path

    @cached_property
    def predictions(self) -> pl.DataFrame:
        p = self.path / PREDICTIONS_FILE
        return pl.read_parquet(p) if p.is_file() else pl.DataFrame()

    @cached_property
    def counts(self) -> pl.DataFrame:
        return pl.read_parquet(self.path / COUNTS_FILE)

    @cached_property
    def slide_dirs(self) -> dict[str, Path]:
        """sample_id -> its slide folder, as registered by the manifest when the run was made."""
        return {sid: self.batch_root / rel for sid, rel in self.counts.select("sample_id", "slide_dir").iter_rows()}

    @cached_property
    def cell_sample(self) -> dict[str, str]:
        """cell_path -> sample_id of every classified cell: the only paths the image route serves."""
        if self.predictions.is_empty():
            return {}
        return dict(self.predictions.select("cell_path", "sample_id").iter_rows())

    def cells_of(self, sample_id: str) -> pl.DataFrame:
        if self.predictions.is_empty():
            return self.predictions
        return self.predictions.filter(pl.col("sample_id") == sample_id).select(
            "cell_path", "predicted_class", "confidence", "unclassified", "abstain_reason", "expert_label"
        )

    @cached_property
    def labelled(self) -> LabelledCells | None:
        """The cells against their expert labels (the report's confusion matrix), when there are any."""
        return None if self.predictions.is_empty() else labelled_cells(self.predictions)


def _require_sealed_files(run_dir: Path) -> None:
    """Refuse a comparison run whose sealed files (comparison table, statistics, verdict ...) changed
    or went missing since it was sealed: the runs list must never show an altered verdict as the
    run's own. (Files added later, such as its report, are `wbcv verify`'s to judge.)"""
    v = verify_run(run_dir)
    if v.changed or v.missing:
        what = [f"{n} changed" for n in v.changed] + [f"{n} missing" for n in v.missing]
        raise WbcvError(f"altered since it was sealed ({', '.join(what[:5])}); `wbcv verify {run_dir}` lists it all")


class ComparisonRun:
    """One comparison run, read once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.record = read_record_of(path, ComparisonRecord, "the dashboard shows comparison runs")
        self.summary = _summary(path, self.record)
        self.run_id = self.summary.run_id
        self.table = pl.read_parquet(path / COMPARISON_FILE)
        self.excluded = pl.read_parquet(path / EXCLUDED_FILE)
        self.statistics: dict[str, Any] = json.loads((path / STATISTICS_FILE).read_text(encoding="utf-8"))
        verdict = json.loads((path / VERDICT_FILE).read_text(encoding="utf-8"))
        self.verdicts: dict[str, dict[str, Any]] = {v["measurand"]: v for v in verdict["measurands"]}
        self.measurands: list[str] = list(self.verdicts)
        self.required_coverage = self.record.protocol.required_coverage
        # the two-sided level of every interval of the run (its protocol's acceptance.confidence)
        self.confidence = self.record.protocol.confidence
        self.notes: list[str] = []  # what the dashboard could not show, and why

    @cached_property
    def inference(self) -> InferenceRun | None:
        path, findings = source_run_findings(self.path, self.record, files=False)
        assert path is not None  # a comparison record names its inference run
        if findings:
            what = (
                "was not found, at its recorded path or beside this run"
                if findings[0].kind == "missing"
                else "does not match the sha256 this comparison recorded"
            )
            self.notes.append(f"the inference run {path} {what}; its cells are not shown")
            return None
        link = self.record.inputs.inference_run
        if link.kind == "results":  # an analyzer's export: no cell images to show
            self.notes.append(f"the counts are an analyzer's exported results ({link.producer}, run {link.run_id})")
            return None
        return InferenceRun(path, read_record_of(path, InferenceRecord, "expected the comparison's inference run"))

    def rows(self, measurand: str) -> pl.DataFrame:
        return self.table.filter(pl.col("measurand") == measurand)

    @cached_property
    def excluded_values(self) -> pl.DataFrame | None:
        """The excluded values with what they would have been (excluded.parquet: reference, predicted,
        error %, classified cells, reason), for the 'excluded' toggle of the plot and the table.
        None for a run written before excluded.parquet held those values."""
        if "error_pct" not in self.excluded.columns:
            return None
        return self.excluded.filter(pl.col("measurand").is_not_null())

    def excluded_rows(self, measurand: str) -> pl.DataFrame | None:
        """``excluded_values`` of one measurand, the reason as ``excluded_reason``; None as there."""
        values = self.excluded_values
        if values is None:
            return None
        return values.filter(pl.col("measurand") == measurand).rename({"reason": "excluded_reason"})

    @cached_property
    def _listed_samples(self) -> set[str]:
        """Samples in the reference's parsed measurements or in the run's counts."""
        samples = set(pl.read_parquet(self.path / REFERENCE_FILE, columns=["sample_id"])["sample_id"].to_list())
        if self.inference is not None:
            samples |= set(self.inference.counts["sample_id"].to_list())
        return samples

    def sample_table(self, measurand: str, include_excluded: bool) -> pl.DataFrame:
        """The rows the page shows for one measurand (and exports as CSV)."""
        rows = self.rows(measurand).with_columns(excluded_reason=pl.lit(None, dtype=pl.String))
        if not include_excluded:
            return rows.select(TABLE_COLUMNS)
        parts = [rows]
        values = self.excluded_rows(measurand)
        if values is not None:
            parts.append(values)
        listed = set(pl.concat([p.select("sample_id") for p in parts])["sample_id"].to_list())
        rest = self.excluded.filter(
            (pl.col("measurand").is_null() | (pl.col("measurand") == measurand))
            & ~pl.col("sample_id").is_in(list(listed))
            # technical rows (QC, background checks) are neither in the run nor among the parsed measurements
            & pl.col("sample_id").is_in(list(self._listed_samples))
        )
        parts.append(rest.select("sample_id", pl.lit(measurand).alias("measurand"), excluded_reason="reason"))
        return pl.concat(parts, how="diagonal_relaxed").select(TABLE_COLUMNS)

    def coverage_point(self, measurand: str) -> dict[str, Any] | None:
        v = self.verdicts.get(measurand)
        if v is None or v.get("coverage") is None:
            return None
        return {
            "run_id": self.run_id,
            "created_utc": self.summary.created_utc,
            "model": self.summary.model,
            "coverage": v["coverage"],
            "coverage_lower": v["coverage_lower"],
            "coverage_upper": v["coverage_upper"],
            "confidence": self.confidence,
            "n": v["n"],
            "passed": v["passed"],
        }


def coverage_trend(catalog: RunCatalog, measurand: str) -> pl.DataFrame:
    """Coverage with its CI of ``measurand`` in every run that has it, oldest first."""
    points = [p for s in catalog.summaries() if (p := catalog.get(s.run_id).coverage_point(measurand)) is not None]
    schema = {
        "run_id": pl.String,
        "created_utc": pl.String,
        "model": pl.String,
        "coverage": pl.Float64,
        "coverage_lower": pl.Float64,
        "coverage_upper": pl.Float64,
        "confidence": pl.Float64,
        "n": pl.Int64,
        "passed": pl.Boolean,
    }
    return pl.DataFrame(points, schema=schema).sort("created_utc", "run_id")
