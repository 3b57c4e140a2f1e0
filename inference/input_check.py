"""`wbcv verify --inputs`: are the batch's files still the ones an inference run classified?

An inference run records every input file it read (``inputs.parquet``: the manifest, the expert
labels and each decoded cell, with sha256 and size) and every file it skipped with its reason
(``skipped.parquet``). This module checks the batch folder on disk against both:

* **changed**: a recorded file whose size or sha256 differs now (a retouched, recompressed or
  replaced image, an edited manifest);
* **missing**: a recorded file that is gone;
* **added**: an entry in one of the run's slide folders that the run neither read nor skipped (an
  image copied in afterwards);
* **unreadable**: a recorded file that can no longer be read as a regular file (it became a FIFO,
  a device, or permissions changed), or a slide folder that can no longer be listed.

Files are read by inference's own reader (``decode.read_cell_file``: ``O_NONBLOCK``, ``fstat`` must
show a regular file, never more bytes than the run recorded plus one), so a hostile batch cannot
hang the check or fill memory. Folders no sample claims are not inputs and are not checked.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import polars as pl

from wbcv.base.errors import WbcvError
from wbcv.base.records import ComparisonRecord, InferenceRecord, ResultsInput, ResultsRecord
from wbcv.base.runstore import locate_source_run, read_run_record
from wbcv.base.tables import INPUTS_FILE, SKIPPED_FILE
from wbcv.inference.decode import CellRejected, read_cell_file


@dataclass(frozen=True)
class InputFinding:
    kind: str  # changed, added, missing, unreadable
    path: str  # relative to the batch folder
    detail: str = ""

    def __str__(self) -> str:
        return f"input {self.kind}: {self.path}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class InputVerification:
    inference_run: Path  # the run whose inputs were checked: an inference run or a results run
    batch: Path  # the batch folder; for a results run, the folder of its exported file
    n_checked: int  # recorded files re-hashed
    findings: tuple[InputFinding, ...]
    export: ResultsInput | None = None  # a results run's one input: the analyzer's exported file

    @property
    def intact(self) -> bool:
        return not self.findings

    def describe(self) -> str:
        """What was checked, in the words of the run's kind (printed by `wbcv verify --inputs`)."""
        if self.export is not None:
            e = self.export
            return (
                f"input: the exported results file {e.path} ({e.format}, {e.bytes} bytes, recorded sha256 "
                f"{e.sha256}) re-hashed (results run {self.inference_run})"
            )
        return (
            f"inputs: {self.n_checked} recorded files of batch {self.batch} re-hashed "
            f"(inference run {self.inference_run})"
        )


def _inside(root: Path, rel: str) -> Path | None:
    """``root / rel`` for a relative POSIX path without '..'; None for anything else (never followed)."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts:
        return None
    return root.joinpath(*pure.parts)


def _check_recorded(batch: Path, rel: str, sha256: str, n_bytes: int) -> InputFinding | None:
    path = _inside(batch, rel)
    if path is None:
        return InputFinding("unreadable", rel, "recorded path is not inside the batch")
    if not os.path.lexists(path):
        return InputFinding("missing", rel)
    try:
        data = read_cell_file(path, n_bytes)  # as inference reads: regular files only, at most the recorded size
    except CellRejected as e:
        kind = "unreadable" if str(e).startswith("not a regular file") else "changed"  # else: it grew
        return InputFinding(kind, rel, str(e))
    except OSError as e:
        return InputFinding("unreadable", rel, e.strerror or str(e))
    if len(data) != n_bytes:
        return InputFinding("changed", rel, f"{len(data)} bytes, was {n_bytes}")
    digest = hashlib.sha256(data).hexdigest()
    return None if digest == sha256 else InputFinding("changed", rel, "content differs from the recorded sha256")


def _added(batch: Path, known: set[str]) -> list[InputFinding]:
    """Entries now in the run's slide folders that the run neither read nor skipped. The folders are
    those of the recorded files, listed by name only (nothing is opened or followed), so a manifest
    that no longer reads does not hide an image copied in."""
    folders = {PurePosixPath(rel).parent.as_posix() for rel in known} - {"."}
    findings: list[InputFinding] = []
    for folder in sorted(folders):
        path = _inside(batch, folder)
        if path is None:
            continue
        try:
            names = [entry.name for entry in os.scandir(path)]
        except OSError as e:
            findings.append(InputFinding("unreadable", f"{folder}/", e.strerror or str(e)))
            continue
        findings += [InputFinding("added", f"{folder}/{n}") for n in sorted(names) if f"{folder}/{n}" not in known]
    return findings


def inference_run_of(run_dir: Path) -> Path:
    """The inference run behind ``run_dir``: itself, or the run a comparison was made from."""
    record = read_run_record(run_dir)
    if isinstance(record, ComparisonRecord):
        return locate_source_run(run_dir, record)
    return Path(run_dir)


def verify_inputs(run_dir: Path) -> InputVerification:
    """Re-hash the batch's files against the inference run's inputs.parquet and skipped.parquet;
    for a results run (`wbcv import-results`), its exported results file against its recorded sha256.

    ``run_dir`` is an inference run or a comparison run (then its inference run is checked). The
    run's own tables are trusted only as far as ``wbcv verify`` checked them: call this after
    ``verify_record`` reported the run intact.
    """
    run = inference_run_of(Path(run_dir))
    record = read_run_record(run)
    if isinstance(record, ResultsRecord):  # an analyzer's export: its one input file
        source = record.input.path
        finding = _check_recorded(source.parent, source.name, record.input.sha256, record.input.bytes)
        return InputVerification(run, source.parent, 1, (finding,) if finding else (), export=record.input)
    if not isinstance(record, InferenceRecord):  # pragma: no cover - inference_run_of returns one
        raise WbcvError(f"{run}: not an inference run")
    batch = record.batch.path
    if not batch.is_dir():
        return InputVerification(run, batch, 0, (InputFinding("missing", str(batch), "the batch folder"),))
    # inputs.parquet lists every file that was read (decoded cells, and skipped ones that were
    # read before being refused); skipped.parquet adds the names never opened (FIFOs, duplicates).
    inputs = pl.read_parquet(run / INPUTS_FILE, columns=["path", "sha256", "bytes"])
    skipped = pl.read_parquet(run / SKIPPED_FILE).filter(pl.col("level") == "cell")
    findings = [
        f for rel, sha, n_bytes in inputs.iter_rows() if (f := _check_recorded(batch, rel, sha, n_bytes)) is not None
    ]
    known = set(inputs["path"]) | set(skipped["path"])
    findings += _added(batch, known)
    return InputVerification(run, batch, inputs.height, tuple(findings))
