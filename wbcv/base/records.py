"""The run records (``run.json``) as types: what a writer seals is what a reader gets back.

Every finished run holds one ``run.json`` of format ``wbcv-run/1`` (``wbcv.base.runstore``). A
writer builds an ``InferenceRecord``, a ``ResultsRecord`` (an analyzer's exported results imported in
place of an inference run, ``wbcv.validation.results``), a ``ComparisonRecord``, or a ``PrecisionRecord`` or
``QualitativeRecord`` (a study sealed by `wbcv precision --out` / `wbcv qualitative --out`, kinds added
2026-11-30: readers before them refuse such a run by its kind); sealing adds ``run_id`` and
``files`` and writes ``to_json(record)``. ``parse_record`` turns the document back into the same
types and checks every field on the way, so no reader meets a missing key or a wrong type deep in
the report or the dashboard: it gets one ``WbcvError`` naming the file, the field and what was
expected, e.g. ``runs/X/run.json: field 'inputs.protocol.sha256' missing; expected a 64-hex
string``.

Compatibility within format 1: keys are never renamed or removed. A key added later has a default
here that states what the runs written before it meant (``engine``: only the local engine existed;
``software.cpu``: not recorded). Keys a reader does not know are ignored, as the readers before
them ignored the keys added since. Comparison runs written before the whole protocol was recorded
(2026-11-26, commit e90eee3) read with a ``ProtocolSummary`` instead of a ``ProtocolRecord``.
A comparison's ``inputs.inference_run`` is the run its counts came from: before results runs existed
(2026-11-30) always an inference run, so a link without ``kind`` is ``kind: inference`` with its
``model``; a results run's link has ``kind: results``, no model and the ``analyzer`` instead.

The records are frozen dataclasses, like the project's other value types; wbcv.base needs nothing
beyond polars for them (pydantic arrives only as a dependency of Dash), and the error messages
have the project's form without translating another library's.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePath
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin, get_type_hints

from wbcv.base.errors import WbcvError
from wbcv.base.software import Software

RUN_FORMAT: Final[str] = "wbcv-run/1"


@dataclass(frozen=True)
class Pattern:
    """``Annotated[str, Pattern(regex, expected)]``: a string field that must match ``regex``."""

    regex: str
    expected: str  # what the error message says was expected


Sha256 = Annotated[str, Pattern(r"[0-9a-f]{64}", "a 64-hex string")]
UtcTime = Annotated[
    str,
    Pattern(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", "a UTC time such as '2026-01-31T08:00:00+00:00'"),
]


# --- records -----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """What every run record has. ``run_id`` and ``files`` are set when the run is sealed."""

    format: str = RUN_FORMAT
    kind: str
    run_id: str = ""
    created_utc: UtcTime
    software: Software
    files: dict[str, Sha256] = field(default_factory=dict)  # file name -> sha256, run.json itself excepted


@dataclass(frozen=True, kw_only=True)
class ModelRef:
    """The model an inference run used; a comparison copies it into ``inputs.inference_run.model``."""

    id: str
    name: str
    sha256: Sha256  # of the weights file
    path: Path
    input_size: int


@dataclass(frozen=True, kw_only=True)
class BatchRef:
    """The batch (slide set) an inference run classified."""

    path: Path  # resolved batch folder: the image route of the dashboard serves nothing outside it
    batch_id: str | None
    manifest: str
    cell_labels: str | None
    inputs_sha256: Sha256  # one hash over inputs.parquet's listing of every input file
    n_samples: int
    n_files: int
    unlisted_dirs: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class InferenceSummary:
    n_samples: int
    n_cells: int
    n_unclassified: int
    n_skipped_cells: int
    n_unlisted_folders: int
    resumed: bool
    wall_seconds_last_session: float


@dataclass(frozen=True, kw_only=True)
class DomainCheck:
    """Whether the batch lies inside the model's operating domain (``wbcv.inference.domain``).

    Recorded since 2026-11-30; runs before it, and models without a domain profile, read as
    ``not_checked`` (score and threshold null)."""

    verdict: Literal["in_domain", "out_of_domain", "not_checked"] = "not_checked"
    score: float | None = None  # the batch's score; above ``threshold``: out of domain
    threshold: float | None = None
    method: str = "none: not checked"
    slides_out_of_domain: tuple[str, ...] = ()  # sample ids whose own score is above the threshold


@dataclass(frozen=True, kw_only=True)
class InferenceRecord(RunRecord):
    """run.json of `wbcv infer` (``wbcv.inference.runner``)."""

    kind: Literal["inference"] = "inference"
    finished_utc: UtcTime
    batch: BatchRef
    model: ModelRef
    parameters: dict[str, Any]  # wbcv.inference.runner.InferenceParams, as given
    # the engine of the session that sealed the run (name plus its own settings); recorded since
    # 2026-11-26 (7d9c721): before, the local engine was the only one
    engine: dict[str, Any] = field(default_factory=lambda: {"name": "local"})
    summary: InferenceSummary
    domain: DomainCheck = field(default_factory=DomainCheck)  # not_checked for runs before it


@dataclass(frozen=True)
class RegressionCriterion:
    """Acceptance on the Passing–Bablok fit (``wbcv.validation.regression_acceptance``): the slope
    within [low, high], |intercept| <= intercept_abs (measurand units); either may be absent."""

    slope: tuple[float, float] | None = None
    intercept_abs: float | None = None


@dataclass(frozen=True)
class MeasurandRule:
    """A measurand's acceptance rule in the protocol (``wbcv.validation.protocol``)."""

    allowable_error_pct: float
    absolute_limit: float | None = None
    regression: RegressionCriterion | None = None  # recorded since the regression criterion exists


