"""The run store: one directory per run, written atomically, sealed when finished.

Life of a run directory::

    RUNS/.incomplete-<key>/        while working (key: hash of inputs, model and parameters)
      .lock                        flock held by the process working on it
      started.json                 creation time and parameters, written once
      parts/00000042.parquet       one finished slide each, written by rename
    RUNS/<run_id>/                 after the final rename, read-only from then on
      run.json                     the run record (typed: wbcv.base.records) with every file's sha256
      predictions.parquet, counts.parquet, skipped.parquet, inputs.parquet, log.txt

Every file is written to a temporary name, flushed to disk and renamed into place, so a reader
(or a process killed with SIGKILL) sees either the whole file or none of it. The final directory
appears by one rename of the finished working directory; before that rename its files are made
read-only. A run killed at any moment is picked up again by the same command (same key): slides
whose part exists are not redone.

Sealing (``write_manifest`` then ``seal_directory``) and checking a manifest
(``manifest_differences``) are shared with the report, which is sealed inside a run the same way.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import polars as pl

from wbcv.base.atomic import atomic_write_bytes, atomic_write_json, atomic_write_parquet, fsync_dir, sha256_file
from wbcv.base.errors import WbcvError
from wbcv.base.records import (
    RUN_FORMAT,
    AnyRecord,
    ComparisonRecord,
    InferenceRecord,
    PrecisionRecord,
    QualitativeRecord,
    ResultsRecord,
    RunRecord,
    parse_record,
    to_json,
)

R = TypeVar("R", InferenceRecord, ComparisonRecord, ResultsRecord, PrecisionRecord, QualitativeRecord)
RUN_RECORD: Final[str] = "run.json"
INCOMPLETE_PREFIX: Final[str] = ".incomplete-"


class AlreadySealed(Exception):
    """The run for this key was finished (sealed) before the process stopped."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


class WorkingRun:
    """A run directory that is still being written; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.parts = path / "parts"
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, runs_dir: Path, key: str, started: dict[str, Any]) -> tuple[WorkingRun, bool]:
        """Return the working run for ``key`` and whether it is resumed (True) or new."""
        try:
            runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WbcvError(f"{runs_dir}: cannot create the runs directory: {e.strerror}") from None
        path = runs_dir / f"{INCOMPLETE_PREFIX}{key[:16]}"
        resumed = (path / "started.json").is_file()
        if resumed:
            previous = json.loads((path / "started.json").read_text())
            finished = runs_dir / previous["run_id"]
            if (finished / RUN_RECORD).is_file():
                # Killed between the final rename and the clean-up: that run is finished.
                remove_tree(path)
                raise AlreadySealed(finished)
        run = cls(path)
        path.mkdir(exist_ok=True)
        run.parts.mkdir(exist_ok=True)
        if not resumed:
            atomic_write_json(path / "started.json", started)
        return run, resumed

    @property
    def started(self) -> dict[str, Any]:
        return json.loads((self.path / "started.json").read_text())

    @contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES):
                raise WbcvError(
                    f"{self.path}: another wbcv process is working on this run; wait for it or stop it first"
                ) from None
            raise
        self._lock_fd = fd
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            self._lock_fd = None

    def part_path(self, index: int) -> Path:
        return self.parts / f"{index:08d}.parquet"

    def finished_parts(self) -> set[int]:
        return {int(p.stem) for p in self.parts.glob("*.parquet") if p.stem.isdigit()}

    def write_part(self, index: int, frame: pl.DataFrame) -> None:
        atomic_write_parquet(self.part_path(index), frame)

    def read_parts(self, indices: list[int]) -> pl.DataFrame:
        # diagonal: a part written by an older version lacks the columns added since (null there)
        return pl.concat([pl.read_parquet(self.part_path(i)) for i in indices], how="diagonal")

    def log(self, line: str) -> None:
        with open(self.path / "log.txt", "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")

    def seal(
        self,
        runs_dir: Path,
        run_id: str,
        tables: dict[str, pl.DataFrame],
        record: RunRecord,
        documents: dict[str, Any] | None = None,
    ) -> Path:
        """Write the final run into a staging folder, make it read-only and rename it into place.

        The rename is the commit point. A process killed before it leaves the working run intact
        (the next attempt seals again); one killed after it leaves a working run whose run id
        already exists, which ``WorkingRun.open`` recognises and removes.
        """
        staging = runs_dir / f".sealing-{run_id}"
        if staging.exists():
            remove_tree(staging)
        staging.mkdir()
        for name, frame in tables.items():
            atomic_write_parquet(staging / name, frame)
        for name, doc in (documents or {}).items():
            atomic_write_json(staging / name, doc)
        log = self.path / "log.txt"
        if log.exists():
            atomic_write_bytes(staging / "log.txt", log.read_bytes())
        files = [*tables, *(documents or {}), *(["log.txt"] if log.exists() else [])]
        document = to_json(dataclasses.replace(record, format=RUN_FORMAT, run_id=run_id))
        write_manifest(staging, RUN_RECORD, document, files)
        final = runs_dir / run_id
        seal_directory(staging, final)
        remove_tree(self.path)
        return final


def write_manifest(folder: Path, name: str, document: dict[str, Any], files: Iterable[str]) -> None:
    """Write ``document`` as ``folder/name`` with ``files``: the sha256 of each named file of ``folder``.

    The one way a manifest is made: a run's run.json (``WorkingRun.seal``) and a report's
    manifest.json (``wbcv.validation.report``); ``manifest_differences`` checks either.
    """
    atomic_write_json(folder / name, {**document, "files": {n: sha256_file(folder / n) for n in sorted(files)}})


def seal_directory(staging: Path, final: Path) -> None:
    """Make ``staging`` and its files read-only, then rename it to ``final``: the commit point of a
    run and of a report. Refused when ``final`` exists (a sealed folder is never replaced)."""
    for p in staging.iterdir():
        p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    fsync_dir(staging)
    staging.chmod(0o555)
    if final.exists():
        raise WbcvError(f"{final}: already exists; a sealed folder is never replaced")
    os.rename(staging, final)
    fsync_dir(final.parent)


def remove_tree(path: Path) -> None:
    """Delete a folder of ours that was made read-only (a working run, a staging folder)."""
    for p in sorted(path.rglob("*"), key=lambda q: len(q.parts), reverse=True):
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
            p.rmdir()
        else:
            p.unlink()
    path.chmod(0o755)
    path.rmdir()


@dataclass(frozen=True)
class Verification:
    """What ``verify_run`` found: files whose content changed, files added, files missing."""

    run_dir: Path
    record: AnyRecord
    record_sha256: str  # sha256 of run.json, the manifest of the run's files
    changed: tuple[str, ...]
    added: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def intact(self) -> bool:
        return not (self.changed or self.added or self.missing)


def manifest_differences(
    folder: Path, expected: dict[str, str], manifest: str
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(changed, added, missing) files of ``folder`` (and its sub-folders) against a manifest's
    ``files`` map; the manifest file itself is not listed."""
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {manifest}
    changed = tuple(sorted(n for n in expected if n in present and sha256_file(folder / n) != expected[n]))
    return changed, tuple(sorted(present - set(expected))), tuple(sorted(set(expected) - present))


