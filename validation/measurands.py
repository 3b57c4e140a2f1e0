"""Measurands and units: the one place that names what is compared and in which unit.

Canonical units: counts in 10^3 cells/µL (numerically equal to 10^9/L), except red cells in 10^6/µL
(10^12/L), as the Sysmex XN reports them (``RBC(10^6/uL)``, ``PLT(10^3/uL)``); differentials in %.
RBC and PLT are counted in smear fields (``wbcv segment``: red cells and platelets per imaged blood
volume, ``smear_object``), the others from the classified white cells.
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
    cell_class: str | None  # the CELL_CLASSES entry it counts; None for the WBC total, RBC and PLT
    #: a count's canonical unit is 10^unit_exponent cells/µL
    unit_exponent: int = 3
    #: the smear-field object counted (``wbcv segment``'s kinds ``rbc``, ``platelet``); None: white cells
    smear_object: str | None = None

    @property
    def unit(self) -> str:
        return f"10^{self.unit_exponent}/uL" if self.kind == "count" else PERCENT_UNIT


#: Sysmex abbreviation of each class.
SYSMEX_CODE: Final[dict[str, str]] = {
    "neutrophil": "NEUT",
    "lymphocyte": "LYMPH",
    "monocyte": "MONO",
    "eosinophil": "EO",
    "basophil": "BASO",
}

WBC: Final[Measurand] = Measurand("WBC", "count", None)
RBC: Final[Measurand] = Measurand("RBC", "count", None, unit_exponent=6, smear_object="rbc")
PLT: Final[Measurand] = Measurand("PLT", "count", None, smear_object="platelet")
MEASURANDS: Final[dict[str, Measurand]] = {
    "WBC": WBC,
    **{f"{SYSMEX_CODE[c]}#": Measurand(f"{SYSMEX_CODE[c]}#", "count", c) for c in CELL_CLASSES},
    **{f"{SYSMEX_CODE[c]}%": Measurand(f"{SYSMEX_CODE[c]}%", "percent", c) for c in CELL_CLASSES},
    "RBC": RBC,
    "PLT": PLT,
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


def unit_factor(unit: str, kind: Kind, exponent: int = 3) -> float:
    """Factor from the file's unit to the canonical unit of a measurand of this kind (counts:
    10^exponent/uL, ``Measurand.unit_exponent``).

    Exponent 3: 10^3/uL -> 1; 10^9/L -> 1; 10^2/uL -> 0.1; /uL -> 0.001. Exponent 6 (red cells):
    10^6/uL -> 1; 10^12/L -> 1; 10^4/uL -> 0.01. % -> 1; 10^(-1)% -> 0.1.
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
        return 10.0 ** (exp - exponent)
    if base == "/l":
        return 10.0 ** (exp - 6 - exponent)  # 1 L = 10^6 uL: 10^9/L equals 10^3/uL
    raise UnitError(f"unit {unit!r} is not a count per volume")


def parse_header(header: str) -> tuple[str, str | None]:
    """``NEUT#(10^3/uL)`` -> (``NEUT#``, ``10^3/uL``); a name without unit -> (name, None)."""
    m = _HEADER.match(header)
    if not m:
        return header.strip(), None
    return m["name"].upper(), m["unit"]
