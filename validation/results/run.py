"""`wbcv import-results`: an analyzer's exported results -> a sealed results run.

``RUNS/<time>-results-<key>/`` holds, beside ``run.json`` (``wbcv.base.records.ResultsRecord``: the
file's path, size and sha256, the format and reader, the analyzer, the class mapping applied in
full, what the counts were made from, a summary):

* ``counts.parquet``: the counts table of an inference run (``COUNT_COLUMNS``), one row per sample
  (``wbcv.validation.results.counting``), so ``wbcv compare`` reads it as it reads an inference run;
* ``observations.parquet``: every value read, with where it was and what it was mapped to;
* ``import_excluded.parquet``: every row, segment, record, class or sample left out, with the reason;
* ``cells.parquet`` (per-cell tables only): every cell with its pre-classified and verified class.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Final, Literal

import polars as pl

from wbcv.base.atomic import sha256_file
from wbcv.base.records import ResultsInput, ResultsRecord, ResultsSummary, to_json
from wbcv.base.runstore import AlreadySealed, WorkingRun, read_record_of
from wbcv.base.software import software_info
from wbcv.base.tables import CELL_SCHEMA, CELLS_FILE, COUNTS_FILE, IMPORT_EXCLUDED_FILE, OBSERVATIONS_FILE
from wbcv.validation.results.astm_records import read_astm
from wbcv.validation.results.cell_table import read_cell_table
from wbcv.validation.results.counting import Collected, Counted, count_samples
from wbcv.validation.results.differential_csv import read_differential_csv
from wbcv.validation.results.hl7_oru import read_hl7
from wbcv.validation.results.mapping import ClassMapping, analyzer_identity

Format = Literal["csv", "cells", "hl7", "astm"]
FORMATS: Final[tuple[str, ...]] = ("csv", "cells", "hl7", "astm")


@dataclass(frozen=True)
class ImportOptions:
    mapping: ClassMapping
    analyzer: dict[str, str | None]  # make, model, software_version, serial from the command line
    total_cells: int | None = None  # cells counted per sample, for percentages without a total


@dataclass(frozen=True)
class ResultsRun:
    run_dir: Path
    record: ResultsRecord


@dataclass(frozen=True)
class _Read:
    collected: Collected
    encoding: str
    identity: dict[str, str]
    reader: str
    cells: pl.DataFrame | None
    counted_from: str | None  # for per-cell tables: verified or preclassified


def _read(path: Path, fmt: Format, mapping: ClassMapping) -> _Read:
    collected = Collected()
    here = "wbcv.validation.results"
    if fmt == "csv":
        encoding = read_differential_csv(path, mapping, collected)
        return _Read(collected, encoding, {}, f"{here}.differential_csv", None, None)
    if fmt == "cells":
        encoding, cells, counted_from = read_cell_table(path, mapping, collected)
        frame = pl.DataFrame(cells, schema=CELL_SCHEMA)
        return _Read(collected, encoding, {}, f"{here}.cell_table", frame, counted_from)
    if fmt == "hl7":
        encoding, identity = read_hl7(path, mapping, collected)
        return _Read(collected, encoding, identity, f"{here}.hl7_oru with python-hl7 {version('hl7')}", None, None)
    encoding, identity = read_astm(path, mapping, collected)
    return _Read(collected, encoding, identity, f"{here}.astm_records", None, None)


def _counted_from(read: _Read, counted: Counted) -> Any:
    if read.counted_from:
        return read.counted_from
    kinds = set(counted.counted_from.values())
    return kinds.pop() if len(kinds) == 1 else "mixed" if kinds else "counts"


def import_results(path: Path, fmt: Format, runs_dir: Path, options: ImportOptions) -> ResultsRun:
    """Read the export, count, and seal a results run under ``runs_dir``."""
    path = Path(path)
    read = _read(path, fmt, options.mapping)
    analyzer = analyzer_identity(options.analyzer, options.mapping, read.identity)
    counted = count_samples(read.collected, options.mapping, analyzer.label, options.total_cells)
    source = ResultsInput(
        path=path.resolve(), sha256=sha256_file(path), bytes=path.stat().st_size, format=fmt, encoding=read.encoding
    )
    excluded = counted.excluded
    samples_excluded = excluded.filter(pl.col("export_class").is_null() & pl.col("sample_id").is_not_null())
    whole = samples_excluded.filter(~pl.col("sample_id").is_in(counted.counts["sample_id"].implode()))
    c = counted.counts
    summary = ResultsSummary(
        n_samples=c.height,
        n_samples_excluded=whole["sample_id"].n_unique(),
        n_cells_reported=int(c["n_files"].sum()),
        n_classified=int(c["n_classified"].sum()),
        n_unclassified=int(c["n_unclassified"].sum()),
        n_cells_excluded=int(c["n_skipped"].sum()),
        unmapped_classes=counted.unmapped,
        n_rows_excluded=excluded.height,
    )
    mapping_record = options.mapping.as_record()
    key_doc = {"input": to_json(source), "mapping": to_json(mapping_record), "analyzer": to_json(analyzer)}
    key_doc["total_cells"] = options.total_cells
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()
    created = dt.datetime.now(dt.UTC).replace(microsecond=0)
    started = {"run_id": f"{created:%Y%m%dT%H%M%SZ}-results-{key[:8]}", "created_utc": created.isoformat()}
    try:
        work, _ = WorkingRun.open(Path(runs_dir), key, started)
    except AlreadySealed as done:  # pragma: no cover - only after a crash between commit and clean-up
        return ResultsRun(done.run_dir, load_results(done.run_dir))
    with work.locked():
        record = ResultsRecord(
            created_utc=work.started["created_utc"],
            input=source,
            reader=read.reader,
            analyzer=analyzer,
            mapping=mapping_record,
            counted_from=_counted_from(read, counted),
            summary=summary,
            software=software_info(),
        )
        tables = {COUNTS_FILE: c, OBSERVATIONS_FILE: counted.observations, IMPORT_EXCLUDED_FILE: excluded}
        if read.cells is not None:
            tables[CELLS_FILE] = read.cells
        run_dir = work.seal(Path(runs_dir), work.started["run_id"], tables, record)
    return ResultsRun(run_dir, load_results(run_dir))


def load_results(run_dir: Path) -> ResultsRecord:
    return read_record_of(run_dir, ResultsRecord, "give a results run (of `wbcv import-results`)")