def verify_run(run_dir: Path) -> Verification:
    """Recompute the sha256 of every file of a sealed run against the ``files`` map of its run.json.

    run.json itself is the manifest: its own sha256 is returned so a report can print it and a
    reader can check the manifest was not rewritten together with a file.
    """
    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    changed, added, missing = manifest_differences(run_dir, record.files, RUN_RECORD)
    return Verification(run_dir, record, sha256_file(run_dir / RUN_RECORD), changed, added, missing)


def locate_source_run(run_dir: Path, record: ComparisonRecord) -> Path:
    """Where the inference run (or results run) of a comparison is: at the path recorded, or else beside the
    comparison under its run id (a runs folder moved or copied whole). Whoever uses it checks
    its run.json against the sha256 the comparison recorded (``source_run_findings`` does)."""
    link = record.inputs.inference_run
    for candidate in (link.path, Path(run_dir).parent / link.run_id):
        if (candidate / RUN_RECORD).is_file():
            return candidate
    return link.path


#: The largest run.json accepted (16 MiB). A real record is a few hundred KiB at most (one sha256
#: per file); a bigger one is not a wbcv record and is refused before it is read into memory.
MAX_RUN_RECORD_BYTES: Final[int] = 16 * 1024 * 1024


def read_run_record(run_dir: Path) -> AnyRecord:
    """The typed record of a finished run, every field checked (``wbcv.base.records``).

    Hostile run.json files are refused as a ``WbcvError`` naming the file: one that is not a
    regular file (a directory, a FIFO: opened without blocking), one over ``MAX_RUN_RECORD_BYTES``,
    one that is not UTF-8 JSON, or one nested too deeply to parse (RecursionError).
    """
    path = Path(run_dir) / RUN_RECORD
    if not path.exists():
        raise WbcvError(f"{run_dir}: not a finished wbcv run ({RUN_RECORD} is missing)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise WbcvError(f"{path}: unreadable run record: not a regular file")
            if info.st_size > MAX_RUN_RECORD_BYTES:
                raise WbcvError(
                    f"{path}: unreadable run record: {info.st_size} bytes, over the "
                    f"{MAX_RUN_RECORD_BYTES // (1024 * 1024)} MiB limit"
                )
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = f.read(MAX_RUN_RECORD_BYTES + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_RUN_RECORD_BYTES:
            raise WbcvError(
                f"{path}: unreadable run record: over the {MAX_RUN_RECORD_BYTES // (1024 * 1024)} MiB limit"
            )
        document = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise WbcvError(f"{path}: unreadable run record: JSON nested too deeply") from None
    except (OSError, ValueError) as e:  # ValueError covers UnicodeDecodeError and JSONDecodeError
        raise WbcvError(f"{path}: unreadable run record: {e}") from None
    try:
        return parse_record(document, str(path))
    except RecursionError:
        raise WbcvError(f"{path}: unreadable run record: JSON nested too deeply") from None


def read_record_of(run_dir: Path, kind: type[R], expected: str) -> R:
    """The record of a finished run that must be of one kind; ``expected`` tells the user which run to give."""
    record = read_run_record(run_dir)
    if not isinstance(record, kind):
        raise WbcvError(
            f"{run_dir}: this is {'an' if record.kind[0] in 'aeiou' else 'a'} {record.kind} run; {expected}"
        )
    return record
