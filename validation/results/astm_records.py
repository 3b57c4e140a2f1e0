"""ASTM E1394 / CLSI LIS2-A2 result records, optionally in ASTM E1381 / LIS1-A frames.

Written here, not taken from a library: ``astm`` 0.5.0 on PyPI (2013) does not install on Python
3.11 (``from collections import Iterable``); its 2025 fork ``astm-2025`` 1.0.0 imports, but its
decoder accepted a frame with a wrong checksum, did not split records at CR, parsed the delimiter
field ``\\^&`` as components, and its encoder recursed without end on text (checked 2026-11-30).

**Frames** (when the file holds STX bytes): ``<STX> FN text <ETX|ETB> C1 C2 <CR> <LF>``; FN is the
frame number (1-7, then 0, 1 ...), C1 C2 the checksum: the sum of the bytes from FN through ETX or
ETB, modulo 256, as two hexadecimal digits (E1381 section 6.5.2). A wrong checksum, a frame number
out of sequence, a frame cut short, or text between frames is an error naming the file, the frame
and its line. ENQ, EOT, ACK and NAK bytes (a capture of the link) are skipped. ETB frames continue a
record in the next frame. Without STX bytes the file is plain records, one per line.

**Records** (E1394 section 6): fields separated by the field delimiter that the H record's
second character defines (``H|\\^&``: field ``|``, repeat ``\\``, component ``^``, escape ``&``);
escape sequences ``&F&``, ``&S&``, ``&R&``, ``&E&`` are decoded. Read:

* H: a message; H-5 (sender name or ID) as name ^ software version ^ serial number;
* O: starts a sample: O-3 (specimen ID), else O-4 (instrument specimen ID);
* R: a result of the sample of the O record before it: R-3 universal test ID (its fourth
  component, the manufacturer's test code: ``^^^NEUT%``), mapped by the mapping's ``codes``,
  else taken as the class name; R-4 the value (one, a number); R-5 the unit (``%`` a percentage;
  ``#``, ``cells``, ``{cells}`` or none with a code ending ``#`` a count; a count per volume is
  excluded); R-9 the result status (E1394 section 10.1.9): F (final), V (operator verified) or
  empty are used; C (correction of previously transmitted results) replaces the value of the same
  test (R-3) of the sample read before it (``wbcv.validation.results.status``), which is then
  listed as excluded; P, X, I, S, M, R, N, Q and W are excluded with their meaning;
* L: ends the message; a message without L is truncated (an error);
* P, C, Q, M and manufacturer records are read past.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from wbcv.base.errors import WbcvError, clipped, shown
from wbcv.validation.results.counting import Collected
from wbcv.validation.results.hl7_oru import COUNT_UNITS, PERCENT_UNITS
from wbcv.validation.results.mapping import TOTAL, ClassMapping
from wbcv.validation.results.status import HeldResult, ResultLedger
from wbcv.validation.results.textfile import read_message_text

STX, ETX, ETB, EOT, ENQ, ACK, NAK = "\x02", "\x03", "\x17", "\x04", "\x05", "\x06", "\x15"
LINK_CONTROL: Final[str] = EOT + ENQ + ACK + NAK
_FRAME = re.compile(r"\x02(?P<fn>[0-7])(?P<body>[^\x02\x03\x17]*)(?P<end>[\x03\x17])(?P<cs>[0-9A-Fa-f]{2})\r\n")
#: E1394 R-9 result status: the ones used, the correction, and the meaning of the others.
ACCEPTED_STATUS: Final[tuple[str, ...]] = ("F", "C", "V", "")
STATUS: Final[dict[str, str]] = {
    "C": "correction of previously transmitted results",
    "P": "preliminary results",
    "F": "final results",
    "X": "order cannot be done",
    "I": "in instrument, results pending",
    "S": "partial results",
    "M": "MIC level",
    "R": "this result was previously transmitted",
    "N": "contains information to run a new order",
    "Q": "response to an outstanding query",
    "V": "operator verified",
    "W": "warning: validity is questionable",
}
_CONCENTRATION = re.compile(r"/\s*(u|µ|μ|m|n)?l\s*$", re.IGNORECASE)


def checksum(frame: bytes) -> str:
    """E1381 checksum of a frame's bytes from FN through ETX/ETB: their sum mod 256, two hex digits."""
    return f"{sum(frame) % 256:02X}"


