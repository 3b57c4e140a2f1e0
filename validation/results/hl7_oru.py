"""HL7 v2 ORU^R01 result messages, parsed by python-hl7 (``hl7`` on PyPI).

A file holds one or many messages (segments ended by CR, LF or CRLF; MLLP framing bytes 0x0B and
0x1C and the batch envelope segments FHS, BHS, BTS, FTS are allowed and skipped). Per message:

* **MSH** (checked here, before python-hl7, which accepts anything): MSH-1 the field separator,
  MSH-2 the encoding characters: four (component, repetition, escape, subcomponent; HL7 v2.7 adds
  a fifth, truncation), distinct, neither letters, digits, blanks nor the field separator. MSH-9
  must be ORU^R01; another message type is listed as not read. MSH-12 (version) must be present:
  a message ending before it is truncated. The analyzer: SFT-1 (vendor), SFT-3 (product), SFT-2
  (software version), else MSH-3 (sending application) as the model; OBX-18 (equipment instance)
  as the serial.
* **OBR** starts a sample: its id is OBR-3 (filler order number, the analyzer's specimen id),
  else OBR-2 (placer order number); escape sequences (``\\F\\``, ``\\S\\``, ``\\T\\``, ``\\R\\``,
  ``\\E\\``, ``\\Xhh\\``) are decoded by python-hl7.
* **OBX** belongs to the OBR before it; several per sample. OBX-3 (identifier ^ text ^ coding
  system) is mapped to an export class name by the mapping's ``codes`` (default: the LOINC codes
  of the differential), else its text, else its identifier. OBX-2 must be NM (a number); OBX-5 one
  value (a repetition ``~`` is excluded: one value expected); OBX-6 the unit: ``%`` a
  percentage, ``{cells}``, ``cells``, ``#``, ``{#}``, ``1`` a count; a count per volume
  (``10*9/L``, ``/uL``) is excluded as a concentration; without a unit, a LOINC percentage code is
  a percentage and anything else is excluded. OBX-11 (HL7 v2.5 Table 0085) must be F (final) or
  C (corrected): a C replaces the value of the same observation (OBX-3 and OBX-4 of the sample)
  read before it, D (deletes the OBX record) and W (posts the original as wrong) take that value
  back (``wbcv.validation.results.status``); P (preliminary), X (cannot be obtained), U, I, R and
  the others are excluded with their meaning, as is every value a C, D or W replaced. An OBX cut before OBX-11, an
  OBR without OBX, or a message without OBR is a truncated message: an error naming the file, the
  message and the segment's line.

Every OBX not used is in ``import_excluded.parquet`` with its reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import hl7

from wbcv.base.errors import WbcvError, clipped, shown
from wbcv.validation.results.counting import Collected
from wbcv.validation.results.mapping import LOINC_CONCENTRATION, LOINC_PERCENT, TOTAL, ClassMapping
from wbcv.validation.results.status import HeldResult, ResultLedger
from wbcv.validation.results.textfile import read_message_text

ENVELOPE: Final[tuple[str, ...]] = ("FHS", "BHS", "BTS", "FTS")
PERCENT_UNITS: Final[frozenset[str]] = frozenset({"%", "percent"})
COUNT_UNITS: Final[frozenset[str]] = frozenset({"{cells}", "cells", "#", "{#}", "1", "{count}", "count"})
_CONCENTRATION = re.compile(r"/\s*(u|µ|μ|m|n)?l\s*$", re.IGNORECASE)
#: HL7 v2.5 Table 0085 (observation result status), OBX-11; A, B and V were added in v2.8.
STATUS: Final[dict[str, str]] = {
    "C": "a correction that replaces a final result",
    "D": "deletes the OBX record",
    "F": "final result",
    "I": "specimen in lab, results pending",
    "N": "not asked",
    "O": "order detail description only, no result",
    "P": "preliminary result",
    "R": "result entered, not verified",
    "S": "partial result",
    "U": "status changed to final without retransmitting the preliminary result",
    "W": "posts the original as wrong",
    "X": "result cannot be obtained",
    "A": "amended (HL7 v2.8), not read by this v2.5 reader",
    "B": "appended report (HL7 v2.8), not read by this v2.5 reader",
    "V": "verified final result (HL7 v2.8), not read by this v2.5 reader",
}
ACCEPTED_STATUS: Final[tuple[str, ...]] = ("F", "C")
#: Statuses that take back the earlier result of the same observation (wbcv.validation.results.status).
WITHDRAWING_STATUS: Final[tuple[str, ...]] = ("D", "W")
#: Fields an OBX must reach (OBX-11, observation result status, is required).
OBX_FIELDS: Final[int] = 11


@dataclass(frozen=True)
class _Segment:
    line: int
    text: str


def _segments(text: str) -> list[_Segment]:
    text = text.replace("\x0b", "").replace("\x1c", "")
    lines = text.replace("\r\n", "\r").replace("\n", "\r").split("\r")
    return [_Segment(i + 1, s) for i, s in enumerate(lines) if s.strip()]


def _messages(path: Path, segments: list[_Segment]) -> list[list[_Segment]]:
    messages: list[list[_Segment]] = []
    for seg in segments:
        name = seg.text[:3]
        if name in ENVELOPE:
            continue
        if name == "MSH":
            messages.append([seg])
        elif not messages:
            raise WbcvError(f"{path} line {seg.line}: segment {shown(clipped(seg.text, 20))} before any MSH segment")
        else:
            messages[-1].append(seg)
    if not messages:
        raise WbcvError(f"{path}: no HL7 message (no MSH segment); expected ORU^R01 result messages")
    return messages


def _check_msh(path: Path, n: int, msh: _Segment) -> tuple[str, str]:
    """(field separator, encoding characters) of a message's MSH, or a WbcvError."""
    where = f"{path} message {n} (line {msh.line}), MSH"
    if len(msh.text) < 8:
        raise WbcvError(f"{where}: truncated ({shown(msh.text)}); expected MSH|^~\\&|... with at least 12 fields")
    sep = msh.text[3]
    enc = msh.text[4:].split(sep, 1)[0]
    problem = None
    if sep.isalnum() or sep.isspace():
        problem = f"MSH-1 field separator {shown(sep)} is a letter, digit or blank"
    elif len(enc) not in (4, 5):
        problem = f"MSH-2 encoding characters {shown(enc)} are {len(enc)} characters"
    elif len(set(enc)) != len(enc) or sep in enc or any(c.isalnum() or c.isspace() for c in enc):
        problem = f"MSH-2 encoding characters {shown(enc)} repeat a character, hold the field separator or a letter"
    if problem:
        raise WbcvError(
            f"{where}: {problem}; expected MSH-1 '|' and MSH-2 '^~\\&' (component, repetition, escape, "
            "subcomponent: four distinct characters that are not letters, digits or the field separator)"
        )
    if len(msh.text.split(sep)) < 12:
        raise WbcvError(f"{where}: truncated: {len(msh.text.split(sep))} fields, MSH-12 (version) missing")
    return sep, enc


