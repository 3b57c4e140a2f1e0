"""The technologist's verification of an inference run's cells: an append-only, hash-chained log.

ICSH 2019 (Kratz et al., Int J Lab Hematol 41:437): a technologist verifies every cell the
analyzer pre-classified, accepting its class or reclassifying it. For wbcv's own inference runs
the dashboard records each decision here, beside the sealed run and without altering it::

    RUNS/<run_id>/                         the sealed inference run (never written again)
    RUNS/.verification/<run_id>.jsonl      one JSON object per decision, oldest first
    RUNS/.verification/<run_id>.head.json  the number of lines and the sha256 of the last one

A line (canonical JSON: sorted keys, no spaces, ASCII) holds ``seq`` (1, 2, ...), ``prev`` (the
sha256 of the previous line's bytes; for line 1 the sha256 of the run's run.json, which binds the
log to that run), ``run_id``, ``user`` (the dashboard's authenticated user), ``time_utc``,
``cell_path`` and ``cell_sha256`` (the image's hash recorded in predictions.parquet), ``action``
(``accept`` or ``reclassify``), ``from`` (the cell's class before: its last verified class, else
the pre-classification) and ``to``. A cell's verified class is the ``to`` of its last line.

What ``check_log`` names: a line edited (the next line's ``prev`` no longer matches it; the last
line against the head file), a line removed (``seq`` skips it; lines removed at the end against
the head file), a line that is not a record, a log of another run. This is tamper *evidence*
against edits that do not recompute the chain: whoever can rewrite the whole log and the head file
can forge one, so `wbcv verify` prints the head's sha256 for a reviewer to record elsewhere.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import polars as pl

from wbcv.base.atomic import atomic_write_json, sha256_file
from wbcv.base.errors import WbcvError, shown
from wbcv.base.runstore import RUN_RECORD
from wbcv.base.taxonomy import CELL_CLASSES, UNCLASSIFIED

VERIFICATION_DIR: Final[str] = ".verification"
#: The verified outcome for an object that is not a white cell (platelet clump, debris, artefact).
NOT_A_WBC: Final[str] = "not_wbc"
#: What a technologist can verify a cell as, in the order of the dashboard's keys 1-7.
VERIFIED_CHOICES: Final[tuple[str, ...]] = (*CELL_CLASSES, UNCLASSIFIED, NOT_A_WBC)
#: The category of wbcv.validation.preclassification each choice counts as.
TARGET_OF_CHOICE: Final[dict[str, str]] = {**{c: c for c in (*CELL_CLASSES, UNCLASSIFIED)}, NOT_A_WBC: "excluded"}
ACCEPT, RECLASSIFY = "accept", "reclassify"
FIELDS: Final[frozenset[str]] = frozenset(
    {"seq", "prev", "run_id", "user", "time_utc", "cell_path", "cell_sha256", "action", "from", "to"}
)
#: A log over this size is refused unread (a run of 100,000 cells verified twice is about 70 MB).
MAX_LOG_BYTES: Final[int] = 256 * 1024 * 1024
MAX_LINE_BYTES: Final[int] = 16 * 1024


def log_path(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir.parent / VERIFICATION_DIR / f"{run_dir.name}.jsonl"


def head_path(run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    return run_dir.parent / VERIFICATION_DIR / f"{run_dir.name}.head.json"


def line_sha256(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def encode_line(entry: dict[str, Any]) -> bytes:
    """The canonical bytes of a record (no newline): what the next line's ``prev`` hashes."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


@dataclass(frozen=True)
class LogFinding:
    kind: str  # changed, missing, unreadable
    where: str  # "line 7", "head", "log"
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: verification log {self.where} ({self.detail})"


@dataclass(frozen=True)
class LogCheck:
    """What ``check_log`` read: the records in order, and what breaks the chain."""

    path: Path
    entries: tuple[dict[str, Any], ...]
    head_sha256: str | None  # sha256 of the last line; None for an empty log
    findings: tuple[LogFinding, ...]

    @property
    def intact(self) -> bool:
        return not self.findings


