"""Which wbcv class each class name (or observation code) of an analyzer's export stands for.

Targets: one of the five classes (``wbcv.base.taxonomy.CELL_CLASSES``); ``unclassified`` (a white
cell the analyzer did not name: counted in n_cells, not in the differential, as the ensemble's
unclassified cells); ``excluded`` with a reason (not a white cell, or not part of the
differential: smudge cells, giant platelets, erythroblasts: counted in n_skipped with the reason);
``total`` (the number of cells counted, for exports that give percentages). A name the mapping
does not know is *unmapped*: its cells are excluded with that reason and their numbers listed in
the run record, the command's output and the report; never silently dropped.

Names are matched case-insensitively with runs of spaces, ``_`` and ``-`` read as one space, and
a trailing ``%`` or ``#`` (the kind of value) removed: ``Band_Neutrophils``, ``band neutrophils``
and ``BAND NEUTROPHILS%`` are one name.

The mapping comes from, in this order: a mapping file (``--mapping M.yaml``), the protocol's
``results_import`` section, or the defaults below alone. A mapping file and the protocol section
have the same keys::

    classes:                       # export class name -> target
      Band neutrophil: neutrophil
      Hairy cell: unclassified
      Smudge: excluded             # reason: "mapped to excluded by the mapping"
      Giant platelet: {excluded: not a white cell}
    codes:                         # HL7 OBX-3 identifier / ASTM R-3 test id -> export class name
      LOC-SMU: Smudge
    defaults: true                 # also use wbcv's default names and LOINC codes (default true)
    analyzer: {make: Sysmex, model: DI-60, software_version: "1.2", serial: "A1234"}

Default observation codes are the LOINC codes of the automated differential (Neutrophils/100
leukocytes 770-8, Lymphocytes 736-9, Monocytes 5905-5, Eosinophils 713-8, Basophils 706-2); the
LOINC concentrations (751-8 ...) are known too, and excluded by the readers as concentrations
(``wbcv`` compares the differential, not a count per volume).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from wbcv.base.atomic import sha256_file
from wbcv.base.errors import WbcvError, clipped, listing, shown, suggest
from wbcv.base.records import AnalyzerRef, MappingRef
from wbcv.base.taxonomy import CELL_CLASSES, UNCLASSIFIED
from wbcv.base.yamlfile import read_yaml

UNMAPPED: Final[str] = "unmapped"
EXCLUDED: Final[str] = "excluded"
TOTAL: Final[str] = "total"
TARGETS: Final[tuple[str, ...]] = (*CELL_CLASSES, UNCLASSIFIED, EXCLUDED, TOTAL)
SECTION_KEYS: Final[tuple[str, ...]] = ("classes", "codes", "defaults", "analyzer")
ANALYZER_KEYS: Final[tuple[str, ...]] = ("make", "model", "software_version", "serial")

_NOT_WBC: Final[str] = "excluded: not a white blood cell"
_NOT_COUNTED: Final[str] = "excluded: damaged cell, not part of the differential"

#: wbcv's default names: export class name -> target ('excluded: reason' for an exclusion).
DEFAULT_CLASSES: Final[dict[str, str]] = {
    **dict.fromkeys(
        (
            "neutrophil",
            "neutrophils",
            "neut",
            "neu",
            "segmented neutrophil",
            "segmented neutrophils",
            "seg",
            "segs",
            "band neutrophil",
            "band neutrophils",
            "band",
            "bands",
        ),
        "neutrophil",
    ),
    **dict.fromkeys(
        ("lymphocyte", "lymphocytes", "lymph", "lym", "variant lymphocyte", "variant lymphocytes"), "lymphocyte"
    ),
    **dict.fromkeys(("monocyte", "monocytes", "mono", "mon"), "monocyte"),
    **dict.fromkeys(("eosinophil", "eosinophils", "eos", "eo"), "eosinophil"),
    **dict.fromkeys(("basophil", "basophils", "baso", "bas"), "basophil"),
    # white cells outside the five mature classes: counted, not named (as the ensemble's abstentions)
    **dict.fromkeys(
        (
            "unidentified",
            "not classed",
            "unclassified",
            "blast",
            "blasts",
            "promyelocyte",
            "promyelocytes",
            "myelocyte",
            "myelocytes",
            "metamyelocyte",
            "metamyelocytes",
            "immature granulocyte",
            "immature granulocytes",
            "ig",
            "plasma cell",
            "plasma cells",
        ),
        UNCLASSIFIED,
    ),
    **dict.fromkeys(
        (
            "giant platelet",
            "giant platelets",
            "platelet aggregate",
            "platelet aggregates",
            "platelet clump",
            "platelet clumps",
            "nrbc",
            "erythroblast",
            "erythroblasts",
            "artefact",
            "artefacts",
            "artifact",
            "artifacts",
        ),
        _NOT_WBC,
    ),
    **dict.fromkeys(("smudge", "smudge cell", "smudge cells", "damaged cell", "damaged cells"), _NOT_COUNTED),
    **dict.fromkeys(("total", "total cells", "cells counted", "n cells", "wbc counted"), TOTAL),
}

#: LOINC codes of the automated differential -> export class name (percentages, "/100 leukocytes").
LOINC_PERCENT: Final[dict[str, str]] = {
    "770-8": "neutrophils",
    "736-9": "lymphocytes",
    "5905-5": "monocytes",
    "713-8": "eosinophils",
    "706-2": "basophils",
}
#: LOINC concentrations (10^9/L): recognised, and excluded by the readers as concentrations.
LOINC_CONCENTRATION: Final[dict[str, str]] = {
    "751-8": "neutrophils",
    "731-0": "lymphocytes",
    "742-7": "monocytes",
    "711-2": "eosinophils",
    "704-7": "basophils",
}
DEFAULT_CODES: Final[dict[str, str]] = {**LOINC_PERCENT, **LOINC_CONCENTRATION}

_SEPARATORS = re.compile(r"[\s_\-]+")


def normalise(name: str) -> str:
    """The form names are matched in: case-folded, runs of spaces, '_' and '-' as one space, no
    trailing '%' or '#'."""
    return _SEPARATORS.sub(" ", name.strip().rstrip("%#").strip()).casefold()


@dataclass(frozen=True)
class ClassMapping:
    source: Literal["default", "protocol", "mapping file"]
    path: Path | None
    classes: dict[str, str]  # normalised name -> target ('excluded: reason' for exclusions)
    codes: dict[str, str]  # observation code (as written, stripped) -> export class name
    analyzer: dict[str, str]  # ANALYZER_KEYS given in the mapping

    def target(self, name: str) -> tuple[str, str | None]:
        """(target, reason) of an export class name: target in TARGETS or UNMAPPED; a reason for
        'excluded' and 'unmapped'."""
        mapped = self.classes.get(normalise(name))
        if mapped is None:
            return UNMAPPED, f"class {shown(name)} is not in the class mapping ({self.where})"
        if mapped.startswith(EXCLUDED):
            reason = mapped.partition(":")[2].strip() or f"mapped to excluded by the {self.where}"
            return EXCLUDED, f"class {shown(name)}: {reason}"
        return mapped, None

    def code_name(self, code: str) -> str | None:
        """The export class name an observation code stands for, or None when the mapping has none."""
        return self.codes.get(code.strip())

    @property
    def where(self) -> str:
        return {"default": "default mapping", "protocol": "protocol's results_import", "mapping file": "mapping file"}[
            self.source
        ]

    def as_record(self) -> MappingRef:
        return MappingRef(
            source=self.source,
            path=self.path.resolve() if self.path else None,
            sha256=sha256_file(self.path) if self.path and self.source == "mapping file" else None,
            classes=dict(sorted(self.classes.items())),
            codes=dict(sorted(self.codes.items())),
        )


def default_mapping() -> ClassMapping:
    return ClassMapping("default", None, dict(DEFAULT_CLASSES), dict(DEFAULT_CODES), {})


def check_section(section: Any, where: str) -> list[str]:
    """Every problem of a ``results_import`` section (or mapping file), each naming its key."""
    return _parse(section, where)[1]


def mapping_from_section(
    section: Any, where: str, source: Literal["protocol", "mapping file"], path: Path
) -> ClassMapping:
    parsed, problems = _parse(section, where)
    if problems:
        n = len(problems)
        head = f"{path}: the class mapping has {n} problem{'s' if n > 1 else ''}:"
        raise WbcvError("\n".join([head, *(f"  - {p}" for p in listing(problems))]))
    classes, codes, use_defaults, analyzer = parsed
    if use_defaults:
        classes, codes = {**DEFAULT_CLASSES, **classes}, {**DEFAULT_CODES, **codes}
    return ClassMapping(source, path, classes, codes, analyzer)


def load_mapping_file(path: Path) -> ClassMapping:
    """A mapping file (``--mapping``): the keys of a protocol's ``results_import`` section."""
    doc = read_yaml(path, "class mapping", text_keys=ANALYZER_KEYS)
    return mapping_from_section(doc, f"{path}: ", "mapping file", path)