def read_hl7(path: Path, mapping: ClassMapping, collected: Collected) -> tuple[str, dict[str, str]]:
    """Read every ORU^R01 message of the file into ``collected``; returns (encoding, analyzer
    identity found in the file)."""
    text, encoding = read_message_text(path)
    identity: dict[str, str] = {}
    ledger = ResultLedger()
    for n, segments in enumerate(_messages(path, _segments(text)), start=1):
        sep, enc = _check_msh(path, n, segments[0])
        message = hl7.parse("\r".join(s.text for s in segments))
        msh = message.segment("MSH")
        kind = f"{msh.extract_field(1, 9, 1, 1)}^{msh.extract_field(1, 9, 1, 2)}"
        if kind != "ORU^R01":
            collected.exclude(
                None, f"message {n} (line {segments[0].line})", None, None, f"message type {kind} not read"
            )
            continue
        _read_message(path, n, segments, sep, enc, message, mapping, _Sink(collected, ledger))
        identity = identity or _identity(message)
    ledger.emit(collected)
    return encoding, identity


def _identity(message: hl7.Message) -> dict[str, str]:
    found: dict[str, str] = {}
    sft = [s for s in message if str(s[0]) == "SFT"]
    if sft:
        s = sft[0]
        found = {"make": s.extract_field(1, 1, 1, 1), "software_version": s.extract_field(1, 2, 1, 1)}
        found["model"] = s.extract_field(1, 3, 1, 1)
    if not found.get("model"):
        found["model"] = message.segment("MSH").extract_field(1, 3, 1, 1)
    serials = {s.extract_field(1, 18, 1, 1) for s in message if str(s[0]) == "OBX"} - {""}
    if len(serials) == 1:
        found["serial"] = serials.pop()
    return {k: v for k, v in found.items() if v}