def _read_bytes(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_LOG_BYTES:
        raise WbcvError(f"{path}: {size} bytes, over the {MAX_LOG_BYTES // 2**20} MiB limit of a verification log")
    return path.read_bytes()


def _parse(n: int, raw: bytes) -> tuple[dict[str, Any] | None, LogFinding | None]:
    where = f"line {n}"
    if len(raw) > MAX_LINE_BYTES:
        return None, LogFinding("unreadable", where, f"{len(raw)} bytes, over {MAX_LINE_BYTES}")
    try:
        entry = json.loads(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        return None, LogFinding("unreadable", where, f"not a JSON record: {shown(str(e))}")
    if not isinstance(entry, dict) or set(entry) != FIELDS:
        got = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        return None, LogFinding("unreadable", where, f"expected the fields {sorted(FIELDS)}, got {shown(str(got))}")
    if not isinstance(entry["seq"], int) or entry["to"] not in VERIFIED_CHOICES:
        return None, LogFinding("unreadable", where, f"seq {shown(str(entry['seq']))}, to {shown(str(entry['to']))}")
    return entry, None


def _chain_findings(
    lines: list[bytes], entries: list[dict[str, Any] | None], genesis: str, run_id: str
) -> list[LogFinding]:
    """Lines removed (``seq`` skips), edited (the next line's ``prev``), or of another run."""
    findings: list[LogFinding] = []
    expected_seq = 1
    for i, entry in enumerate(entries):
        n = i + 1
        if entry is None:  # unreadable: reported by _parse
            expected_seq += 1
            continue
        gap = entry["seq"] > expected_seq
        if gap:
            last_gone = entry["seq"] - 1
            gone = f"seq {expected_seq}" + (f" to {last_gone}" if last_gone > expected_seq else "")
            findings.append(
                LogFinding("missing", f"before line {n}", f"{gone} removed: line {n} has seq {entry['seq']}")
            )
        elif entry["seq"] < expected_seq:
            findings.append(LogFinding("changed", f"line {n}", f"seq {entry['seq']} repeats or goes back"))
        expected_seq = entry["seq"] + 1
        prev = genesis if i == 0 else line_sha256(lines[i - 1])
        if entry["prev"] != prev and not gap:
            if i == 0:
                findings.append(LogFinding("changed", "line 1", "its prev is not the sha256 of this run's run.json"))
            else:
                findings.append(LogFinding("changed", f"line {n - 1}", f"line {n}'s prev no longer matches it"))
        if entry["run_id"] != run_id:
            findings.append(LogFinding("changed", f"line {n}", f"names run {shown(entry['run_id'])}, not {run_id}"))
    return findings


def _head_findings(run_dir: Path, lines: list[bytes]) -> list[LogFinding]:
    path = head_path(run_dir)
    if not path.is_file():
        return [] if not lines else [LogFinding("missing", "head", f"{path.name} is missing")]
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
        n, sha = int(head["lines"]), str(head["head_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [LogFinding("unreadable", "head", f"{path.name}: {shown(str(e))}")]
    if n > len(lines):
        return [LogFinding("missing", f"lines {len(lines) + 1} to {n}", f"the head file records {n} lines")]
    if n < len(lines):
        return [LogFinding("changed", f"lines {n + 1} to {len(lines)}", f"the head file records {n} lines")]
    if n and line_sha256(lines[-1]) != sha:
        return [LogFinding("changed", f"line {n}", "its sha256 differs from the head file's")]
    return []


def _state_key(run_dir: Path, data: bytes) -> str:
    """A digest of everything ``check_log``'s answer depends on: the log, the head file, run.json."""
    head = head_path(run_dir)
    head_bytes = head.read_bytes() if head.is_file() else b"-"
    parts = (hashlib.sha256(data).digest(), hashlib.sha256(head_bytes).digest(), sha256_file(run_dir / RUN_RECORD))
    return hashlib.sha256(b"".join(p if isinstance(p, bytes) else p.encode() for p in parts)).hexdigest()


#: The last check of each log, by path: (state key, result). Re-used only while the log, its head
#: file and run.json are byte for byte what was checked (their digests), so an append costs a hash
#: of the log, not a parse of every line (a 20,000-line log: about 2 s to parse on a busy 2-core machine).
_CHECKED: dict[Path, tuple[str, LogCheck]] = {}
_CHECKED_MAX: Final[int] = 16
_CHECKED_LOCK = threading.Lock()


def _remember(path: Path, key: str, check: LogCheck) -> None:
    with _CHECKED_LOCK:
        _CHECKED.pop(path, None)
        _CHECKED[path] = (key, check)
        while len(_CHECKED) > _CHECKED_MAX:
            _CHECKED.pop(next(iter(_CHECKED)))


def check_log(run_dir: Path) -> LogCheck:
    """Read and check the verification log of a sealed run (empty when there is none)."""
    run_dir = Path(run_dir)
    path = log_path(run_dir)
    if not path.is_file():
        return LogCheck(path, (), None, tuple(_head_findings(run_dir, [])))
    data = _read_bytes(path)
    key = _state_key(run_dir, data)
    with _CHECKED_LOCK:
        known = _CHECKED.get(path)
    if known is not None and known[0] == key:
        return known[1]
    check = _check_bytes(run_dir, path, data)
    _remember(path, key, check)
    return check


def _check_bytes(run_dir: Path, path: Path, data: bytes) -> LogCheck:
    lines = data.split(b"\n")
    findings: list[LogFinding] = []
    if lines[-1] == b"":
        lines.pop()
    elif lines:
        findings.append(LogFinding("unreadable", f"line {len(lines)}", "no newline at its end: a write cut short?"))
    parsed = [_parse(i + 1, raw) for i, raw in enumerate(lines)]
    findings += [f for _, f in parsed if f is not None]
    entries = [e for e, _ in parsed]
    findings += _chain_findings(lines, entries, sha256_file(run_dir / RUN_RECORD), run_dir.name)
    findings += _head_findings(run_dir, lines)
    head = line_sha256(lines[-1]) if lines else None
    return LogCheck(path, tuple(e for e in entries if e is not None), head, tuple(findings))


def verified_classes(entries: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    """cell_path -> its last record: the cell's verified class is that record's ``to``."""
    return {e["cell_path"]: e for e in entries}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Decision:
    """One decision of a reviewer on one cell: ``to`` None accepts the cell's current class."""

    user: str
    cell_path: str
    to: str | None


def append_decision(run_dir: Path, predictions: pl.DataFrame, decision: Decision) -> dict[str, Any]:
    """Append one record and return it. Refused (WbcvError) when the log's chain is broken, the
    cell is not one of the run's classified cells, or ``to`` is not a verified choice."""
    run_dir = Path(run_dir)
    if decision.to is not None and decision.to not in VERIFIED_CHOICES:
        raise WbcvError(
            f"verification of {shown(decision.cell_path)}: class {shown(decision.to)}; expected one of "
            f"{', '.join(VERIFIED_CHOICES)}"
        )
    if not decision.user:
        raise WbcvError("verification: no authenticated user; a decision is recorded only with a user name")
    row = predictions.filter(pl.col("cell_path") == decision.cell_path)
    if row.is_empty():
        raise WbcvError(f"verification: {shown(decision.cell_path)} is not a classified cell of run {run_dir.name}")
    path = log_path(run_dir)
    with _locked(path):
        check = check_log(run_dir)
        if not check.intact:
            raise WbcvError(
                f"{path}: the verification log is not intact ({'; '.join(map(str, check.findings[:3]))}); "
                "nothing is appended to a broken chain. Run `wbcv verify` on the run."
            )
        last = verified_classes(check.entries).get(decision.cell_path)
        pre = UNCLASSIFIED if row["unclassified"][0] else str(row["predicted_class"][0])
        before = last["to"] if last is not None else pre
        entry = {
            "seq": len(check.entries) + 1,
            "prev": check.head_sha256 or sha256_file(run_dir / RUN_RECORD),
            "run_id": run_dir.name,
            "user": decision.user,
            "time_utc": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "cell_path": decision.cell_path,
            "cell_sha256": row["sha256"][0],
            "action": ACCEPT if decision.to is None else RECLASSIFY,
            "from": before,
            "to": before if decision.to is None else decision.to,
        }
        line = encode_line(entry)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        atomic_write_json(
            head_path(run_dir), {"run_id": run_dir.name, "lines": entry["seq"], "head_sha256": line_sha256(line)}
        )
        after = LogCheck(path, (*check.entries, entry), line_sha256(line), ())
        _remember(path, _state_key(run_dir, _read_bytes(path)), after)
    return entry


def verified_cells(predictions: pl.DataFrame, entries: tuple[dict[str, Any], ...]) -> pl.DataFrame:
    """The per-cell table ``preclassification_statistics`` takes, from an inference run's predictions
    and its verification log: ``preclassified`` is the model's class (``unclassified`` when it
    abstained), ``verified`` the ``to`` of the cell's last record (null: not verified yet), each with
    its category (``*_target``)."""
    last = verified_classes(entries)
    verified = pl.DataFrame(
        {"cell_path": list(last), "verified": [e["to"] for e in last.values()]},
        schema={"cell_path": pl.String, "verified": pl.String},
    )
    pre = (
        pl.when(pl.col("unclassified")).then(pl.lit(UNCLASSIFIED)).otherwise(pl.col("predicted_class").cast(pl.String))
    )
    return (
        predictions.select("sample_id", "cell_path", preclassified=pre)
        .join(verified, on="cell_path", how="left", maintain_order="left")
        .with_columns(
            preclassified_target=pl.col("preclassified"),
            verified_target=pl.col("verified").replace_strict(TARGET_OF_CHOICE, default=None),
        )
    )