@dataclass(frozen=True, kw_only=True)
class OutlierRule:
    """Outlier screening of the comparison (``wbcv.validation.comparison_outliers``)."""

    method: Literal["esd"] = "esd"
    alpha: float = 0.05
    max_share: float = 0.05
    differences: Literal["absolute", "relative"] = "absolute"
    verdict: Literal["with", "without"] = "with"  # the acceptance is judged with or without the outliers


@dataclass(frozen=True, kw_only=True)
class ProtocolSummary:
    """The protocol's identification and acceptance: what every comparison record holds."""

    id: str
    version: str
    title: str
    study: dict[str, str]
    count_mode: Literal["relative", "volumetric"]
    required_coverage: float
    basis: Literal["point_estimate", "lower_bound"]
    confidence: float


@dataclass(frozen=True, kw_only=True)
class ProtocolRecord(ProtocolSummary):
    """The whole protocol as applied (``wbcv.validation.protocol.Protocol`` is this plus its path)."""

    measurands: dict[str, MeasurandRule]
    exclude_flags: Literal["any", "none"] | tuple[str, ...]
    exclude_marks: tuple[str, ...]
    min_cells: int
    min_reference: dict[str, float]
    immature_granulocytes: Literal["separate", "with_neutrophils"]
    rerun_rule: Literal["last", "first", "reject"]
    decision_levels: dict[str, tuple[float, ...]]
    # the batch must be shown inside the model's operating domain (recorded since 2026-11-30; before: false)
    require_in_domain: bool = False
    # Added with the EP09c additions; runs recorded before them read with these defaults, which say
    # what they did: no outlier screening (None), tertiles, constant limits, no regression criterion.
    outliers: OutlierRule | None = None
    bias_intervals: dict[str, tuple[float, ...]] = field(default_factory=dict)  # cut points; none: tertiles
    regression_basis: Literal["point_estimate", "ci"] = "point_estimate"
    difference_limits: Literal["constant", "regression"] = "constant"
    plan_strata: dict[str, int] = field(default_factory=dict)  # stratum -> minimum samples (wbcv plan)
    plan_expected_coverage: float | None = None  # the coverage the sample-size plan assumes


@dataclass(frozen=True, kw_only=True)
class AnalyzerRef:
    """The analyzer whose exported results a results run imported (each part None when not known)."""

    make: str | None = None
    model: str | None = None
    software_version: str | None = None
    serial: str | None = None
    source: str  # where these came from, e.g. "command line", "protocol results_import.analyzer", "MSH-3"

    @property
    def label(self) -> str:
        """'CellaVision DC-1 (software 7.1, serial 1234)' or 'analyzer not identified'."""
        name = " ".join(p for p in (self.make, self.model) if p) or "analyzer not identified"
        extra = [
            f"{what} {value}" for what, value in (("software", self.software_version), ("serial", self.serial)) if value
        ]
        return f"{name} ({', '.join(extra)})" if extra else name


