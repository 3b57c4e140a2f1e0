"""The validation protocol (YAML): what is compared, how, and what counts as acceptance.

Example (every key that exists; ``wbcv`` refuses unknown keys and suggests the closest one)::

    protocol: {id: WBC-DIFF-VAL-001, version: "1.0", title: Differential vs Sysmex XN}
    study: {id: STUDY-7, site: Core lab, reference_analyzer: Sysmex XN-1000, description: ...}
    count_mode: relative            # relative | volumetric (see wbcv.validation.compare)
    measurands:
      NEUT#: {allowable_error_pct: 10, absolute_limit: 0.2}   # absolute limit: 10^3/uL, optional
      LYMPH#: {allowable_error_pct: 10}
      NEUT%: {allowable_error_pct: 10, absolute_limit: 2.0}   # absolute limit: percentage points
    acceptance:
      required_coverage: 0.95       # fraction of samples within the allowable error
      basis: point_estimate         # point_estimate | lower_bound (Clopper-Pearson)
      confidence: 0.95
    exclusions:
      flags: any                    # any | none | [list of flag column names]
      marks: ["*", "@"]             # exclude a value carrying any of these marks
      min_cells: 100                # slides with fewer classified cells are excluded
      min_reference: {}             # per measurand: exclude reference values below this
    class_mapping:
      immature_granulocytes: separate   # separate | with_neutrophils (reference NEUT += IG)
    rerun_rule: last                # last | first | reject
    decision_levels: {NEUT#: [1.5, 7.0]}
    require_in_domain: false        # true: a batch not shown inside the model's operating domain fails
    results_import:                 # optional: for analyzer exports (wbcv.validation.results.mapping)
      classes: {Band neutrophil: neutrophil, Giant platelet: {excluded: not a white cell}}
      codes: {LOC-SMU: Smudge}      # HL7 OBX-3 / ASTM R-3 code -> export class name
      analyzer: {make: Sysmex, model: DI-60, software_version: "1.2", serial: "A1234"}
    # EP09c additions (wbcv.validation.comparison_outliers, bias_range, regression_acceptance, plan):
    #   measurands.<M>.regression: {slope: [0.8, 1.2], intercept_abs: 0.5}   # Passing-Bablok criterion
    #   acceptance.regression_basis: point_estimate   # point_estimate | ci (the whole CI within the limits)
    outliers: {method: esd, alpha: 0.05, max_share: 0.05, differences: absolute, verdict: with}
    bias_intervals: {NEUT#: [2.0, 7.5]}   # cut points of the reference value; default: tertiles
    difference_plot: {limits: constant}   # constant | regression (Bland & Altman 1999 §3.2)
    plan: {strata: {normal: 40, leukopenic: 20, abnormal: 20}, expected_coverage: 0.99}   # wbcv plan
    flag_acceptance: {min_ppa: 0.8, min_npa: 0.9, basis: point_estimate}   # wbcv qualitative --protocol

The file is read by ``wbcv.base.yamlfile`` (the one YAML reader: size and alias-expansion caps,
duplicate keys refused, YAML 1.2 scalars). Ids, versions, titles, the study's entries, flag and
mark names are text as written (``version: 1.10`` is ``'1.10'``, ``id: 010`` is ``'010'``); a list or
mapping there is an error. Every problem names the file and the key path.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Final

import numpy as np

from wbcv.base.errors import WbcvError, clipped, listing, shown, suggest
from wbcv.base.records import FlagAcceptance, MeasurandRule, OutlierRule, ProtocolRecord, RegressionCriterion
from wbcv.base.yamlfile import number_hint, read_yaml
from wbcv.validation.measurands import MEASURANDS
from wbcv.validation.reference import MARKS
from wbcv.validation.results.mapping import ANALYZER_KEYS, check_section

TOP_KEYS: Final[tuple[str, ...]] = (
    "protocol",
    "study",
    "count_mode",
    "measurands",
    "acceptance",
    "exclusions",
    "class_mapping",
    "rerun_rule",
    "decision_levels",
    "require_in_domain",
    "results_import",
    "outliers",
    "bias_intervals",
    "difference_plot",
    "plan",
    "flag_acceptance",
)
PROTOCOL_KEYS: Final[tuple[str, ...]] = ("id", "version", "title")
STUDY_KEYS: Final[tuple[str, ...]] = ("id", "site", "reference_analyzer", "description", "investigator")
MEASURAND_KEYS: Final[tuple[str, ...]] = ("allowable_error_pct", "absolute_limit", "regression")
ACCEPTANCE_KEYS: Final[tuple[str, ...]] = ("required_coverage", "basis", "confidence", "regression_basis")
REGRESSION_KEYS: Final[tuple[str, ...]] = ("slope", "intercept_abs")
OUTLIER_KEYS: Final[tuple[str, ...]] = ("method", "alpha", "max_share", "differences", "verdict")
DIFFERENCE_PLOT_KEYS: Final[tuple[str, ...]] = ("limits",)
PLAN_KEYS: Final[tuple[str, ...]] = ("strata", "expected_coverage")
FLAG_ACCEPTANCE_KEYS: Final[tuple[str, ...]] = ("min_ppa", "min_npa", "basis")
EXCLUSION_KEYS: Final[tuple[str, ...]] = ("flags", "marks", "min_cells", "min_reference")
CLASS_MAPPING_KEYS: Final[tuple[str, ...]] = ("immature_granulocytes",)
#: Keys whose values are text as written, never numbers, booleans or dates (wbcv.base.yamlfile).
TEXT_KEYS: Final[frozenset[str]] = frozenset({*PROTOCOL_KEYS, *STUDY_KEYS, "flags", "marks", *ANALYZER_KEYS})


# Allowance (percentage points) of the within-limit decision at the boundary: an error equal to the
# limit in decimal arithmetic can come out one rounding above it in floating point.
LIMIT_TOLERANCE_PCT: Final[float] = 1e-12


def effective_limit_pct(rule: MeasurandRule, reference: float | np.ndarray) -> np.ndarray:
    """The effective relative limit (%) of a measurand at a reference value: max(L, 100 · A / reference).

    L = ``rule.allowable_error_pct``, A = ``rule.absolute_limit``: a value is within limits when
    |test − reference| <= max(L/100 · reference, A), i.e. when |error %| is at most this. L alone
    without an absolute limit; +inf at a reference <= 0 with one (the absolute limit is then the
    only criterion: the relative error is undefined at 0). The one definition used by the
    comparison (``wbcv.validation.compare``) and the verification plot's limit lines
    (``wbcv.validation.figures``).
    """
    ref = np.asarray(reference, dtype=float)
    if rule.absolute_limit is None:
        return np.full(ref.shape, float(rule.allowable_error_pct))
    with np.errstate(divide="ignore"):
        absolute_pct = np.where(ref > 0, 100.0 * rule.absolute_limit / np.where(ref > 0, ref, 1.0), np.inf)
    return np.maximum(rule.allowable_error_pct, absolute_pct)


def within_limit(rule: MeasurandRule, error_pct: float | np.ndarray, reference: float | np.ndarray) -> np.ndarray:
    """Whether an error (%) at a reference value is within limits: |error %| <= the effective limit
    (:func:`effective_limit_pct`; boundary included, with 1e-12 percentage points for rounding)."""
    return np.abs(np.asarray(error_pct, dtype=float)) <= effective_limit_pct(rule, reference) + LIMIT_TOLERANCE_PCT


@dataclass(frozen=True, kw_only=True)
class Protocol(ProtocolRecord):
    """A loaded protocol: the fields a comparison run records (``ProtocolRecord``, one definition
    for both) and the file it came from."""

    path: Path
    #: the ``results_import`` section as written (checked by ``wbcv.validation.results.mapping``);
    #: recorded by a results run, not by the comparison
    results_import: dict[str, Any] | None = None
    #: the acceptance of a flag-agreement study (`wbcv qualitative --protocol`); recorded by that run,
    #: not by a comparison
    flag_acceptance: FlagAcceptance | None = None

    def as_record(self) -> ProtocolRecord:
        """The protocol as a comparison run records it: every field but the path."""
        return ProtocolRecord(**{f.name: getattr(self, f.name) for f in fields(ProtocolRecord)})


class _Checker:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[str] = []
        self._keys_listed: set[str] = set()  # sections whose valid keys a message already listed

    def fail(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path}: {key}: {message}")

    def keys(self, where: str, mapping: dict[str, Any], allowed: tuple[str, ...]) -> None:
        for k in mapping:
            if k not in allowed:
                hint = suggest(str(k), allowed)
                valid = "as listed above" if where in self._keys_listed else ", ".join(allowed)
                self._keys_listed.add(where)  # listed once: a thousand unknown keys stay a readable message
                self.fail(f"{where}{clipped(str(k))}", f"unknown key{hint}; valid keys here: {valid}")

    def mapping(self, key: str, value: Any, required: bool = False) -> dict[str, Any]:
        if value is None:
            if required:
                self.fail(key, "is required")
            return {}
        if not isinstance(value, dict):
            self.fail(key, f"must be a mapping, got {type(value).__name__}")
            return {}
        return value

    def number(self, key: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, f"must be a number, got {shown(value)}{number_hint(value)}")
            return None
        v = float(value)
        if not (low < v if low_open else low <= v) or v > high:
            interval = f"{'(' if low_open else '['}{low}, {high}]"
            self.fail(key, f"is {shown(value)}; expected a number in {interval}")
            return None
        return v

    def choice(self, key: str, value: Any, choices: tuple[str, ...], default: str) -> str:
        if value is None:
            return default
        if not isinstance(value, str) or value not in choices:
            self.fail(key, f"is {shown(value)}; expected one of {', '.join(choices)}")
            return default
        return str(value)

    def measurand_name(self, key: str, name: Any) -> bool:
        if name not in MEASURANDS:
            hint = suggest(str(name), MEASURANDS, cutoff=0.5)
            self.fail(key, f"unknown measurand {shown(name)}{hint}; expected some of {', '.join(MEASURANDS)}")
            return False
        return True

    def text(self, key: str, value: Any, required: bool = False) -> str | None:
        """A text field (id, title ...): text as written; a list or mapping is an error."""
        if value is None:
            if required:
                self.fail(key, "is required (text)")
            return None
        if not isinstance(value, str):
            self.fail(key, f"must be text, got a {type(value).__name__} {shown(value)}")
            return None
        return value


def load_protocol(path: Path | str) -> Protocol:
    """Read and check a protocol file; raises one WbcvError listing every problem."""
    path = Path(path)
    doc = read_yaml(path, "protocol", text_keys=TEXT_KEYS)
    if not isinstance(doc, dict):
        raise WbcvError(f"{path}: a protocol is a YAML mapping with keys {', '.join(TOP_KEYS)}")
    c = _Checker(path)
    c.keys("", doc, TOP_KEYS)

    meta = c.mapping("protocol", doc.get("protocol"), required=True)
    c.keys("protocol.", meta, PROTOCOL_KEYS)
    meta_text = {
        k: c.text(f"protocol.{k}", meta.get(k), required="protocol" in doc and k != "title") for k in PROTOCOL_KEYS
    }
    study = c.mapping("study", doc.get("study"))
    c.keys("study.", study, STUDY_KEYS)
    study_text = {str(k): c.text(f"study.{k}", v) for k, v in study.items() if k in STUDY_KEYS}

    rules: dict[str, MeasurandRule] = {}
    ms = c.mapping("measurands", doc.get("measurands"), required=True)
    if "measurands" in doc and not ms:
        c.fail("measurands", "must name at least one measurand")
    for name, spec in ms.items():
        key = f"measurands.{clipped(str(name))}"
        if not c.measurand_name(key, name):
            continue
        spec = c.mapping(key, spec, required=True)
        c.keys(f"{key}.", spec, MEASURAND_KEYS)
        if "allowable_error_pct" not in spec:
            c.fail(f"{key}.allowable_error_pct", "is required")
            continue
        err = c.number(f"{key}.allowable_error_pct", spec["allowable_error_pct"], 0, 1000, low_open=True)
        absolute = spec.get("absolute_limit")
        abs_v = None if absolute is None else c.number(f"{key}.absolute_limit", absolute, 0, 1e6, low_open=True)
        criterion = _regression_criterion(c, f"{key}.regression", spec.get("regression"))
        if err is not None:
            rules[str(name)] = MeasurandRule(err, abs_v, criterion)

    acc = c.mapping("acceptance", doc.get("acceptance"))
    c.keys("acceptance.", acc, ACCEPTANCE_KEYS)
    required = c.number("acceptance.required_coverage", acc.get("required_coverage", 0.95), 0, 1, low_open=True)
    confidence = c.number("acceptance.confidence", acc.get("confidence", 0.95), 0.5, 0.9999)
    basis = c.choice("acceptance.basis", acc.get("basis"), ("point_estimate", "lower_bound"), "point_estimate")

    ex = c.mapping("exclusions", doc.get("exclusions"))
    c.keys("exclusions.", ex, EXCLUSION_KEYS)
    flags_raw = ex.get("flags", "any")
    flags: Any = "any"
    if flags_raw in ("any", "none"):
        flags = flags_raw
    elif isinstance(flags_raw, list) and all(isinstance(f, str) for f in flags_raw):
        flags = tuple(flags_raw)
    else:
        c.fail("exclusions.flags", f"is {shown(flags_raw)}; expected 'any', 'none' or a list of flag column names")
    marks_raw = ex.get("marks", ["*", "@"])
    if not isinstance(marks_raw, list) or any(not isinstance(m, str) or m not in MARKS for m in marks_raw):
        c.fail("exclusions.marks", f"is {shown(marks_raw)}; expected a list of marks among {', '.join(MARKS)}")
        marks_raw = []
    min_cells = ex.get("min_cells", 0)
    if isinstance(min_cells, bool) or not isinstance(min_cells, int) or min_cells < 0:
        c.fail("exclusions.min_cells", f"is {shown(min_cells)}; expected a whole number >= 0{number_hint(min_cells)}")
        min_cells = 0
    min_ref: dict[str, float] = {}
    for name, v in c.mapping("exclusions.min_reference", ex.get("min_reference")).items():
        if c.measurand_name(f"exclusions.min_reference.{clipped(str(name))}", name):
            x = c.number(f"exclusions.min_reference.{name}", v, 0, 1e6)
            if x is not None:
                min_ref[str(name)] = x

    cm = c.mapping("class_mapping", doc.get("class_mapping"))
    c.keys("class_mapping.", cm, CLASS_MAPPING_KEYS)
    ig = c.choice(
        "class_mapping.immature_granulocytes",
        cm.get("immature_granulocytes"),
        ("separate", "with_neutrophils"),
        "separate",
    )
    mode = c.choice("count_mode", doc.get("count_mode"), ("relative", "volumetric"), "relative")
    rerun = c.choice("rerun_rule", doc.get("rerun_rule"), ("last", "first", "reject"), "last")
    if mode == "relative" and "WBC" in rules:
        c.fail("measurands.WBC", "needs count_mode: volumetric (in relative mode the WBC total is the reference's)")

    levels: dict[str, tuple[float, ...]] = {}
    for name, v in c.mapping("decision_levels", doc.get("decision_levels")).items():
        if not c.measurand_name(f"decision_levels.{clipped(str(name))}", name):
            continue
        if not isinstance(v, list) or not v or any(isinstance(x, bool) or not isinstance(x, int | float) for x in v):
            c.fail(f"decision_levels.{name}", f"is {shown(v)}; expected a list of numbers")
            continue
        levels[str(name)] = tuple(float(x) for x in v)

    require_in_domain = doc.get("require_in_domain", False)
    if not isinstance(require_in_domain, bool):
        c.fail("require_in_domain", f"is {shown(require_in_domain)}; expected true or false")
        require_in_domain = False

    c.problems += [f"{path}: {p}" for p in check_section(doc.get("results_import"), "results_import.")]

    extras = _ep09_extras(c, doc, acc)
    flag_acceptance = _flag_acceptance(c, doc.get("flag_acceptance"))
    if c.problems:
        head = f"{path}: the protocol has {len(c.problems)} problem{'s' if len(c.problems) > 1 else ''}:"
        raise WbcvError("\n".join([head, *(f"  - {p}" for p in listing(c.problems))]))
    return Protocol(
        path=path,
        id=meta_text["id"] or "",
        version=meta_text["version"] or "",
        title=meta_text["title"] or "",
        study={k: v for k, v in study_text.items() if v is not None},
        count_mode=mode,  # type: ignore[arg-type]
        measurands=rules,
        required_coverage=required if required is not None else 0.95,
        basis=basis,  # type: ignore[arg-type]
        confidence=confidence if confidence is not None else 0.95,
        exclude_flags=flags,
        exclude_marks=tuple(marks_raw),
        min_cells=int(min_cells),
        min_reference=min_ref,
        immature_granulocytes=ig,  # type: ignore[arg-type]
        rerun_rule=rerun,  # type: ignore[arg-type]
        decision_levels=levels,
        require_in_domain=require_in_domain,
        results_import=doc.get("results_import"),
        flag_acceptance=flag_acceptance,
        **extras,
    )


def _flag_acceptance(c: _Checker, raw: Any) -> FlagAcceptance | None:
    """``flag_acceptance: {min_ppa: 0.8, min_npa: 0.9, basis: point_estimate | lower_bound}`` (both
    limits required, proportions in [0, 1]); None when the section is absent."""
    if raw is None:
        return None
    section = c.mapping("flag_acceptance", raw)
    c.keys("flag_acceptance.", section, FLAG_ACCEPTANCE_KEYS)
    limits = {}
    for key in ("min_ppa", "min_npa"):
        if key not in section:
            c.fail(f"flag_acceptance.{key}", "is required (a proportion in [0, 1], e.g. 0.9)")
            continue
        limits[key] = c.number(f"flag_acceptance.{key}", section[key], 0.0, 1.0)
    basis = c.choice("flag_acceptance.basis", section.get("basis"), ("point_estimate", "lower_bound"), "point_estimate")
    ppa, npa = limits.get("min_ppa"), limits.get("min_npa")
    if ppa is None or npa is None:
        return None
    return FlagAcceptance(min_ppa=ppa, min_npa=npa, basis=basis)  # type: ignore[arg-type]


def _regression_criterion(c: _Checker, key: str, value: Any) -> RegressionCriterion | None:
    """``regression: {slope: [low, high], intercept_abs: limit}`` of a measurand (either may be absent)."""
    if value is None:
        return None
    spec = c.mapping(key, value)
    c.keys(f"{key}.", spec, REGRESSION_KEYS)
    slope = spec.get("slope")
    pair: tuple[float, float] | None = None
    if slope is not None:
        ok = isinstance(slope, list) and len(slope) == 2
        ok = ok and all(not isinstance(v, bool) and isinstance(v, int | float) for v in slope) and slope[0] < slope[1]
        if ok:
            pair = (float(slope[0]), float(slope[1]))
        else:
            c.fail(f"{key}.slope", f"is {shown(slope)}; expected [low, high] with low < high, e.g. [0.8, 1.2]")
    limit = spec.get("intercept_abs")
    intercept = None if limit is None else c.number(f"{key}.intercept_abs", limit, 0, 1e6)
    if pair is None and intercept is None:
        if slope is None and limit is None:
            c.fail(key, "names no criterion; expected slope: [low, high] and/or intercept_abs: limit")
        return None
    return RegressionCriterion(pair, intercept)


def _ep09_extras(c: _Checker, doc: dict[str, Any], acc: dict[str, Any]) -> dict[str, Any]:
    """The method-comparison additions: outlier screening, bias intervals, difference-plot limits,
    the regression basis and the plan's case mix."""
    out_spec = c.mapping("outliers", doc.get("outliers"))
    c.keys("outliers.", out_spec, OUTLIER_KEYS)
    c.choice("outliers.method", out_spec.get("method"), ("esd",), "esd")
    alpha = c.number("outliers.alpha", out_spec.get("alpha", 0.05), 0, 0.5, low_open=True)
    share = c.number("outliers.max_share", out_spec.get("max_share", 0.05), 0, 0.49, low_open=True)
    outliers = OutlierRule(
        alpha=alpha if alpha is not None else 0.05,
        max_share=share if share is not None else 0.05,
        differences=c.choice("outliers.differences", out_spec.get("differences"), ("absolute", "relative"), "absolute"),  # type: ignore[arg-type]
        verdict=c.choice("outliers.verdict", out_spec.get("verdict"), ("with", "without"), "with"),  # type: ignore[arg-type]
    )
    intervals: dict[str, tuple[float, ...]] = {}
    for name, v in c.mapping("bias_intervals", doc.get("bias_intervals")).items():
        if not c.measurand_name(f"bias_intervals.{clipped(str(name))}", name):
            continue
        numbers = isinstance(v, list) and v and all(not isinstance(x, bool) and isinstance(x, int | float) for x in v)
        if not numbers or any(b <= a for a, b in itertools.pairwise(v)):
            c.fail(f"bias_intervals.{name}", f"is {shown(v)}; expected a list of increasing cut points, e.g. [2, 7.5]")
            continue
        intervals[str(name)] = tuple(float(x) for x in v)
    plot = c.mapping("difference_plot", doc.get("difference_plot"))
    c.keys("difference_plot.", plot, DIFFERENCE_PLOT_KEYS)
    plan = c.mapping("plan", doc.get("plan"))
    c.keys("plan.", plan, PLAN_KEYS)
    strata: dict[str, int] = {}
    for name, v in c.mapping("plan.strata", plan.get("strata")).items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            c.fail(f"plan.strata.{clipped(str(name))}", f"is {shown(v)}; expected a whole number >= 1{number_hint(v)}")
            continue
        strata[str(name)] = v
    expected = plan.get("expected_coverage")
    return {
        "outliers": outliers,
        "bias_intervals": intervals,
        "regression_basis": c.choice(
            "acceptance.regression_basis", acc.get("regression_basis"), ("point_estimate", "ci"), "point_estimate"
        ),
        "difference_limits": c.choice(
            "difference_plot.limits", plot.get("limits"), ("constant", "regression"), "constant"
        ),
        "plan_strata": strata,
        "plan_expected_coverage": None
        if expected is None
        else c.number("plan.expected_coverage", expected, 0, 1, low_open=True),
    }
