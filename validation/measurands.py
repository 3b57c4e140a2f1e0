"""Measurands and units: the one place that names what is compared and in which unit.

Canonical units: counts in 10^3 cells/µL (numerically equal to 10^9/L), differentials in %.
A Sysmex header such as ``NEUT#(10^3/uL)``, ``NEUT#(10^9/L)``, ``NEUT%(%)`` or ``NEUT%(10^(-1)%)``
is split into the measurand name and a factor that converts the file's numbers to canonical units.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from wbcv.base.taxonomy import CELL_CLASSES

Kind = Literal["count", "percent"]

COUNT_UNIT: Final[str] = "10^3/uL"
PERCENT_UNIT: Final[str] = "%"


@dataclass(frozen=True)
class Measurand:
    name: str  # as the analyzer names it: WBC, NEUT#, NEUT% ...
    kind: Kind
    cell_class: str | None  # the CELL_CLASSES entry it counts; None for the WBC total

    @property
    def unit(self) -> str:
        return COUNT_UNIT if self.kind == "count" else PERCENT_UNIT


#: Sysmex abbreviation of each class.
SYSMEX_CODE: Final[dict[str, str]] = {
    "neutrophil": "NEUT",
    "lymphocyte": "LYMPH",
    "monocyte": "MONO",
    "eosinophil": "EO",
    "basophil": "BASO",
}

WBC: Final[Measurand] = Measurand("WBC", "count", None)
MEASURANDS: Final[dict[str, Measurand]] = {
    "WBC": WBC,
    **{f"{SYSMEX_CODE[c]}#": Measurand(f"{SYSMEX_CODE[c]}#", "count", c) for c in CELL_CLASSES},
    **{f"{SYSMEX_CODE[c]}%": Measurand(f"{SYSMEX_CODE[c]}%", "percent", c) for c in CELL_CLASSES},
}
#: Reference-only quantities the protocol may use (immature granulocytes, for the class mapping).
AUXILIARY: Final[dict[str, Measurand]] = {
    "IG#": Measurand("IG#", "count", None),
    "IG%": Measurand("IG%", "percent", None),
}
ALL_REFERENCE_QUANTITIES: Final[dict[str, Measurand]] = {**MEASURANDS, **AUXILIARY}

_HEADER = re.compile(r"^\s*(?P<name>[A-Za-z\-]+[#%]?)\s*(?:\((?P<unit>[^()]*(?:\([^()]*\)[^()]*)*)\))?\s*$")
_UNIT = re.compile(
    r"^\s*(?:x\s*)?(?:10\s*(?:\^|\*\*|\*|e)\s*\(?\s*(?P<exp>[+-]?\d+)\s*\)?)?\s*(?P<base>/\s*[uµμ]L|/\s*L|%)\s*$",
    re.IGNORECASE,
)


class UnitError(ValueError):
    pass


def unit_factor(unit: str, kind: Kind) -> float:
    """Factor from the file's unit to the canonical unit of a measurand of this kind.

    10^3/uL -> 1; 10^9/L -> 1; 10^2/uL -> 0.1; /uL -> 0.001; % -> 1; 10^(-1)% -> 0.1.
    """
    m = _UNIT.match(unit.replace(" ", ""))
    if not m:
        raise UnitError(f"unrecognised unit {unit!r}; expected e.g. 10^3/uL, 10^9/L, % or 10^(-1)%")
    exp = int(m["exp"]) if m["exp"] else 0
    base = m["base"].lower().replace("µ", "u").replace("μ", "u").replace(" ", "")
    if kind == "percent":
        if base != "%":
            raise UnitError(f"unit {unit!r} is not a percentage")
        return 10.0**exp
    if base == "/ul":
        return 10.0 ** (exp - 3)
    if base == "/l":
        return 10.0 ** (exp - 9)  # 10^9/L equals 10^3/uL
    raise UnitError(f"unit {unit!r} is not a count per volume")


def parse_header(header: str) -> tuple[str, str | None]:
    """``NEUT#(10^3/uL)`` -> (``NEUT#``, ``10^3/uL``); a name without unit -> (name, None)."""
    m = _HEADER.match(header)
    if not m:
        return header.strip(), None
    return m["name"].upper(), m["unit"]