_Parsed = tuple[dict[str, str], dict[str, str], bool, dict[str, str]]


def _parse(section: Any, where: str) -> tuple[_Parsed, list[str]]:
    problems: list[str] = []
    empty: _Parsed = ({}, {}, True, {})
    if section is None:
        return empty, problems
    if not isinstance(section, dict):
        return empty, [f"{where}must be a mapping with keys {', '.join(SECTION_KEYS)}"]
    for k in section:
        if k not in SECTION_KEYS:
            problems.append(f"{where}{clipped(str(k))}: unknown key{suggest(str(k), SECTION_KEYS)}")
    classes = _classes(section.get("classes"), f"{where}classes.", problems)
    codes = _text_map(section.get("codes"), f"{where}codes", problems)
    defaults = section.get("defaults", True)
    if not isinstance(defaults, bool):
        problems.append(f"{where}defaults: is {shown(defaults)}; expected true or false")
        defaults = True
    analyzer = _text_map(section.get("analyzer"), f"{where}analyzer", problems)
    for k in analyzer:
        if k not in ANALYZER_KEYS:
            problems.append(f"{where}analyzer.{clipped(k)}: unknown key{suggest(k, ANALYZER_KEYS)}")
    return (classes, {k.strip(): v for k, v in codes.items()}, defaults, analyzer), problems


