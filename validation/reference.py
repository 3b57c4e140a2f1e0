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

Every excluded row is returned with its row number and reason. Anything malformed is a
``WbcvError`` naming the file, row and column.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import polars as pl

from wbcv.base.errors import WbcvError
from wbcv.validation.measurands import ALL_REFERENCE_QUANTITIES, MEASURANDS, UnitError, parse_header, unit_factor

TECHNICAL_PREFIXES: Final[tuple[str, ...]] = ("QC-", "CAL", "ERR", "PRE-CHK-", "BACKGROUNDCHECK")
NO_RESULT: Final[str] = "----"
OVER_RANGE: Final[str] = "++++"
MARKS: Final[dict[str, str]] = {"*": "low reliability", "@": "out of linearity", "!": "panic value"}
SAMPLE_COLUMN: Final[str] = "Sample No."

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


def _decode(path: Path) -> tuple[str, str]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise WbcvError(f"{path}: cannot read the reference file: {e.strerror}") from None
    if not raw.strip():
        raise WbcvError(f"{path}: the reference file is empty")
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        # Sysmex workstations on Windows export in the system code page.
        return raw.decode("cp1252", errors="strict"), "cp1252"


def _rows(text: str) -> tuple[list[list[str]], str]:
    lines = text.splitlines()
    header_line = next((ln for ln in lines if "sample no." in ln.lower() or "sample_id" in ln.lower()), lines[0])
    sep = ";" if header_line.count(";") > header_line.count(",") else ","
    return list(csv.reader(io.StringIO(text), delimiter=sep)), sep


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
            raise WbcvError(f"{path} row {header_row}: column {h!r} appears twice (as {name})")
        try:
            factor = unit_factor(unit, q.kind) if unit else 1.0
        except UnitError as e:
            raise WbcvError(f"{path} row {header_row}, column {h!r}: {e}") from None
        mark = marks.get(name) or marks.get(h.upper())
        columns.append(_Column(i, name, factor, mark))
    return columns


def _parse_time(date: str, time: str) -> dt.datetime | None:
    d, t = date.strip(), time.strip()
    if not d:
        return None
    for fmt in ("%Y/%m/%d", "%Y-%m-%d", "%d/%m/%Y", "%d.%m.%Y", "%m/%d/%Y"):
        try:
            day = dt.datetime.strptime(d, fmt)
            break
        except ValueError:
            continue
    else:
        return None
    for fmt in ("%H:%M:%S", "%H:%M"):
        try:
            clock = dt.datetime.strptime(t, fmt).time() if t else dt.time()
            return dt.datetime.combine(day.date(), clock)
        except ValueError:
            continue
    return None


def _empty_excluded() -> pl.DataFrame:
    return pl.DataFrame(schema=EXCLUDED_SCHEMA)


def read_reference(path: Path | str) -> ReferenceData:
    """Read a Sysmex XN export or a plain CSV reference (detected from the header)."""
    path = Path(path)
    text, encoding = _decode(path)
    rows, sep = _rows(text)
    for i, row in enumerate(rows):
        cells = [c.strip().lower() for c in row]
        if "sample no." in cells:
            return _read_sysmex(path, encoding, rows, i, sep)
        if "sample_id" in cells:
            return _read_plain(path, encoding, rows, i, sep)
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
            f"{path} row {row_no}, column {header!r}: {text!r} is not a number; expected a value, "
            f"'{NO_RESULT}' (no result) or '{OVER_RANGE}' (over range)"
        ) from None
    if value < 0:
        raise WbcvError(f"{path} row {row_no}, column {header!r}: negative value {text!r}; counts cannot be negative")
    return value, "ok"