@dataclass(frozen=True)
class _Record:
    line: int  # line of the file (plain records) or of the frame that ended the record
    text: str


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _unframe(path: Path, text: str, encoding: str) -> list[_Record]:
    """The records carried by E1381 frames, every checksum and frame number checked."""
    records: list[_Record] = []
    pending, expected, pos = "", 1, 0
    for m in _FRAME.finditer(text):
        between = text[pos : m.start()]
        if between.strip(LINK_CONTROL + "\r\n "):
            raise WbcvError(
                f"{path} line {_line_of(text, pos)}: {shown(clipped(between.strip(), 40))} between frames; expected "
                "<STX>FN...<ETX>C1C2<CR><LF> frames only (a frame cut short or a byte lost?)"
            )
        line, fn = _line_of(text, m.start()), int(m["fn"])
        found, wanted = m["cs"].upper(), checksum((m["fn"] + m["body"] + m["end"]).encode(encoding))
        if found != wanted:
            raise WbcvError(
                f"{path} line {line}: frame {fn}: checksum {found}, but the frame's bytes sum to {wanted}; the frame "
                "was changed or damaged in transfer (E1381 checksum: sum of FN through ETX/ETB mod 256)"
            )
        if fn != expected:
            raise WbcvError(
                f"{path} line {line}: frame number {fn}, expected {expected}: a frame is missing or repeated"
            )
        expected = (fn + 1) % 8
        pending += m["body"]
        if m["end"] == ETX:
            records += [_Record(line, r) for r in pending.split("\r") if r]
            pending = ""
        pos = m.end()
    rest = text[pos:]
    if rest.strip(LINK_CONTROL + "\r\n ") or pending:
        raise WbcvError(
            f"{path} line {_line_of(text, pos)}: the file ends inside a frame or a record "
            f"({shown(clipped(rest.strip() or pending, 40))}); expected the last frame to end with <ETX>C1C2<CR><LF>"
        )
    return records


def _plain(text: str) -> list[_Record]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [_Record(i + 1, s.strip(LINK_CONTROL)) for i, s in enumerate(lines) if s.strip(LINK_CONTROL + " ")]


@dataclass(frozen=True)
class _Delimiters:
    field: str
    repeat: str
    component: str
    escape: str

    def unescape(self, text: str) -> str:
        e = self.escape
        pairs = {f"{e}F{e}": self.field, f"{e}S{e}": self.component, f"{e}R{e}": self.repeat, f"{e}E{e}": e}
        for k, v in pairs.items():
            text = text.replace(k, v)
        return text

    def component_of(self, field: str, i: int) -> str:
        parts = field.split(self.repeat)[0].split(self.component)
        return self.unescape(parts[i]).strip() if i < len(parts) else ""


def _delimiters(path: Path, rec: _Record) -> _Delimiters:
    t = rec.text
    if len(t) < 5 or len(set(t[1:5])) != 4 or any(c.isalnum() or c.isspace() for c in t[1:5]):
        raise WbcvError(
            f"{path} line {rec.line}: H record {shown(clipped(t, 20))}: the delimiter definition must be four distinct "
            "characters that are not letters, digits or blanks (field, repeat, component, escape: H|\\^&)"
        )
    return _Delimiters(t[1], t[2], t[3], t[4])


