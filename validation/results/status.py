"""Result status of HL7 and ASTM results: which value of an observation counts.

Both standards send a result once and may send it again later with another status: HL7 v2.5
OBX-11 (Table 0085, observation result status) and ASTM E1394 R-9 (result status). The readers
(``hl7_oru``, ``astm_records``) hand each usable result to a ``ResultLedger`` under its key (the
sample and the observation: HL7 OBX-3 identifier and OBX-4 sub-ID; ASTM R-3 test ID), in file
order, with its status:

* **final** (HL7 ``F``; ASTM ``F``, ``V`` operator verified, or empty): held. A second final of
  the same key is held too, and the counting then excludes the sample ("reported 2 times"):
  which of two finals is right cannot be known.
* **correction** (HL7 ``C``, "a correction that replaces a final result"; ASTM ``C``, "correction
  of previously transmitted results"): replaces every value held for the key; each replaced value
  is listed as excluded, naming the correction that replaced it. A correction of a result that is
  not in the file (sent earlier) is used as it stands.
* **withdrawal** (HL7 ``D`` "deletes the OBX record" and ``W`` "post original as wrong"; also a
  correction whose own value cannot be used): every value held for the key is listed as excluded
  with the reason, and nothing is held. The record itself is listed by the reader.

Every other status (HL7 P, X, I, R, S, U, N, O ...; ASTM P, X, I, S, M, R, N, Q, W) is not a value
to count: the reader lists the record as excluded with the status's meaning. Once the file is read,
``emit`` hands the values still held to ``Collected`` as observations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from wbcv.validation.results.counting import Collected

FINAL: Final[str] = "final"
CORRECTION: Final[str] = "correction"


@dataclass(frozen=True)
class HeldResult:
    """One usable result: what ``Collected.observe`` takes, and the status it came with."""

    sample_id: str
    location: str
    export_class: str
    kind: str  # percent, count or total
    value: float
    status: str  # the status as written (F, C, V, ...)


@dataclass
class ResultLedger:
    """The values of an export's observations as statuses replace and withdraw them (module docstring)."""

    held: dict[tuple[str, ...], list[HeldResult]] = field(default_factory=dict)
    dropped: list[tuple[HeldResult, str]] = field(default_factory=list)  # (value no longer used, why)

    def final(self, key: tuple[str, ...], result: HeldResult) -> None:
        self.held.setdefault(key, []).append(result)

    def correct(self, key: tuple[str, ...], result: HeldResult, standard: str) -> None:
        """``result`` replaces the values held for ``key``; ``standard`` names the status field (OBX-11 C)."""
        self._drop(key, f"replaced by the corrected result ({standard}) at {result.location}: {result.value:g}")
        self.held[key] = [result]

    def withdraw(self, key: tuple[str, ...], why: str) -> None:
        """No value of ``key`` counts any more; each held one is listed with ``why``."""
        self._drop(key, why)
        self.held[key] = []

    def _drop(self, key: tuple[str, ...], why: str) -> None:
        self.dropped += [(r, why) for r in self.held.get(key, [])]

    def emit(self, collected: Collected) -> None:
        """The values still held as observations, the dropped ones as exclusions with their reason."""
        for results in self.held.values():
            for r in results:
                collected.observe(r.sample_id, r.location, r.export_class, r.kind, r.value)
        for r, why in self.dropped:
            collected.sample(r.sample_id)
            collected.exclude(r.sample_id, r.location, r.export_class, None, f"result {r.value:g} ({r.status}): {why}")