def _read_message(
    path: Path,
    n: int,
    segments: list[_Segment],
    sep: str,
    enc: str,
    message: hl7.Message,
    mapping: ClassMapping,
    sink: _Sink,
) -> None:
    parsed = list(message)
    sample: str | None = None
    obr_line, obx_seen = 0, True
    for seg, raw in zip(parsed, segments, strict=True):
        name = str(seg[0])
        where = f"message {n} (line {raw.line}), {name}"
        if name == "OBR":
            if not obx_seen:
                raise WbcvError(f"{path} message {n} (line {obr_line}), OBR: no OBX follows: truncated message?")
            sample = seg.extract_field(1, 3, 1, 1) or seg.extract_field(1, 2, 1, 1)
            if not sample:
                raise WbcvError(f"{path} {where}: no sample id in OBR-3 (filler order number) or OBR-2 (placer)")
            obr_line, obx_seen = raw.line, False
        elif name == "OBX":
            if sample is None:
                raise WbcvError(f"{path} {where}: OBX before any OBR; expected OBR (the sample) first")
            fields = raw.text.split(sep)
            if len(fields) <= OBX_FIELDS:
                raise WbcvError(f"{path} {where}: truncated: {len(fields) - 1} fields, OBX-11 (result status) missing")
            obx_seen = True
            _observation(
                seg, fields, enc, sample, f"message {n} (line {raw.line}), OBX {fields[1] or '?'}", mapping, sink
            )
    if sample is None:
        raise WbcvError(f"{path} message {n} (line {segments[0].line}): no OBR segment: truncated message?")
    if not obx_seen:
        raise WbcvError(f"{path} message {n} (line {obr_line}), OBR: no OBX follows: truncated message?")


@dataclass(frozen=True)
class _Sink:
    """Where an OBX goes: excluded rows to ``collected``, usable values to ``ledger`` by their status."""

    collected: Collected
    ledger: ResultLedger


def _observation(
    seg: Any, fields: list[str], enc: str, sample: str, where: str, mapping: ClassMapping, sink: _Sink
) -> None:
    code, text = seg.extract_field(1, 3, 1, 1), seg.extract_field(1, 3, 1, 2)
    name = mapping.code_name(code) or text or code
    label = f"{code} ({text})" if text and text != code else code
    key = (sample, code or text, seg.extract_field(1, 4, 1, 1))  # the observation: OBX-3 and OBX-4 sub-ID
    status = seg.extract_field(1, 11, 1, 1)

    def skip(reason: str) -> None:
        sink.collected.exclude(sample, where, name, None, f"OBX {label}: {reason}")
        if status == "C":  # the value it corrects is wrong, and the correction cannot be read
            sink.ledger.withdraw(key, f"corrected at {where}, whose value cannot be used ({reason})")

    if status in WITHDRAWING_STATUS:
        sink.ledger.withdraw(key, f"OBX-11 {status} ({STATUS[status]}) at {where}")
    if status not in ACCEPTED_STATUS:
        return skip(f"result status {status!r} ({STATUS.get(status, 'unknown status')}); only F or C are used")
    if seg.extract_field(1, 2, 1, 1) != "NM":
        return skip(f"value type {seg.extract_field(1, 2, 1, 1)!r}, not NM (a number)")
    if enc[1] in fields[5]:
        return skip(f"OBX-5 holds {fields[5].count(enc[1]) + 1} repetitions; one value expected")
    try:
        value = float(seg.extract_field(1, 5, 1, 1))
    except ValueError:
        return skip(f"OBX-5 {shown(seg.extract_field(1, 5, 1, 1))} is not a number")
    if value < 0 or value != value or value in (float("inf"), float("-inf")):
        return skip(f"OBX-5 {value:g} is not a count or percentage")
    unit = seg.extract_field(1, 6, 1, 1).strip()
    kind = _kind(code, unit)
    if kind is None:
        what = "a concentration" if code in LOINC_CONCENTRATION or _CONCENTRATION.search(unit) else "an unknown unit"
        return skip(f"unit {unit!r}: {what}; expected %, {{cells}} or #")
    if mapping.target(name)[0] == TOTAL:
        kind = TOTAL
    held = HeldResult(sample, where, name, kind, value, status)
    if status == "C":
        sink.ledger.correct(key, held, "OBX-11 C")
    else:
        sink.ledger.final(key, held)
    return None


def _kind(code: str, unit: str) -> str | None:
    """'percent' or 'count' from OBX-6 (and, without a unit, a LOINC percentage code); None for a
    concentration, an unknown unit, or no unit on a code that does not say."""
    if code in LOINC_CONCENTRATION:
        return None
    if unit.lower() in PERCENT_UNITS or (not unit and code in LOINC_PERCENT):
        return "percent"
    if unit.lower() in COUNT_UNITS:
        return "count"
    return None