def _classes(value: Any, where: str, problems: list[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{where.rstrip('.')}: must be a mapping of export class name -> target")
        return {}
    out: dict[str, str] = {}
    for name, target in value.items():
        key = f"{where}{clipped(str(name))}"
        if isinstance(target, dict) and list(target) == [EXCLUDED] and isinstance(target[EXCLUDED], str):
            out[normalise(str(name))] = f"{EXCLUDED}: {target[EXCLUDED]}"
        elif isinstance(target, str) and target in TARGETS:
            out[normalise(str(name))] = target
        else:
            hint = suggest(str(target), TARGETS) if isinstance(target, str) else ""
            problems.append(
                f"{key}: target {shown(target)}{hint}; expected one of {', '.join(TARGETS)} or {{excluded: reason}}"
            )
    return out


def _text_map(value: Any, where: str, problems: list[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        problems.append(f"{where}: must be a mapping of text to text, got {shown(value)}")
        return {}
    return {str(k): v for k, v in value.items()}


def analyzer_identity(given: dict[str, str | None], mapping: ClassMapping, from_file: dict[str, str]) -> AnalyzerRef:
    """The analyzer's make, model, software version and serial: each from the command line when
    given there, else from the mapping (protocol or mapping file), else from the file itself."""
    parts: dict[str, str | None] = {}
    sources: list[str] = []
    for key in ANALYZER_KEYS:
        for source, values in (("command line", given), (mapping.where, mapping.analyzer), ("the file", from_file)):
            if values.get(key):
                parts[key] = values[key]
                if source not in sources:
                    sources.append(source)
                break
    return AnalyzerRef(**parts, source=", ".join(sources) or "not given")


def choose_mapping(mapping_file: Path | None, protocol_path: Path | None) -> ClassMapping:
    """The mapping a results import uses: the mapping file when given, else the protocol's
    ``results_import`` section when it has one, else the defaults."""
    if mapping_file is not None:
        return load_mapping_file(Path(mapping_file))
    if protocol_path is not None:
        from wbcv.validation.protocol import load_protocol  # the protocol module checks its section here

        protocol = load_protocol(protocol_path)
        if protocol.results_import is not None:
            return mapping_from_section(protocol.results_import, "results_import.", "protocol", protocol.path)
    return default_mapping()