@dataclass(frozen=True, kw_only=True)
class InferenceLink:
    """The run a comparison took its counts from: an inference run (``kind`` inference, with its
    ``model``) or a results run (``kind`` results, with the ``analyzer``). Found by path or beside
    the comparison, trusted by hash. The key stays ``inputs.inference_run`` (keys are never renamed)."""

    kind: Literal["inference", "results"] = "inference"  # absent in runs made before results runs existed
    run_id: str
    path: Path
    record_sha256: Sha256  # of its run.json when the comparison was made
    model: ModelRef | None = None  # the inference run's model; None for a results run
    analyzer: AnalyzerRef | None = None  # the results run's analyzer; None for an inference run

    @property
    def producer(self) -> str:
        """What produced the counts, in words: the model's id or the analyzer's label."""
        if self.model is not None:
            return self.model.id
        return self.analyzer.label if self.analyzer is not None else "unknown"


@dataclass(frozen=True, kw_only=True)
class ReferenceInput:
    path: Path
    sha256: Sha256
    format: str
    encoding: str


@dataclass(frozen=True, kw_only=True)
class ProtocolInput:
    path: Path
    sha256: Sha256
    id: str
    version: str


@dataclass(frozen=True, kw_only=True)
class PlanInput:
    """The validation plan (``wbcv plan``) a comparison was made under: its manifest's sha256 and the
    sha256 of the protocol the plan was made from (``wbcv.validation.plan``)."""

    path: Path
    manifest_sha256: Sha256
    protocol_sha256: Sha256
    strata: dict[str, int]
    # the protocol fields applied otherwise than the plan fixed them, "key: planned (plan) → applied
    # (applied)" (``wbcv.validation.plan.protocol_changes``); empty: every field as planned. Recorded
    # since 2026-12-01; None in runs made before (only the protocol file's sha256 was compared then).
    changed_fields: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class ComparisonInputs:
    inference_run: InferenceLink
    reference: ReferenceInput
    protocol: ProtocolInput
    plan: PlanInput | None = None  # recorded since `wbcv compare --plan`; None: no plan given


@dataclass(frozen=True, kw_only=True)
class ComparisonSummary:
    n_samples_run: int
    n_samples_reference: int
    n_values_compared: int
    n_excluded: int  # exclusions made by the comparison (wbcv.validation.compare)
    n_reference_rows_excluded_by_parser: int  # rows of the reference file that are no sample's measurement

    @property
    def n_exclusions(self) -> int:
        """The one count of exclusions that the command line, the report and the dashboard show.

        It is the number of rows of excluded.parquet, each with its reason: one per sample and
        measurand value left out of the comparison, plus one per reference row or sample that
        gave no value to compare (rows that are no sample's measurement, such as QC and background
        checks; reruns not used; samples only in the run or only in the reference). Rows, not
        distinct samples: a sample can be compared on some measurands and excluded on others, and
        a reference row need not be a sample.
        """
        return self.n_excluded + self.n_reference_rows_excluded_by_parser

    @property
    def exclusions_text(self) -> str:
        """``n_exclusions`` in the words every view uses: '1 exclusion', '12 exclusions'."""
        return f"{self.n_exclusions} exclusion{'' if self.n_exclusions == 1 else 's'}"


@dataclass(frozen=True, kw_only=True)
class ComparisonRecord(RunRecord):
    """run.json of `wbcv compare` (``wbcv.validation.study``)."""

    kind: Literal["comparison"] = "comparison"
    inputs: ComparisonInputs
    protocol: ProtocolRecord | ProtocolSummary
    verdict: Literal["pass", "fail"]
    summary: ComparisonSummary
    domain: DomainCheck = field(default_factory=DomainCheck)  # the inference run's; not_checked before it was recorded


@dataclass(frozen=True, kw_only=True)
class ResultsInput:
    """The exported results file a results run read."""

    path: Path
    sha256: Sha256
    bytes: int
    format: Literal["csv", "cells", "hl7", "astm"]
    encoding: str


