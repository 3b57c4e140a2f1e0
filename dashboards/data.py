"""Reading run records for the dashboard: the runs of a folder, and one comparison run in full.

The dashboard only reads. Sealed runs never change (``wbcv.base.runstore``), so a loaded run is
cached by its id for the life of the process; the list of runs is re-read when the folder's
entries change, so runs finished while the dashboard is open appear on the next page load.

A comparison run names its inference run (``inputs.inference_run``) by path and by the sha256 of
its run.json. The dashboard follows that link only when the hash still matches: the inference
run's record says which batch folder the cell images come from, so an altered record must not be
able to widen what the image route serves (``wbcv.dashboards.cells``).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl

from wbcv.base.atomic import sha256_file
from wbcv.base.errors import WbcvError
from wbcv.base.runstore import INCOMPLETE_PREFIX, RUN_RECORD, read_run_record
from wbcv.base.tables import (
    COMPARISON_FILE,
    COUNTS_FILE,
    EXCLUDED_FILE,
    PREDICTIONS_FILE,
    REFERENCE_FILE,
    STATISTICS_FILE,
    VERDICT_FILE,
)
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.validation.compare import compare
from wbcv.validation.measurands import ALL_REFERENCE_QUANTITIES
from wbcv.validation.model_evaluation import class_report
from wbcv.validation.protocol import Protocol, load_protocol
from wbcv.validation.reference import ReferenceData

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
    n_excluded: int


def _summary(path: Path, record: dict[str, Any]) -> RunSummary:
    proto = record.get("protocol", {})
    study = proto.get("study", {}) or {}
    model = record.get("inputs", {}).get("inference_run", {}).get("model", {})
    summary = record.get("summary", {})
    return RunSummary(
        run_id=record["run_id"],
        path=path,
        created_utc=record.get("created_utc", ""),
        study=study.get("id") or proto.get("title") or "",
        protocol=f"{proto.get('id', '?')} v{proto.get('version', '?')}",
        model=model.get("id", "?"),
        verdict=record.get("verdict", "?"),
        n_values=int(summary.get("n_values_compared", 0)),
        n_excluded=int(summary.get("n_excluded", 0)),
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
        self._loaded: dict[str, ComparisonRun] = {}

    def summaries(self) -> list[RunSummary]:
        names = tuple(
            sorted(
                p.name
                for p in self.runs_dir.iterdir()
                if p.is_dir() and not p.name.startswith((".", INCOMPLETE_PREFIX)) and (p / RUN_RECORD).is_file()
            )
        )
        with self._lock:
            if names != self._listing:
                found = []
                for name in names:
                    try:
                        record = read_run_record(self.runs_dir / name)
                    except WbcvError:
                        continue  # not ours, or unreadable: the list shows what can be reviewed
                    if record.get("kind") == "comparison":
                        found.append(_summary(self.runs_dir / name, record))
                self._summaries = sorted(found, key=lambda s: (s.created_utc, s.run_id), reverse=True)
                self._listing = names
            return list(self._summaries)

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

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        self.path = path
        self.record = record
        self.run_id: str = record["run_id"]
        self.batch_root = Path(record.get("batch", {}).get("path", ""))

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
    def cell_report(self) -> dict[str, Any] | None:
        """Confusion matrix and cell-level metrics against the expert labels, when there are any.

        Cells labelled outside the five classes (immature granulocytes, debris ...) have no row in
        the matrix; they are counted in ``n_other_labels`` instead of being dropped silently.
        """
        p = self.predictions
        if p.is_empty() or p["expert_label"].null_count() == p.height:
            return None
        labelled = p.filter(pl.col("expert_label").is_not_null())
        known = labelled.filter(pl.col("expert_label").is_in(list(CELL_CLASSES)))
        if known.is_empty():
            return None
        index = {c: i for i, c in enumerate(CELL_CLASSES)}
        y_true = np.array([index[c] for c in known["expert_label"]], dtype=np.int64)
        y_pred = np.array(
            [-1 if u else index[c] for c, u in known.select("predicted_class", "unclassified").iter_rows()],
            dtype=np.int64,
        )
        report = class_report(y_true, y_pred, known["confidence"].to_numpy())
        report["n_other_labels"] = labelled.height - known.height
        return report


class ComparisonRun:
    """One comparison run, read once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.record = read_run_record(path)
        self.summary = _summary(path, self.record)
        self.run_id = self.summary.run_id
        self.table = pl.read_parquet(path / COMPARISON_FILE)
        self.excluded = pl.read_parquet(path / EXCLUDED_FILE)
        self.statistics: dict[str, Any] = json.loads((path / STATISTICS_FILE).read_text(encoding="utf-8"))
        verdict = json.loads((path / VERDICT_FILE).read_text(encoding="utf-8"))
        self.verdicts: dict[str, dict[str, Any]] = {v["measurand"]: v for v in verdict["measurands"]}
        self.measurands: list[str] = list(self.verdicts)
        self.required_coverage = float(self.record.get("protocol", {}).get("required_coverage", 0.95))
        self.notes: list[str] = []  # what the dashboard could not show, and why

    @cached_property
    def inference(self) -> InferenceRun | None:
        link = self.record.get("inputs", {}).get("inference_run", {})
        candidates = [Path(link.get("path", "")), self.path.parent / str(link.get("run_id", ""))]
        for cand in candidates:
            if not (cand / RUN_RECORD).is_file():
                continue
            if sha256_file(cand / RUN_RECORD) != link.get("record_sha256"):
                self.notes.append(
                    f"the inference run {cand} does not match the sha256 this comparison recorded; "
                    "its cells are not shown"
                )
                return None
            return InferenceRun(cand, read_run_record(cand))
        self.notes.append(f"the inference run {link.get('run_id', '?')} was not found; cells are not shown")
        return None

    def rows(self, measurand: str) -> pl.DataFrame:
        return self.table.filter(pl.col("measurand") == measurand)

    @cached_property
    def _protocol(self) -> Protocol | None:
        info = self.record.get("inputs", {}).get("protocol", {})
        path = Path(info.get("path", ""))
        if not path.is_file() or sha256_file(path) != info.get("sha256"):
            return None
        return load_protocol(path)

    @cached_property
    def excluded_values(self) -> pl.DataFrame | None:
        """Excluded samples with the values they would have had, for the plot's 'excluded' toggle.

        The same comparison (``wbcv.validation.compare``) is run again on the stored reference and the
        run's counts with the exclusion rules switched off (flags, marks, minimum cells and
        reference); the rows kept are those the real comparison excluded, with its reason. Needs
        the protocol file unchanged (its sha256 is in run.json); None when that is not possible.
        """
        proto, inf = self._protocol, self.inference
        if proto is None or inf is None:
            return None
        relaxed = dataclasses.replace(proto, exclude_flags="none", exclude_marks=(), min_cells=0, min_reference={})
        table = pl.read_parquet(self.path / REFERENCE_FILE)
        info = self.record["inputs"]["reference"]
        ref = ReferenceData(
            path=Path(info["path"]),
            format=info.get("format", ""),
            encoding=info.get("encoding", ""),
            table=table,
            excluded=pl.DataFrame(),
            quantities=tuple(q for q in ALL_REFERENCE_QUANTITIES if q in table.columns),
        )
        everything = compare(inf.counts, ref, relaxed).table
        reasons = self.excluded.filter(pl.col("sample_id").is_in(everything["sample_id"].unique().to_list()))
        whole = reasons.filter(pl.col("measurand").is_null()).group_by("sample_id").agg(pl.col("reason").first())
        one = (
            reasons.filter(pl.col("measurand").is_not_null())
            .group_by("sample_id", "measurand")
            .agg(pl.col("reason").first())
        )
        out = pl.concat(
            [
                everything.join(whole, on="sample_id", how="inner"),
                everything.join(one, on=["sample_id", "measurand"], how="inner"),
            ],
            how="vertical",
        )
        # a rerun's superseded row is a second measurement, not an excluded sample: it is not plotted
        return out.filter(~pl.col("reason").str.starts_with("rerun:")).unique(["sample_id", "measurand"])

    def excluded_rows(self, measurand: str) -> pl.DataFrame | None:
        """``excluded_values`` of one measurand, the reason as ``excluded_reason``; None as there."""
        extra = self.excluded_values
        if extra is None:
            return None
        return extra.filter(pl.col("measurand") == measurand).rename({"reason": "excluded_reason"})

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
        if include_excluded:
            extra = self.excluded_rows(measurand)
            if extra is not None:
                rows = pl.concat([rows, extra.select(rows.columns)], how="vertical")
            listed = set(rows["sample_id"].to_list())
            rest = self.excluded.filter(
                (pl.col("measurand").is_null() | (pl.col("measurand") == measurand))
                & ~pl.col("sample_id").is_in(list(listed))
            )
            # technical rows (QC, background checks) are neither in the run nor among the parsed measurements
            rest = rest.filter(pl.col("sample_id").is_in(list(self._listed_samples)))
            if rest.height:
                rows = pl.concat(
                    [
                        rows,
                        rest.select(
                            "sample_id",
                            pl.lit(measurand).alias("measurand"),
                            pl.col("reason").alias("excluded_reason"),
                        ),
                    ],
                    how="diagonal_relaxed",
                )
        return rows.select(TABLE_COLUMNS)

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
        "n": pl.Int64,
        "passed": pl.Boolean,
    }
    return pl.DataFrame(points, schema=schema).sort("created_utc", "run_id")
