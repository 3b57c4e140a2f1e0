"""Reading reference counts: Sysmex XN exports (XN_SAMPLE.csv and similar) and plain CSV tables.

Sysmex XN export, as handled here:

* text in UTF-8 (with or without BOM) or a Windows code page (cp1252); comma or semicolon
  separated; with semicolons, a decimal comma is accepted (``6,12``);
* any number of lines before the header row; the header row is the first row with a
  ``Sample No.`` column; columns are found by name, never by position;
* value columns carry their unit in the header (``NEUT#(10^3/uL)``, ``(10^9/L)``, ``(%)``,
  ``(10^(-1)%)``); values are converted to canonical units (``wbcv.validation.measurands``);
* a value column may have a mark column ``<name>/M`` holding ``*`` (low reliability),
  ``@`` (out of linearity) or ``!`` (panic value), in any combination;
* ``----`` means no result, ``++++`` over range: kept as a status, never as a number;
* interpretive flags are columns whose name starts with ``IP `` or ``Q-Flag``; a non-empty cell
  (other than ``0``) means the flag is set;
* technical rows (sample numbers starting ``QC-``, ``CAL``, ``ERR``, ``PRE-CHK-``,
  ``BACKGROUNDCHECK``) are excluded with that reason; a sample measured several times keeps every
  measurement here, and the protocol's rerun rule picks one later (``wbcv.validation.compare``).

A plain CSV reference (other analyzers) has a ``sample_id`` column and measurand columns named
like the Sysmex ones (``WBC``, ``NEUT#``, ``NEUT%`` ..., optionally with a unit in parentheses).
A CSV with ``sample_id`` and ``examiner`` columns is a manual differential (examiners' cell counts,
CLSI H20), read by ``wbcv.validation.manual_reference``.

Every excluded row is returned with its row number and reason. Anything malformed is a
``WbcvError`` naming the file, row and column.

Broken files that look plausible (issue 19):

* **Encoding.** The file is checked byte by byte before it is parsed: UTF-8 (with or without BOM)
  is tried, then cp1252; a byte neither can hold is refused with its offset, line and value and
  the encodings tried. NUL bytes (a spreadsheet, UTF-16 without BOM), a UTF-16 byte-order mark
  and a ZIP/Excel file are refused with what to do instead.
* **Size.** Files above MAX_REFERENCE_BYTES are refused before reading; FIFOs and devices are
  refused; a line above MAX_LINE_CHARS or a quoted field above csv's limit (128 KiB) is refused
  with its line; the header must come within MAX_PREAMBLE_LINES lines. Reading is streamed (one
  line at a time, the table built in batches): memory grows with the measurements kept.
* **Rows that do not fit the header.** A row with fewer fields than the header (missing columns
  that have a name) or with extra non-empty fields is excluded with the reason ("short row: 12
  fields but the header has 40 ..."): its values cannot be matched to the columns. Extra empty
  fields (trailing separators) and missing trailing columns without a name are accepted.
* **Values that contradict each other** (a differential that does not sum to 100 %, a part above
  the WBC, a WBC of 0 with a differential): :func:`implausibility` describes them, with the
  tolerances PERCENT_SUM_TOLERANCE, PART_TOLERANCE_REL and PART_TOLERANCE_ABS, and
  ``wbcv.validation.compare`` excludes the sample's measurement with that reason (after the rerun
  rule has chosen it).
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import functools
import io
import itertools
import math
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import polars as pl

from wbcv.base.errors import WbcvError, clipped, shown
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.validation.measurands import (
    ALL_REFERENCE_QUANTITIES,
    MEASURANDS,
    SYSMEX_CODE,
    UnitError,
    parse_header,
    unit_factor,
)

TECHNICAL_PREFIXES: Final[tuple[str, ...]] = ("QC-", "CAL", "ERR", "PRE-CHK-", "BACKGROUNDCHECK")
NO_RESULT: Final[str] = "----"
OVER_RANGE: Final[str] = "++++"
MARKS: Final[dict[str, str]] = {"*": "low reliability", "@": "out of linearity", "!": "panic value"}
SAMPLE_COLUMN: Final[str] = "Sample No."
#: Largest reference file read (bytes), checked before reading. Reading is streamed, so peak
#: memory grows with the rows kept, not with the text: about 0.7 GiB for 200 MB of narrow
#: Sysmex-style rows (1.5 million measurements; README "Guarantees"); this limit bounds it. From a
#: larger export, export the study's date range.
MAX_REFERENCE_BYTES: Final[int] = 512 * 1024 * 1024
#: Longest line (characters); a row of a Sysmex export is a few kilobytes.
MAX_LINE_CHARS: Final[int] = 1024 * 1024
#: The header row must come within this many lines.
MAX_PREAMBLE_LINES: Final[int] = 1000
_CHUNK: Final[int] = 1024 * 1024
_BATCH: Final[int] = 5_000

#: Reference table columns: one value, status and marks column per quantity present in the file.
BASE_COLUMNS: Final[dict[str, pl.DataType]] = {
    "sample_id": pl.String(),
    "measured_at": pl.Datetime("us"),
    "analyzer_id": pl.String(),
    "source_row": pl.Int64(),
    "flags": pl.List(pl.String()),
}
EXCLUDED_SCHEMA: Final[dict[str, pl.DataType]] = {
    "source_row": pl.Int64(),
    "sample_id": pl.String(),
    "reason": pl.String(),
}


@dataclass(frozen=True)
class ReferenceData:
    path: Path
    format: str  # "sysmex-xn" or "plain-csv"
    encoding: str
    table: pl.DataFrame  # one row per measurement (reruns included)
    excluded: pl.DataFrame  # rows that are not measurements of a sample, with reasons
    quantities: tuple[str, ...]  # reference quantities present (WBC, NEUT#, ..., IG#)


@dataclass(frozen=True)
class TextFileKind:
    """What a text file read through :func:`detect_encoding` is, for its messages and its size cap."""

    name: str  # "reference file", "results file" ...
    expected: str  # what a regular file of this kind is, e.g. "a CSV export of the reference analyzer"
    max_bytes: int


REFERENCE_TEXT: Final[TextFileKind] = TextFileKind(
    "reference file", "a CSV export of the reference analyzer", MAX_REFERENCE_BYTES
)


def _check_file(path: Path, kind: TextFileKind = REFERENCE_TEXT) -> int:
    """Size of a readable regular file within the limit, or a WbcvError."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise WbcvError(f"{path}: {kind.name} does not exist") from None
    except OSError as e:
        raise WbcvError(f"{path}: cannot read the {kind.name}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
        raise WbcvError(f"{path}: not a regular file; expected {kind.expected}")
    if st.st_size > kind.max_bytes:
        raise WbcvError(
            f"{path}: {st.st_size / 2**20:,.0f} MiB, above the {kind.max_bytes / 2**20:,.0f} MiB wbcv reads "
            f"as a {kind.name}; export only the study's samples (a date range) and try again"
        )
    return st.st_size


@dataclass
class _Scan:
    """Where a byte-by-byte check of the file first failed (offset, line, byte), or None."""

    offset: int | None = None
    line: int = 0
    byte: int = 0


def _first_bad(path: Path, encoding: str) -> _Scan:
    """First byte at which ``path`` stops being ``encoding`` (streamed: memory does not grow with the file)."""
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    pos = 0
    lines = 1
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                offset = pos - pending + e.start
                within = max(0, offset - pos)
                return _Scan(offset, lines + chunk.count(b"\n", 0, within), (e.object[e.start] if e.object else 0))
            if not chunk:
                return _Scan()
            lines += chunk.count(b"\n")
            pos += len(chunk)


def _first_nul(path: Path) -> _Scan:
    pos, lines = 0, 1
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            i = chunk.find(b"\x00")
            if i >= 0:
                return _Scan(pos + i, lines + chunk.count(b"\n", 0, i), 0)
            lines += chunk.count(b"\n")
            pos += len(chunk)
    return _Scan()


def detect_encoding(path: Path, kind: TextFileKind = REFERENCE_TEXT) -> str:
    """The file's encoding: UTF-8 (with or without BOM) or, failing that, cp1252; else a WbcvError.

    Also refuses what is not a regular file, a file above ``kind.max_bytes``, an empty file, UTF-16,
    ZIP/Excel files and NUL bytes, each with the file and what to do instead.

    Sysmex workstations on Windows export in the system code page; a byte that neither encoding
    can hold (cp1252 leaves 0x81, 0x8D, 0x8F, 0x90, 0x9D undefined) means the file is not a text
    export at all, or is in another encoding: it is refused with the offset, line and byte.
    """
    if _check_file(path, kind) == 0:
        raise WbcvError(f"{path}: the {kind.name} is empty")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise WbcvError(f"{path}: UTF-16 text (byte-order mark {head[:2].hex(' ').upper()}); save it as UTF-8 CSV")
    if head.startswith(b"PK\x03\x04"):
        raise WbcvError(f"{path}: a ZIP archive (an Excel workbook?), not CSV text; export the results as CSV")
    nul = _first_nul(path)
    if nul.offset is not None:
        raise WbcvError(
            f"{path} line {nul.line}: NUL byte at offset {nul.offset}; expected CSV text (a spreadsheet or UTF-16 "
            "export?); export the results as CSV in UTF-8 or cp1252"
        )
    utf8 = _first_bad(path, "utf-8-sig")
    if utf8.offset is None:
        return "utf-8"
    cp = _first_bad(path, "cp1252")
    if cp.offset is None:
        return "cp1252"
    raise WbcvError(
        f"{path}: not readable as text: byte 0x{utf8.byte:02X} at offset {utf8.offset:,} (line {utf8.line}) is not "
        f"UTF-8, and byte 0x{cp.byte:02X} at offset {cp.offset:,} (line {cp.line}) is not Windows-1252 (cp1252); "
        "tried UTF-8 with or without BOM and cp1252: export the file again as UTF-8 CSV"
    )


def capped_lines(f: io.TextIOBase, path: Path) -> Iterator[str]:
    """Lines of ``f`` (any newline convention), refusing one longer than MAX_LINE_CHARS."""
    n = 0
    while True:
        line = f.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        n += 1
        if len(line) > MAX_LINE_CHARS:
            raise WbcvError(
                f"{path} line {n}: longer than {MAX_LINE_CHARS:,} characters; a row of an export is a few "
                "kilobytes: is this the right file?"
            )
        yield line


def _header_line(lines: Iterator[str], path: Path) -> tuple[list[str], str]:
    """The lines up to and including the first that names a sample column, and the separator."""
    seen: list[str] = []
    for line in lines:
        seen.append(line)
        low = line.lower()
        if "sample no." in low or "sample_id" in low:
            return seen, (";" if line.count(";") > line.count(",") else ",")
        if len(seen) >= MAX_PREAMBLE_LINES:
            break
    raise WbcvError(
        f"{path}: no header row found{' in the first ' + str(MAX_PREAMBLE_LINES) + ' lines' if seen else ''}; "
        f"expected a Sysmex XN export with a '{SAMPLE_COLUMN}' column or a plain CSV with a 'sample_id' column"
    )


def _number(text: str, decimal_comma: bool) -> float:
    t = text.strip()
    if decimal_comma:
        t = t.replace(".", "").replace(",", ".") if t.count(",") == 1 and "." in t else t.replace(",", ".")
    value = float(t)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(text)
    return value


@dataclass(frozen=True)
class _Column:
    index: int
    quantity: str
    factor: float
    mark_index: int | None


def _measurand_columns(path: Path, header: list[str], header_row: int) -> list[_Column]:
    names = [h.strip() for h in header]
    marks = {n[:-2].strip().upper(): i for i, n in enumerate(names) if n.upper().endswith("/M")}
    columns: list[_Column] = []
    for i, h in enumerate(names):
        if h.upper().endswith("/M"):
            continue
        name, unit = parse_header(h)
        q = ALL_REFERENCE_QUANTITIES.get(name)
        if q is None:
            continue
        if any(c.quantity == name for c in columns):
            raise WbcvError(f"{path} row {header_row}: column {shown(h)} appears twice (as {name})")
        try:
            factor = unit_factor(unit, q.kind, q.unit_exponent) if unit else 1.0
        except UnitError as e:
            raise WbcvError(f"{path} row {header_row}, column {shown(h)}: {clipped(str(e), 200)}") from None
        mark = marks.get(name) or marks.get(h.upper())
        columns.append(_Column(i, name, factor, mark))
    return columns


@functools.lru_cache(maxsize=4096)
def _day(d: str) -> dt.date | None:
    for fmt in ("%Y/%m/%d", "%Y-%m-%d", "%d/%m/%Y", "%d.%m.%Y", "%m/%d/%Y"):
        try:
            return dt.datetime.strptime(d, fmt).date()
        except ValueError:
            continue
    return None


@functools.lru_cache(maxsize=65536)  # cached: strptime was a third of the time of a large file
def _clock(t: str) -> dt.time | None:
    for fmt in ("%H:%M:%S", "%H:%M"):
        try:
            return dt.datetime.strptime(t, fmt).time() if t else dt.time()
        except ValueError:
            continue
    return None


def _parse_time(date: str, time: str) -> dt.datetime | None:
    d, t = date.strip(), time.strip()
    if not d:
        return None
    day, clock = _day(d), _clock(t)
    return dt.datetime.combine(day, clock) if day is not None and clock is not None else None


def _empty_excluded() -> pl.DataFrame:
    return pl.DataFrame(schema=EXCLUDED_SCHEMA)


class RowSink(Protocol):
    """Where :func:`fitted_rows` puts an excluded row: ``{"source_row", "sample_id", "reason"}``."""

    def add(self, row: dict[str, Any]) -> None: ...


class _Frames:
    """Rows collected as dicts, turned into a DataFrame every _BATCH rows (bounded Python objects)."""

    def __init__(self, schema: dict[str, pl.DataType]) -> None:
        self.schema = schema
        self.rows: list[dict[str, Any]] = []
        self.frames: list[pl.DataFrame] = []
        self.n = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.n += 1
        if len(self.rows) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.frames.append(pl.DataFrame(self.rows, schema=self.schema))
            self.rows = []

    def frame(self) -> pl.DataFrame:
        self.flush()
        return pl.concat(self.frames, rechunk=False) if self.frames else pl.DataFrame(schema=self.schema)


def numbered_rows(
    reader: Iterator[list[str]], path: Path, line_num: Callable[[], int]
) -> Iterator[tuple[int, list[str]]]:
    """(row number, row) of a CSV reader; a CSV syntax error (a field above csv's size limit) is a WbcvError."""
    i = 0
    try:
        for row in reader:
            i += 1
            yield i, row
    except csv.Error as e:
        raise WbcvError(f"{path} line {line_num()}: not readable as CSV: {clipped(str(e), 200)}") from None


def read_reference(path: Path | str) -> ReferenceData:
    """Read a Sysmex XN export or a plain CSV reference (detected from the header).

    Streamed: the file is checked (size, encoding) and then read line by line; the measurements
    are kept in a DataFrame built in batches, so memory grows with the number of rows kept, not
    with the size of the text (see MAX_REFERENCE_BYTES, MAX_LINE_CHARS).
    """
    path = Path(path)
    encoding = detect_encoding(path)
    with open(path, encoding="utf-8-sig" if encoding == "utf-8" else encoding, errors="strict", newline="") as f:
        lines = capped_lines(f, path)
        preamble, sep = _header_line(lines, path)
        reader = csv.reader(itertools.chain(preamble, lines), delimiter=sep)
        rows = numbered_rows(reader, path, lambda: reader.line_num)
        for i, row in rows:
            cells = [c.strip().lower() for c in row]
            if "sample no." in cells:
                return _read_sysmex(path, encoding, row, i, rows, sep)
            if "sample_id" in cells and "examiner" in cells:
                from wbcv.validation.manual_reference import read_manual_differential

                return read_manual_differential(path, encoding, row, i, rows, sep)
            if "sample_id" in cells:
                return _read_plain(path, encoding, row, i, rows, sep)
            if i >= MAX_PREAMBLE_LINES:
                break
    raise WbcvError(
        f"{path}: no header row found; expected a Sysmex XN export with a '{SAMPLE_COLUMN}' column "
        "or a plain CSV with a 'sample_id' column"
    )


def _value(
    path: Path, row_no: int, header: str, text: str, factor: float, decimal_comma: bool
) -> tuple[float | None, str]:
    t = text.strip()
    if t in ("", NO_RESULT, "---", "-----"):
        return None, "no result"
    if t.startswith("+") and set(t) == {"+"}:
        return None, "over range"
    try:
        value = _number(t, decimal_comma) * factor
    except ValueError:
        raise WbcvError(
            f"{path} row {row_no}, column {shown(header)}: {shown(text)} is not a number; expected a value, "
            f"'{NO_RESULT}' (no result) or '{OVER_RANGE}' (over range)"
        ) from None
    if value < 0:
        raise WbcvError(
            f"{path} row {row_no}, column {shown(header)}: negative value {shown(text)}; counts cannot be negative"
        )
    return value, "ok"


def _width_problem(row: list[str], width: int, needed: int) -> str | None:
    """Why a row cannot be matched to the header's columns, or None.

    A row may lack trailing columns whose header is empty, and may carry extra empty fields
    (trailing separators); anything else is a short row (cut off, a separator lost) or a long
    one (a separator inside a value): its values would land in the wrong columns.
    """
    if len(row) < needed:
        return (
            f"short row: {len(row)} fields but the header has {width}; cut off or a separator missing, so its "
            "values cannot be matched to the columns"
        )
    if len(row) > width and any(c.strip() for c in row[width:]):
        return (
            f"long row: {len(row)} fields but the header has {width}; a separator inside a value?, so its values "
            "cannot be matched to the columns"
        )
    return None


def _fit(row: list[str], width: int) -> list[str]:
    return row[:width] if len(row) >= width else row + [""] * (width - len(row))


def fitted_rows(
    rows: Iterator[tuple[int, list[str]]], header: list[str], sid_i: int, excluded: RowSink
) -> Iterator[tuple[int, list[str], str]]:
    """(row number, row fitted to the header's width, stripped sample id) of every non-blank row;
    a row whose fields cannot be matched to the columns goes to ``excluded`` with the reason."""
    width, needed = len(header), 1 + max(i for i, n in enumerate(header) if n)
    for r, raw in rows:
        if not any(c.strip() for c in raw):
            continue
        problem = _width_problem(raw, width, needed)
        if problem:
            sid = raw[sid_i].strip() if sid_i < len(raw) else ""
            excluded.add({"source_row": r, "sample_id": sid or None, "reason": problem})
            continue
        row = _fit(raw, width)
        yield r, row, row[sid_i].strip()


def _read_sysmex(
    path: Path, encoding: str, header_row: list[str], h: int, rows: Iterator[tuple[int, list[str]]], sep: str
) -> ReferenceData:
    header = [c.strip() for c in header_row]
    lower = [c.lower() for c in header]
    sample_i = lower.index("sample no.")
    columns = _measurand_columns(path, header, h)
    if not any(c.quantity in MEASURANDS for c in columns):
        raise WbcvError(
            f"{path} row {h}: no measurand columns found; expected columns such as WBC(10^3/uL), "
            "NEUT#(10^3/uL), NEUT%(%)"
        )
    flag_cols = [(i, n) for i, n in enumerate(header) if n.upper().startswith(("IP ", "Q-FLAG"))]
    date_i = lower.index("date") if "date" in lower else None
    time_i = lower.index("time") if "time" in lower else None
    analyzer_i = lower.index("analyzer id") if "analyzer id" in lower else None
    decimal_comma = sep == ";"
    quantities = [c.quantity for c in columns]
    records, excluded = _Frames(table_schema(quantities)), _Frames(EXCLUDED_SCHEMA)
    for r, row, sid in fitted_rows(rows, header, sample_i, excluded):
        if not sid:
            excluded.add({"source_row": r, "sample_id": None, "reason": "no sample number"})
            continue
        if sid.upper().startswith(TECHNICAL_PREFIXES):
            excluded.add({"source_row": r, "sample_id": sid, "reason": f"technical row ({sid.split()[0]})"})
            continue
        rec: dict[str, Any] = {
            "sample_id": sid,
            "measured_at": _parse_time(row[date_i], row[time_i] if time_i is not None else "")
            if date_i is not None
            else None,
            "analyzer_id": row[analyzer_i].strip() if analyzer_i is not None else None,
            "source_row": r,
            "flags": [n for i, n in flag_cols if row[i].strip() not in ("", "0")],
        }
        for c in columns:
            value, status = _value(path, r, header[c.index], row[c.index], c.factor, decimal_comma)
            mark = row[c.mark_index].strip() if c.mark_index is not None else ""
            unknown = set(mark) - set(MARKS) - {" "}
            if unknown:
                raise WbcvError(
                    f"{path} row {r}, column {shown(header[c.mark_index])}: "  # type: ignore[index]
                    f"unknown mark {shown(mark)}; expected any of {', '.join(MARKS)}"
                )
            rec[c.quantity] = value
            rec[f"{c.quantity} status"] = status
            rec[f"{c.quantity} marks"] = "".join(ch for ch in "*@!" if ch in mark)
        records.add(rec)
    return _finish(path, "sysmex-xn", encoding, records, excluded.frame(), quantities)


def _read_plain(
    path: Path, encoding: str, header_row: list[str], h: int, rows: Iterator[tuple[int, list[str]]], sep: str
) -> ReferenceData:
    header = [c.strip() for c in header_row]
    sid_i = [c.lower() for c in header].index("sample_id")
    columns = _measurand_columns(path, header, h)
    unknown = [
        n
        for i, n in enumerate(header)
        if i != sid_i and all(c.index != i for c in columns) and n.lower() not in ("measured_at", "")
    ]
    if unknown:
        raise WbcvError(
            f"{path} row {h}: unknown column(s) {clipped(', '.join(map(repr, unknown)), 200)}; expected sample_id, "
            f"measured_at and measurand columns {', '.join(ALL_REFERENCE_QUANTITIES)}"
        )
    if not columns:
        raise WbcvError(f"{path} row {h}: no measurand columns; expected some of {', '.join(MEASURANDS)}")
    quantities = [c.quantity for c in columns]
    records, excluded = _Frames(table_schema(quantities)), _Frames(EXCLUDED_SCHEMA)
    for r, row, sid in fitted_rows(rows, header, sid_i, excluded):
        if not sid:
            raise WbcvError(f"{path} row {r}, column 'sample_id': empty sample id")
        rec: dict[str, Any] = {"sample_id": sid, "measured_at": None, "analyzer_id": None, "source_row": r, "flags": []}
        for c in columns:
            value, status = _value(path, r, header[c.index], row[c.index], c.factor, sep == ";")
            rec[c.quantity], rec[f"{c.quantity} status"], rec[f"{c.quantity} marks"] = value, status, ""
        records.add(rec)
    table, repeats = _drop_exact_repeats(path, records.frame(), quantities)
    return _finish(path, "plain-csv", encoding, table, pl.concat([excluded.frame(), repeats]), quantities)


def _drop_exact_repeats(path: Path, table: pl.DataFrame, quantities: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A plain reference has one row per sample: exact repeats are excluded, any other repeat is an error."""
    first = pl.col("source_row").min().over("sample_id")
    repeated = table.filter(pl.col("source_row") != first)
    if repeated.height == 0:
        return table, _empty_excluded()
    keys = [c for q in quantities for c in (q, f"{q} status")]
    firsts = table.filter(pl.col("source_row") == first).select(
        "sample_id", pl.col("source_row").alias("first_row"), *[pl.col(k).alias(f"first {k}") for k in keys]
    )
    joined = repeated.join(firsts, on="sample_id", how="left")
    same = pl.all_horizontal([pl.col(k).eq_missing(pl.col(f"first {k}")) for k in keys])
    differing = joined.filter(~same).sort("source_row")
    if differing.height:
        d = differing.row(0, named=True)
        raise WbcvError(
            f"{path} row {d['source_row']}: sample_id {shown(d['sample_id'])} repeats row {d['first_row']} with "
            f"different values; a plain reference must have one row per sample"
        )
    excluded = joined.select(
        "source_row",
        "sample_id",
        pl.format("exact repeat of row {}", pl.col("first_row")).alias("reason"),
    )
    return table.filter(pl.col("source_row") == first), excluded


def table_schema(quantities: list[str]) -> dict[str, pl.DataType]:
    schema: dict[str, pl.DataType] = dict(BASE_COLUMNS)
    for q in quantities:
        schema[q] = pl.Float64()
        schema[f"{q} status"] = pl.Enum(["ok", "no result", "over range"])
        schema[f"{q} marks"] = pl.String()
    return schema


def _finish(
    path: Path,
    fmt: str,
    encoding: str,
    records: _Frames | pl.DataFrame,
    excluded: pl.DataFrame,
    quantities: list[str],
) -> ReferenceData:
    table = records.frame() if isinstance(records, _Frames) else records
    if table.height == 0:
        why = ""
        if excluded.height:
            first = excluded.sort("source_row").row(0, named=True)
            n = excluded.height
            reason = clipped(first["reason"], 200)
            why = f" ({n} row{'s' if n > 1 else ''} excluded, e.g. row {first['source_row']}: {reason})"
        raise WbcvError(f"{path}: no sample measurements found (only technical, empty or unusable rows){why}")
    return ReferenceData(path, fmt, encoding, table, excluded.sort("source_row"), tuple(quantities))


# --- plausibility of one measurement ---------------------------------------------------------------

#: The five differential percentages must sum to 100 within this many percentage points (with
#: or without IG%, whichever is closer: some analyzers count immature granulocytes inside NEUT%,
#: others beside it). Rounding five values to whole per cent adds at most 2.5 points.
PERCENT_SUM_TOLERANCE: Final[float] = 3.0
#: A part (NEUT# ... BASO#, IG#) and the sum of the parts may exceed the WBC by at most this
#: fraction of the WBC plus PART_TOLERANCE_ABS (10^3/uL): rounding, never a real excess. When all
#: five parts are present, their sum (with or without IG#) must also come within that tolerance of
#: the WBC from below.
PART_TOLERANCE_REL: Final[float] = 0.03
PART_TOLERANCE_ABS: Final[float] = 0.05
_PERCENTS: Final[tuple[str, ...]] = tuple(f"{SYSMEX_CODE[c]}%" for c in CELL_CLASSES)
_COUNTS: Final[tuple[str, ...]] = tuple(f"{SYSMEX_CODE[c]}#" for c in CELL_CLASSES)


def _ok_value(row: Mapping[str, Any], q: str) -> float | None:
    return row.get(q) if row.get(f"{q} status") == "ok" else None


def implausibility(row: Mapping[str, Any]) -> str | None:
    """Why the values of one measurement (a reference table row) contradict each other, or None.

    Checks, on the values with status ``ok`` (tolerances above):

    * the five differential percentages sum to 100 +- PERCENT_SUM_TOLERANCE (with or without
      IG%); with some of them missing, those present do not sum above 100 + the tolerance;
    * WBC 0 with any part (count or percentage) above 0;
    * each part count (NEUT# ... BASO#, IG#) and their sum at most the WBC (+ tolerance); with all
      five present, their sum (with or without IG#) not below the WBC (- tolerance).

    Such a row cannot be compared: one of its numbers is wrong and nothing says which, so
    ``wbcv.validation.compare`` excludes the whole sample with this reason.
    """
    problems: list[str] = []
    pct = {q: v for q in _PERCENTS if (v := _ok_value(row, q)) is not None}
    ig_pct = _ok_value(row, "IG%")
    total = sum(pct.values())
    if len(pct) == len(_PERCENTS):
        off = abs(total - 100)
        if ig_pct is not None:
            off = min(off, abs(total + ig_pct - 100))
        if off > PERCENT_SUM_TOLERANCE:
            with_ig = f" (with IG% {ig_pct:g}: {total + ig_pct:g})" if ig_pct is not None else ""
            problems.append(
                f"the differential percentages sum to {total:g}{with_ig}, expected 100 +- {PERCENT_SUM_TOLERANCE:g}"
            )
    elif total > 100 + PERCENT_SUM_TOLERANCE:
        problems.append(
            f"{' + '.join(pct)} = {total:g} %, above 100 (+- {PERCENT_SUM_TOLERANCE:g}) before the other parts"
        )
    if ig_pct is not None and ig_pct > 100 + PERCENT_SUM_TOLERANCE:
        problems.append(f"IG% is {ig_pct:g}, above 100")
    wbc = _ok_value(row, "WBC")
    counts = {q: v for q in _COUNTS if (v := _ok_value(row, q)) is not None}
    ig = _ok_value(row, "IG#")
    if wbc is not None and wbc == 0:
        nonzero = [f"{q} {v:g}" for q, v in {**counts, "IG#": ig, **pct}.items() if v]
        if nonzero:
            problems.append(f"WBC is 0 but {', '.join(nonzero[:4])}{' ...' if len(nonzero) > 4 else ''}")
    elif wbc is not None:
        slack = wbc * PART_TOLERANCE_REL + PART_TOLERANCE_ABS
        above = [f"{q} {v:g}" for q, v in {**counts, "IG#": ig}.items() if v is not None and v > wbc + slack]
        if above:
            problems.append(f"{', '.join(above)} above the WBC {wbc:g}")
        parts = sum(counts.values())
        if not above and len(counts) > 1 and parts > wbc + slack:
            problems.append(f"{' + '.join(counts)} = {parts:g}, above the WBC {wbc:g}")
        if len(counts) == len(_COUNTS) and not above and parts <= wbc + slack:
            off = abs(wbc - parts)
            if ig is not None:
                off = min(off, abs(wbc - parts - ig))
            if off > slack:
                problems.append(
                    f"{' + '.join(counts)} = {parts:g}, below the WBC {wbc:g}"
                    + (f" (also with IG# {ig:g})" if ig is not None else "")
                )
    return "; ".join(problems) or None