@dataclass(frozen=True, kw_only=True)
class MappingRef:
    """The class mapping applied (``wbcv.validation.results.mapping``): where it came from and, in
    full, every export class name and observation code it knew."""

    source: Literal["default", "protocol", "mapping file"]
    path: Path | None = None
    sha256: Sha256 | None = None
    classes: dict[str, str]  # export class name (case-folded) -> wbcv class, 'unclassified' or 'excluded: reason'
    codes: dict[str, str]  # HL7 OBX-3 / ASTM R-3 code -> export class name (or 'total')


@dataclass(frozen=True, kw_only=True)
class ResultsSummary:
    n_samples: int  # samples with a row in counts.parquet
    n_samples_excluded: int  # samples of the file excluded as a whole (listed in import_excluded.parquet)
    n_cells_reported: int  # cells the export reports, in every class (sum of n_files)
    n_classified: int
    n_unclassified: int
    n_cells_excluded: int  # cells of classes mapped to 'excluded' or not mapped (sum of n_skipped)
    unmapped_classes: dict[str, int]  # export class name -> cells, for names the mapping does not know
    n_rows_excluded: int  # rows, segments or records excluded with a reason


@dataclass(frozen=True, kw_only=True)
class ResultsRecord(RunRecord):
    """run.json of `wbcv import-results` (``wbcv.validation.results``): an analyzer's exported results
    as per-sample counts, in place of an inference run."""

    kind: Literal["results"] = "results"
    input: ResultsInput
    reader: str  # the module that read the file, and the parser library with its version
    analyzer: AnalyzerRef
    mapping: MappingRef
    # what the counts were made from: counts or percentages (x total cells) per sample, or per-cell
    # rows counted by their verified or pre-classified class
    counted_from: Literal["counts", "percentages", "verified", "preclassified", "mixed"]
    summary: ResultsSummary


@dataclass(frozen=True, kw_only=True)
class StudyInput:
    """The CSV table a precision or qualitative study read (``wbcv.validation.study_run``)."""

    path: Path
    sha256: Sha256
    bytes: int


@dataclass(frozen=True, kw_only=True)
class StudySummary:
    n_rows: int  # data rows of the table
    n_rows_excluded: int  # rows excluded with their line and reason (excluded.parquet)
    n_groups: int  # (sample, measurand) groups of a precision study; flags of a qualitative one
    n_groups_not_analysed: int  # groups whose design could not be analysed (precision), else 0


@dataclass(frozen=True, kw_only=True)
class PrecisionRecord(RunRecord):
    """run.json of `wbcv precision --out` (CLSI EP05-A3 / EP15-A3); its result is result.json."""

    kind: Literal["precision"] = "precision"
    input: StudyInput
    confidence: float
    claims: tuple[dict[str, Any], ...]  # the claims verified, as given (kind, repeatability, within_lab, measurand)
    summary: StudySummary


@dataclass(frozen=True, kw_only=True)
class FlagAcceptance:
    """Acceptance of a flag-agreement study (protocol ``flag_acceptance``): every flag's PPA and NPA,
    judged on the point estimate or on the lower bound of its Wilson interval, must reach these."""

    min_ppa: float
    min_npa: float
    basis: Literal["point_estimate", "lower_bound"] = "point_estimate"


@dataclass(frozen=True, kw_only=True)
class QualitativeRecord(RunRecord):
    """run.json of `wbcv qualitative --out` (CLSI EP12-A2 flag agreement); its result is result.json."""

    kind: Literal["qualitative"] = "qualitative"
    input: StudyInput
    confidence: float
    summary: StudySummary
    # recorded since 2026-12-01 when `--protocol` is given: the protocol and its flag_acceptance; None before
    protocol: ProtocolInput | None = None
    acceptance: FlagAcceptance | None = None


AnyRecord = InferenceRecord | ComparisonRecord | ResultsRecord | PrecisionRecord | QualitativeRecord
RECORD_TYPES: Final[dict[str, type[AnyRecord]]] = {
    "inference": InferenceRecord,
    "comparison": ComparisonRecord,
    "results": ResultsRecord,
    "precision": PrecisionRecord,
    "qualitative": QualitativeRecord,
}


# --- JSON --------------------------------------------------------------------------------------


