"""Reading an export's text safely: the reference reader's checks (``wbcv.validation.reference``:
regular files only, a size cap, UTF-8 or cp1252 detected byte by byte, NUL bytes, UTF-16 and ZIP
files refused, lines capped) with the results file's own caps and words."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from wbcv.base.errors import WbcvError
from wbcv.validation.reference import TextFileKind, capped_lines, detect_encoding, numbered_rows

#: Largest CSV export read (bytes). Rows are read streamed, but a per-cell table keeps every cell
#: (a Python dict each, about 0.9 KiB): measured, a 63 MiB table of 1.19 million cells (5,962 slides
#: of 200) imported in 17 s with 1.0 GiB peak memory on the 2-core development machine. Split
#: larger exports by date.
MAX_TABLE_BYTES: Final[int] = 64 * 1024 * 1024
#: Largest HL7 or ASTM file read (bytes): messages are parsed in memory, one at a time, but the
#: text is held whole. 64 MiB is some 100,000 ORU messages of a differential.
MAX_MESSAGE_BYTES: Final[int] = 64 * 1024 * 1024

TABLE_TEXT: Final[TextFileKind] = TextFileKind(
    "results file", "a CSV export of the analyzer's results", MAX_TABLE_BYTES
)
MESSAGE_TEXT: Final[TextFileKind] = TextFileKind(
    "results file", "a file of HL7 or ASTM messages from the analyzer", MAX_MESSAGE_BYTES
)


@dataclass(frozen=True)
class CsvSource:
    encoding: str
    separator: str
    header_row: int
    header: list[str]  # stripped
    rows: Iterator[tuple[int, list[str]]]  # (row number, fields) after the header


def _separator(line: str) -> str:
    return max((";", ",", "\t"), key=line.count)


@contextmanager
def open_csv(path: Path) -> Iterator[CsvSource]:
    """The header (the first non-blank line) and the numbered rows of a CSV export; comma,
    semicolon or tab separated (whichever the header has most of)."""
    encoding = detect_encoding(path, TABLE_TEXT)
    with open(path, encoding="utf-8-sig" if encoding == "utf-8" else encoding, errors="strict", newline="") as f:
        lines = capped_lines(f, path)
        blank = 0
        for line in lines:
            if line.strip():
                break
            blank += 1
        else:
            raise WbcvError(f"{path}: no header row; expected a CSV table whose first line names the columns")
        sep = _separator(line)
        reader = csv.reader(itertools.chain([line], lines), delimiter=sep)
        rows = numbered_rows(reader, path, lambda: reader.line_num + blank)
        _, header = next(rows)
        yield CsvSource(encoding, sep, blank + 1, [h.strip() for h in header], ((r + blank, row) for r, row in rows))


def read_message_text(path: Path) -> tuple[str, str]:
    """(text, encoding) of an HL7 or ASTM file, within MAX_MESSAGE_BYTES."""
    encoding = detect_encoding(path, MESSAGE_TEXT)
    # newline="": CR, LF and CRLF kept as written (segment ends, frame ends and checksums depend on them)
    with open(path, encoding="utf-8-sig" if encoding == "utf-8" else encoding, errors="strict", newline="") as f:
        return f.read(), encoding