def read_astm(path: Path, mapping: ClassMapping, collected: Collected) -> tuple[str, dict[str, str]]:
    """Read every message of the file into ``collected``; returns (encoding, analyzer identity from H-5)."""
    text, encoding = read_message_text(path)
    records = _unframe(path, text, encoding) if STX in text else _plain(text)
    identity: dict[str, str] = {}
    d: _Delimiters | None = None
    sample: str | None = None
    open_message = 0
    ledger = ResultLedger()
    for rec in records:
        kind = rec.text[:1].upper()
        if kind == "H":
            if open_message:
                raise WbcvError(
                    f"{path} line {rec.line}: H record before the L record of the message at line {open_message}"
                )
            d, open_message, sample = _delimiters(path, rec), rec.line, None
            identity = identity or _identity(d, rec.text.split(d.field))
            continue
        if d is None or not open_message:
            raise WbcvError(f"{path} line {rec.line}: {kind} record outside a message; expected an H record first")
        fields = rec.text.split(d.field)
        if kind == "O":
            sample = d.component_of(fields[2], 0) if len(fields) > 2 else ""
            sample = sample or (d.component_of(fields[3], 0) if len(fields) > 3 else "")
            if not sample:
                raise WbcvError(f"{path} line {rec.line}: O record without a specimen ID (O-3 or O-4)")
        elif kind == "R":
            if sample is None:
                raise WbcvError(f"{path} line {rec.line}: R record before any O record; expected O (the sample) first")
            _result(path, rec, fields, d, sample, mapping, (collected, ledger))
        elif kind == "L":
            open_message, d = 0, None
    if open_message:
        raise WbcvError(f"{path} line {open_message}: the message has no L (terminator) record: truncated file?")
    if not records:
        raise WbcvError(f"{path}: no ASTM records; expected H, P, O, R and L records")
    ledger.emit(collected)
    return encoding, identity


def _identity(d: _Delimiters, fields: list[str]) -> dict[str, str]:
    if len(fields) <= 4:
        return {}
    parts = {"model": d.component_of(fields[4], 0), "software_version": d.component_of(fields[4], 1)}
    parts["serial"] = d.component_of(fields[4], 2)
    return {k: v for k, v in parts.items() if v}


def _result(
    path: Path,
    rec: _Record,
    fields: list[str],
    d: _Delimiters,
    sample: str,
    mapping: ClassMapping,
    sink: tuple[Collected, ResultLedger],
) -> None:
    if len(fields) < 4:
        raise WbcvError(f"{path} line {rec.line}: R record with {len(fields)} fields; expected at least R-1 to R-4")
    c, ledger = sink
    code = d.component_of(fields[2], 3) or d.component_of(fields[2], 0)
    name = mapping.code_name(code) or code
    where = f"line {rec.line}, R {fields[1] or '?'}"
    key = (sample, d.unescape(fields[2]).strip())  # the test: R-3, universal test ID
    status = fields[8].strip() if len(fields) > 8 else ""

    def skip(reason: str) -> None:
        c.exclude(sample, where, name, None, f"R {code}: {reason}")
        if status == "C":  # the value it corrects is wrong, and the correction cannot be read
            ledger.withdraw(key, f"corrected at {where}, whose value cannot be used ({reason})")

    if status not in ACCEPTED_STATUS:
        return skip(f"result status {status!r} ({STATUS.get(status, 'unknown status')}); F, C, V or empty are used")
    if d.repeat in fields[3]:
        return skip(f"R-4 holds {fields[3].count(d.repeat) + 1} repeats; one value expected")
    try:
        value = float(d.unescape(fields[3]).strip())
    except ValueError:
        return skip(f"R-4 {shown(fields[3])} is not a number")
    if value < 0 or value != value or value in (float("inf"), float("-inf")):
        return skip(f"R-4 {value:g} is not a count or percentage")
    unit = d.unescape(fields[4]).strip() if len(fields) > 4 else ""
    kind = "percent" if unit in PERCENT_UNITS or (not unit and code.endswith("%")) else None
    if unit.lower() in COUNT_UNITS or (not unit and code.endswith("#")):
        kind = "count"
    if mapping.target(name)[0] == TOTAL:
        kind = TOTAL
    if kind is None:
        what = "a concentration" if _CONCENTRATION.search(unit) else "an unknown unit"
        return skip(f"unit {unit!r}: {what}; expected %, # or cells")
    held = HeldResult(sample, where, name.rstrip("%#") if kind != TOTAL else name, kind, value, status or "empty")
    if status == "C":
        ledger.correct(key, held, "R-9 C")
    else:
        ledger.final(key, held)
    return None