def to_json(obj: Any) -> Any:
    """A record (or any part of one) as plain JSON values: dataclasses by field, tuples as lists,
    paths as text."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    raise TypeError(f"{type(obj).__name__} has no place in a run record")


def parse_record(document: Any, source: str) -> AnyRecord:
    """A run.json document as its typed record; ``source`` names the file in the error."""
    try:
        if not isinstance(document, dict):
            raise _Invalid("", document, "a mapping (a JSON object)")
        if document.get("format") != RUN_FORMAT:
            raise _Invalid("format", document.get("format"), repr(RUN_FORMAT), missing="format" not in document)
        kind = document.get("kind")
        cls = RECORD_TYPES.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise _Invalid("kind", kind, " or ".join(map(repr, RECORD_TYPES)), missing="kind" not in document)
        return _convert(cls, document, "")
    except _Invalid as e:
        raise WbcvError(f"{source}: {e}") from None


class _Invalid(Exception):
    def __init__(self, where: str, value: Any, expected: str, missing: bool = False) -> None:
        if not where:
            what = f"the record is {_show(value)}"
        elif missing:
            what = f"field '{where}' missing"
        else:
            what = f"field '{where}' is {_show(value)}"
        super().__init__(f"{what}; expected {expected}")


def _show(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_record_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=True)


@cache
def _required(cls: type) -> frozenset[str]:
    return frozenset(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )


def _convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) as type ``tp``, or ``_Invalid`` naming ``where``."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        out = _convert(args[0], value, where)
        for meta in args[1:]:
            if isinstance(meta, Pattern) and not re.fullmatch(meta.regex, out):
                raise _Invalid(where, value, meta.expected)
        return out
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        return _union(tp, value, where)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
    elif _is_record_type(tp):
        if isinstance(value, dict):
            return _dataclass(tp, value, where)
    elif origin in (list, tuple):
        if isinstance(value, list):
            return origin(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    elif origin is dict:
        if isinstance(value, dict):
            return {k: _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    elif _scalar_ok(tp, value):
        return tp(value) if tp in (float, Path) else value
    raise _Invalid(where, value, _describe(tp))


def _scalar_ok(tp: Any, value: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp in (str, Path):
        return isinstance(value, str)
    if tp is type(None):
        return value is None
    raise TypeError(f"run records have no fields of type {tp!r}")


def _dataclass(cls: type, value: dict[str, Any], where: str) -> Any:
    hints = _hints(cls)
    given: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        path = f"{where}.{f.name}" if where else f.name
        if f.name in value:
            given[f.name] = _convert(hints[f.name], value[f.name], path)
        elif f.name in _required(cls):
            raise _Invalid(path, None, _describe(hints[f.name]), missing=True)
    return cls(**given)


def _union(tp: Any, value: Any, where: str) -> Any:
    members = [a for a in get_args(tp) if a is not type(None)]
    if value is None and len(members) < len(get_args(tp)):
        return None
    classes = [a for a in members if _is_record_type(a)]
    if classes and isinstance(value, dict):
        return _dataclass(_pick(classes, value), value, where)
    for member in members:
        try:
            return _convert(member, value, where)
        except _Invalid:
            continue
    raise _Invalid(where, value, _describe(tp))


def _pick(classes: list[Any], value: dict[str, Any]) -> Any:
    """The member a mapping is: the first whose required fields are all there, unless the mapping
    has a field that only one member knows (then that member, so that its missing fields are named)."""
    names = [{f.name for f in dataclasses.fields(c)} for c in classes]
    for i, cls in enumerate(classes):
        if _required(cls) <= value.keys():
            return cls
        if value.keys() & (names[i] - set().union(*(n for j, n in enumerate(names) if j != i))):
            return cls
    return classes[0]


def _describe(tp: Any) -> str:
    """What a value of type ``tp`` looks like, for an error message."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        patterns = [m for m in args[1:] if isinstance(m, Pattern)]
        return patterns[0].expected if patterns else _describe(args[0])
    if origin is Union or origin is types.UnionType:
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (list, tuple):
        return f"a list (each item {_describe(args[0])})"
    if origin is dict:
        return f"a mapping (each value {_describe(args[1])})"
    if _is_record_type(tp):
        return f"a mapping with {', '.join(sorted(_required(tp)))}"
    simple = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", Path: "a path"}
    return simple.get(tp, "null" if tp is type(None) else "any value")