def _read_sysmex(path: Path, encoding: str, rows: list[list[str]], h: int, sep: str) -> ReferenceData:
    header = [c.strip() for c in rows[h]]
    lower = [c.lower() for c in header]
    sample_i = lower.index("sample no.")
    columns = _measurand_columns(path, header, h + 1)
    if not any(c.quantity in MEASURANDS for c in columns):
        raise WbcvError(
            f"{path} row {h + 1}: no measurand columns found; expected columns such as WBC(10^3/uL), "
            "NEUT#(10^3/uL), NEUT%(%)"
        )
    flag_cols = [(i, n) for i, n in enumerate(header) if n.upper().startswith(("IP ", "Q-FLAG"))]
    date_i = lower.index("date") if "date" in lower else None
    time_i = lower.index("time") if "time" in lower else None
    analyzer_i = lower.index("analyzer id") if "analyzer id" in lower else None
    decimal_comma = sep == ";"
    records: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    for r, row in enumerate(rows[h + 1 :], start=h + 2):
        if not any(c.strip() for c in row):
            continue
        if len(row) < len(header):
            row = row + [""] * (len(header) - len(row))
        elif len(row) > len(header) and any(c.strip() for c in row[len(header) :]):
            raise WbcvError(f"{path} row {r}: {len(row)} values but the header has {len(header)} columns")
        sid = row[sample_i].strip()
        if not sid:
            excluded.append({"source_row": r, "sample_id": None, "reason": "no sample number"})
            continue
        if sid.upper().startswith(TECHNICAL_PREFIXES):
            excluded.append({"source_row": r, "sample_id": sid, "reason": f"technical row ({sid.split()[0]})"})
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
                    f"{path} row {r}, column {header[c.mark_index]!r}: unknown mark {mark!r}; "  # type: ignore[index]
                    f"expected any of {', '.join(MARKS)}"
                )
            rec[c.quantity] = value
            rec[f"{c.quantity} status"] = status
            rec[f"{c.quantity} marks"] = "".join(ch for ch in "*@!" if ch in mark)
        records.append(rec)
    return _finish(path, "sysmex-xn", encoding, records, excluded, [c.quantity for c in columns])


def _read_plain(path: Path, encoding: str, rows: list[list[str]], h: int, sep: str) -> ReferenceData:
    header = [c.strip() for c in rows[h]]
    sid_i = [c.lower() for c in header].index("sample_id")
    columns = _measurand_columns(path, header, h + 1)
    unknown = [
        n
        for i, n in enumerate(header)
        if i != sid_i and all(c.index != i for c in columns) and n.lower() not in ("measured_at", "")
    ]
    if unknown:
        raise WbcvError(
            f"{path} row {h + 1}: unknown column(s) {', '.join(map(repr, unknown))}; expected sample_id, "
            f"measured_at and measurand columns {', '.join(ALL_REFERENCE_QUANTITIES)}"
        )
    if not columns:
        raise WbcvError(f"{path} row {h + 1}: no measurand columns; expected some of {', '.join(MEASURANDS)}")
    records: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    excluded: list[dict[str, Any]] = []
    for r, row in enumerate(rows[h + 1 :], start=h + 2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise WbcvError(f"{path} row {r}: {len(row)} values but the header has {len(header)} columns")
        sid = row[sid_i].strip()
        if not sid:
            raise WbcvError(f"{path} row {r}, column 'sample_id': empty sample id")
        rec: dict[str, Any] = {"sample_id": sid, "measured_at": None, "analyzer_id": None, "source_row": r, "flags": []}
        for c in columns:
            value, status = _value(path, r, header[c.index], row[c.index], c.factor, sep == ";")
            rec[c.quantity], rec[f"{c.quantity} status"], rec[f"{c.quantity} marks"] = value, status, ""
        if sid in seen:
            first = seen[sid]
            same = all(first[c.quantity] == rec[c.quantity] for c in columns)
            if not same:
                raise WbcvError(
                    f"{path} row {r}: sample_id {sid!r} repeats row {first['source_row']} with different values; "
                    "a plain reference must have one row per sample"
                )
            excluded.append({"source_row": r, "sample_id": sid, "reason": f"exact repeat of row {first['source_row']}"})
            continue
        seen[sid] = rec
        records.append(rec)
    return _finish(path, "plain-csv", encoding, records, excluded, [c.quantity for c in columns])


def _finish(
    path: Path,
    fmt: str,
    encoding: str,
    records: list[dict[str, Any]],
    excluded: list[dict[str, Any]],
    quantities: list[str],
) -> ReferenceData:
    if not records:
        raise WbcvError(f"{path}: no sample measurements found (only technical or empty rows)")
    schema: dict[str, pl.DataType] = dict(BASE_COLUMNS)
    for q in quantities:
        schema[q] = pl.Float64()
        schema[f"{q} status"] = pl.Enum(["ok", "no result", "over range"])
        schema[f"{q} marks"] = pl.String()
    table = pl.DataFrame(records, schema=schema)
    ex = pl.DataFrame(excluded, schema=EXCLUDED_SCHEMA) if excluded else _empty_excluded()
    return ReferenceData(path, fmt, encoding, table, ex, tuple(quantities))
