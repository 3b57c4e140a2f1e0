"""Reading the small long-format CSV tables of the precision and flag studies, safely.

The rules of the project's readers (validation/reference.py), for tables a person prepares by hand:

* a regular file of at most MAX_STUDY_BYTES (a FIFO or device is refused: it could block);
* text in UTF-8 (with or without BOM) or, failing that, cp1252; NUL bytes, a UTF-16 byte-order mark
  or a ZIP (Excel) file are refused with what to do instead;
* comma or semicolon separated (whichever the header row uses more);
* the header names the columns; a column that is neither required nor optional is an error naming
  it (a misspelt ``replicate`` must not be dropped silently); a required column missing is an error;
* at most MAX_STUDY_ROWS data rows and MAX_FIELD_CHARS characters per field (csv's limit);
* blank lines are skipped; a row with too few or too many fields is returned as a problem row
  (the caller excludes it with the reason), never fitted to the header by guesswork.
"""

from __future__ import annotations

import csv
import io
import math
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from wbcv.base.errors import WbcvError, clipped, shown, suggest

MAX_STUDY_BYTES: Final[int] = 64 * 1024 * 1024
MAX_STUDY_ROWS: Final[int] = 1_000_000
MAX_FIELD_CHARS: Final[int] = 64 * 1024


@dataclass(frozen=True)
class StudyRow:
    """One data row: its line number in the file and its cells by column name, or why it does not fit."""

    line: int
    cells: dict[str, str]
    problem: str | None = None


def _decoded(path: Path, what: str) -> str:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise WbcvError(f"{path}: {what} file does not exist") from None
    except OSError as e:
        raise WbcvError(f"{path}: cannot read the {what} file: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise WbcvError(f"{path}: not a regular file; expected a CSV {what} table")
    if st.st_size > MAX_STUDY_BYTES:
        raise WbcvError(f"{path}: {st.st_size:,} bytes, above the {MAX_STUDY_BYTES:,} bytes read as a {what} table")
    data = path.read_bytes()
    if not data.strip():
        raise WbcvError(f"{path}: the {what} file is empty; expected a CSV table with a header row")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise WbcvError(f"{path}: UTF-16 text; save the {what} table as UTF-8 CSV")
    if data.startswith(b"PK\x03\x04"):
        raise WbcvError(f"{path}: a ZIP archive (an Excel workbook?), not CSV text; export the table as CSV")
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise WbcvError(f"{path} line {line}: NUL byte; expected CSV text (UTF-8 or cp1252)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        utf8_error = e
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        line = data.count(b"\n", 0, utf8_error.start) + 1
        raise WbcvError(
            f"{path} line {line}: byte 0x{data[utf8_error.start]:02X} is neither UTF-8 nor cp1252 text; "
            "save the table as UTF-8 CSV"
        ) from None


def _header(path: Path, row: list[str], required: Sequence[str], optional: Sequence[str]) -> list[str]:
    names = [c.strip().lower() for c in row]
    known = (*required, *optional)
    for name in names:
        if name not in known:
            raise WbcvError(
                f"{path} line 1: unknown column {shown(name)}{suggest(name, known)}; expected the columns "
                f"{', '.join(required)} and optionally {', '.join(optional)}"
            )
    for name in set(names):
        if names.count(name) > 1:
            raise WbcvError(f"{path} line 1: column {shown(name)} appears {names.count(name)} times")
    missing = [c for c in required if c not in names]
    if missing:
        raise WbcvError(f"{path} line 1: missing column(s) {', '.join(missing)}; the header has {', '.join(names)}")
    return names


def read_study_csv(
    path: Path | str, what: str, required: Sequence[str], optional: Sequence[str] = ()
) -> Iterator[StudyRow]:
    """The data rows of a study table (module docstring for the checks); header errors are WbcvErrors."""
    path = Path(path)
    text = _decoded(path, what)
    first = text.split("\n", 1)[0]
    sep = ";" if first.count(";") > first.count(",") else ","
    csv.field_size_limit(MAX_FIELD_CHARS)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    try:
        names = _header(path, next(reader), required, optional)
        n_rows = 0
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            n_rows += 1
            if n_rows > MAX_STUDY_ROWS:
                raise WbcvError(f"{path}: more than {MAX_STUDY_ROWS:,} data rows; split the study into several files")
            line = reader.line_num
            if len(row) != len(names):
                problem = f"{len(row)} fields but the header has {len(names)}; the values cannot be matched to columns"
                yield StudyRow(line, {}, problem)
                continue
            yield StudyRow(line, {n: c.strip() for n, c in zip(names, row, strict=True)})
    except csv.Error as e:
        raise WbcvError(f"{path} line {reader.line_num}: not readable as CSV: {clipped(str(e), 200)}") from None


def json_safe(value: Any) -> Any:
    """``value`` for ``json.dumps``: NaN and infinities as null (JSON has neither), paths as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
