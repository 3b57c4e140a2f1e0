"""The run store: one directory per run, written atomically, sealed when finished.

Life of a run directory::

    RUNS/.incomplete-<key>/        while working (key: hash of inputs, model and parameters)
      .lock                        flock held by the process working on it
      started.json                 creation time and parameters, written once
      parts/00000042.parquet       one finished slide each, written by rename
    RUNS/<run_id>/                 after the final rename, read-only from then on
      run.json                     the run record: inputs, model, software, parameters, file hashes
      predictions.parquet, counts.parquet, skipped.parquet, inputs.parquet, log.txt

Every file is written to a temporary name, flushed to disk and renamed into place, so a reader
(or a process killed with SIGKILL) sees either the whole file or none of it. The final directory
appears by one rename of the finished working directory; before that rename its files are made
read-only. A run killed at any moment is picked up again by the same command (same key): slides
whose part exists are not redone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import polars as pl

from wbcv.base.atomic import atomic_write_bytes, atomic_write_json, atomic_write_parquet, fsync_dir, sha256_file
from wbcv.base.errors import WbcvError

RUN_FORMAT: Final[str] = "wbcv-run/1"
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
                _remove_tree(path)
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
        return pl.concat([pl.read_parquet(self.part_path(i)) for i in indices], how="vertical")

    def log(self, line: str) -> None:
        with open(self.path / "log.txt", "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")

    def seal(
        self,
        runs_dir: Path,
        run_id: str,
        tables: dict[str, pl.DataFrame],
        record: dict[str, Any],
        documents: dict[str, Any] | None = None,
    ) -> Path:
        """Write the final run into a staging folder, make it read-only and rename it into place.

        The rename is the commit point. A process killed before it leaves the working run intact
        (the next attempt seals again); one killed after it leaves a working run whose run id
        already exists, which ``WorkingRun.open`` recognises and removes.
        """
        staging = runs_dir / f".sealing-{run_id}"
        if staging.exists():
            _remove_tree(staging)
        staging.mkdir()
        files: dict[str, str] = {}
        for name, frame in tables.items():
            atomic_write_parquet(staging / name, frame)
            files[name] = sha256_file(staging / name)
        for name, doc in (documents or {}).items():
            atomic_write_json(staging / name, doc)
            files[name] = sha256_file(staging / name)
        log = self.path / "log.txt"
        if log.exists():
            atomic_write_bytes(staging / "log.txt", log.read_bytes())
            files["log.txt"] = sha256_file(staging / "log.txt")
        record = {**record, "format": RUN_FORMAT, "run_id": run_id, "files": files}
        atomic_write_json(staging / RUN_RECORD, record)
        for p in staging.iterdir():
            p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        fsync_dir(staging)
        staging.chmod(0o555)
        final = runs_dir / run_id
        if final.exists():
            raise WbcvError(f"{final}: a run with this id already exists")
        os.rename(staging, final)
        fsync_dir(runs_dir)
        _remove_tree(self.path)
        return final


def _remove_tree(path: Path) -> None:
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
    record_sha256: str  # sha256 of run.json, the manifest of the run's files
    changed: tuple[str, ...]
    added: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def intact(self) -> bool:
        return not (self.changed or self.added or self.missing)


def verify_run(run_dir: Path) -> Verification:
    """Recompute the sha256 of every file of a sealed run against the ``files`` map of its run.json.

    run.json itself is the manifest: its own sha256 is returned so a report can print it and a
    reader can check the manifest was not rewritten together with a file.
    """
    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    expected: dict[str, str] = record.get("files", {})
    present = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()} - {RUN_RECORD}
    changed = tuple(sorted(n for n in expected if n in present and sha256_file(run_dir / n) != expected[n]))
    return Verification(
        run_dir,
        sha256_file(run_dir / RUN_RECORD),
        changed,
        tuple(sorted(present - set(expected))),
        tuple(sorted(set(expected) - present)),
    )


def read_run_record(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_RECORD
    if not path.is_file():
        raise WbcvError(f"{run_dir}: not a finished wbcv run ({RUN_RECORD} is missing)")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise WbcvError(f"{path}: unreadable run record: {e}") from None
    if record.get("format") != RUN_FORMAT:
        raise WbcvError(f"{path}: unknown run format {record.get('format')!r}; expected {RUN_FORMAT!r}")
    return record
