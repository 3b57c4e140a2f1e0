"""`wbcv precision`: a long table of replicate results → variance components per sample and measurand.

Input (CSV, validation/study_csv.py rules): columns ``sample_id`` (or ``level``), ``day``,
``replicate``, ``measurand``, ``value``; optional ``run`` (EP05-A3 design; left out or one run per
day: the EP15-A3 design) and ``n_cells`` (cells counted for that result, for the binomial floor of
a class percentage). Rows excluded, each with its line and reason, and counted: a row that does not
fit the header, an empty or non-numeric value, an empty day/replicate/measurand, an ``n_cells``
that is not a whole number ≥ 1, a repeated (sample, measurand, day, run, replicate). A group
(sample, measurand) whose design cannot be analysed (one day, no replicate) is reported with why.

Claims (EP15-A3 verification): SD or CV % claims for repeatability and within-laboratory
precision, for every measurand or one; ℓ in the UVL factor = the number of samples of that measurand.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from wbcv.base.errors import WbcvError, shown
from wbcv.validation.precision import (
    REPEATABILITY,
    WITHIN_LAB,
    ClaimVerification,
    PrecisionResult,
    binomial_floor_sd_pct,
    precision_study,
    verify_claim,
)
from wbcv.validation.study_csv import json_safe, read_study_csv

REQUIRED = ("day", "replicate", "measurand", "value")
OPTIONAL = ("sample_id", "level", "run", "n_cells")


@dataclass(frozen=True)
class Claim:
    """A maker's claim: repeatability and within-laboratory SD or CV %, for one measurand or all (None)."""

    kind: Literal["sd", "cv"]
    repeatability: float
    within_lab: float
    measurand: str | None = None


@dataclass(frozen=True)
class Excluded:
    line: int
    reason: str


@dataclass
class _Group:
    days: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    n_cells: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class GroupResult:
    sample: str
    measurand: str
    n: int
    result: PrecisionResult | None
    problem: str | None
    floor_sd: float | None  # binomial counting floor (percentage points), class percentages with n_cells
    n_cells: int | None
    verifications: tuple[ClaimVerification, ...]


@dataclass(frozen=True)
class PrecisionReport:
    path: Path
    groups: tuple[GroupResult, ...]
    excluded: tuple[Excluded, ...]
    n_rows: int


def _number(text: str) -> float | None:
    try:
        v = float(text.replace(",", ".")) if text.count(",") == 1 and "." not in text else float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _row_problem(cells: dict[str, str], sample_column: str) -> str | None:
    for col in (sample_column, "day", "replicate", "measurand"):
        if not cells.get(col):
            return f"empty {col}"
    if _number(cells["value"]) is None:
        return f"value {shown(cells['value'])} is not a number"
    n = cells.get("n_cells", "")
    if n and not (n.isdigit() and int(n) >= 1):
        return f"n_cells {shown(n)} is not a whole number ≥ 1"
    return None


def _read(path: Path) -> tuple[dict[tuple[str, str], _Group], list[Excluded], int]:
    groups: dict[tuple[str, str], _Group] = defaultdict(_Group)
    excluded: list[Excluded] = []
    seen: dict[tuple[str, ...], int] = {}
    n_rows = 0
    sample_column: str | None = None
    for row in read_study_csv(path, "precision", REQUIRED, OPTIONAL):
        n_rows += 1
        if row.problem:
            excluded.append(Excluded(row.line, row.problem))
            continue
        if sample_column is None:
            sample_column = _sample_column(path, row.cells)
        c = row.cells
        problem = _row_problem(c, sample_column)
        key = (c.get(sample_column, ""), c["measurand"], c["day"], c.get("run", ""), c["replicate"])
        if problem is None and key in seen:
            problem = f"repeats sample, measurand, day, run and replicate of line {seen[key]}"
        if problem:
            excluded.append(Excluded(row.line, problem))
            continue
        seen[key] = row.line
        g = groups[(key[0], key[1])]
        g.days.append(c["day"])
        g.runs.append(c.get("run", ""))
        g.values.append(_number(c["value"]) or 0.0)
        if c.get("n_cells"):
            g.n_cells.append(int(c["n_cells"]))
    return groups, excluded, n_rows


def _sample_column(path: Path, cells: dict[str, str]) -> str:
    if "sample_id" in cells and "level" in cells:
        raise WbcvError(f"{path} line 1: both 'sample_id' and 'level' columns; give one of them")
    if "sample_id" not in cells and "level" not in cells:
        raise WbcvError(f"{path} line 1: missing column sample_id (or level)")
    return "sample_id" if "sample_id" in cells else "level"


def _claims_for(measurand: str, claims: list[Claim]) -> list[Claim]:
    own = [c for c in claims if c.measurand == measurand]
    return own or [c for c in claims if c.measurand is None]


def _verify(result: PrecisionResult, claims: list[Claim], n_samples: int) -> tuple[ClaimVerification, ...]:
    out: list[ClaimVerification] = []
    for claim in claims:
        for comp, claimed in ((result.repeatability, claim.repeatability), (result.within_lab, claim.within_lab)):
            observed = comp.sd if claim.kind == "sd" else comp.cv_pct
            df = comp.df if comp.df is not None else math.nan
            out.append(verify_claim(f"{comp.name} {claim.kind.upper()}", observed, claimed, df, n_samples))
    return tuple(out)


def _floor(measurand: str, result: PrecisionResult, n_cells: list[int]) -> tuple[float | None, int | None]:
    if not measurand.endswith("%") or not n_cells:
        return None, None
    n = int(statistics.median_low(n_cells))
    return binomial_floor_sd_pct(result.mean, n), n


def run_precision(path: Path | str, claims: list[Claim] | None = None, confidence: float = 0.95) -> PrecisionReport:
    """Read the table and analyse every (sample, measurand) group (module docstring)."""
    path = Path(path)
    groups, excluded, n_rows = _read(path)
    if not groups:
        raise WbcvError(f"{path}: no usable row ({len(excluded)} excluded); expected replicate results")
    samples_per_measurand: dict[str, int] = defaultdict(int)
    for _, m in groups:
        samples_per_measurand[m] += 1
    out: list[GroupResult] = []
    for (sample, measurand), g in sorted(groups.items()):
        runs = g.runs if any(g.runs) else None
        try:
            result = precision_study(g.days, g.values, runs, confidence)
        except ValueError as e:
            out.append(GroupResult(sample, measurand, len(g.values), None, str(e), None, None, ()))
            continue
        floor, n = _floor(measurand, result, g.n_cells)
        checks = _verify(result, _claims_for(measurand, claims or []), samples_per_measurand[measurand])
        out.append(GroupResult(sample, measurand, len(g.values), result, None, floor, n, checks))
    return PrecisionReport(path, tuple(out), tuple(excluded), n_rows)


def report_payload(report: PrecisionReport) -> dict[str, Any]:
    """The report as plain data for ``--json`` (NaN → null)."""
    groups = []
    for g in report.groups:
        item: dict[str, Any] = {"sample": g.sample, "measurand": g.measurand, "n": g.n, "problem": g.problem}
        if g.result is not None:
            item["mean"] = g.result.mean
            item["balanced"] = g.result.anova.balanced
            item["design"] = {"days": g.result.anova.n_days, "runs": g.result.anova.n_runs}
            item["anova"] = asdict(g.result.anova)
            item["components"] = [asdict(c) for c in g.result.components]
            item["confidence"] = g.result.confidence
        item["binomial_floor_sd"] = g.floor_sd
        item["n_cells"] = g.n_cells
        item["verifications"] = [asdict(v) for v in g.verifications]
        groups.append(item)
    return json_safe(
        {
            "file": report.path,
            "rows": report.n_rows,
            "excluded": [asdict(e) for e in report.excluded],
            "groups": groups,
            "rules": {
                "negative_components": "set to 0, left out of the within-laboratory variance (EP05-A3)",
                "within_lab_df": "Satterthwaite on adapted mean squares D·VC⁺",
                "uvl": "F = sqrt(chi2(1 - alpha/l; df)/df), l = samples of the measurand (EP15-A3)",
            },
        }
    )


def _fmt(v: float | None, digits: int = 3) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def format_report(report: PrecisionReport) -> str:
    lines = [f"precision study {report.path}: {report.n_rows} rows, {len(report.excluded)} excluded"]
    for g in report.groups:
        head = f"{g.sample} {g.measurand} (n={g.n})"
        if g.result is None:
            lines.append(f"{head}: not analysed: {g.problem}")
            continue
        a = g.result.anova
        design = (
            f"{a.n_days} days × {a.n_runs // a.n_days if a.balanced else '~'} runs"
            if a.has_runs
            else f"{a.n_days} days"
        )
        lines.append(f"{head}: mean {_fmt(g.result.mean)}, {design}, {'balanced' if a.balanced else 'unbalanced'}")
        pct = round(g.result.confidence * 100)
        for c in g.result.components:
            ci = f"  {pct}% CI {_fmt(c.sd_lower)}–{_fmt(c.sd_upper)}" if c.sd_lower is not None else ""
            note = " (negative estimate set to 0)" if c.truncated else ""
            df = f"  df {_fmt(c.df, 1)}" if c.df is not None else ""
            lines.append(f"  {c.name:<18} SD {_fmt(c.sd)}  CV {_fmt(c.cv_pct, 2)} %{df}{ci}{note}")
        if g.floor_sd is not None:
            lines.append(
                f"  binomial floor ({g.n_cells} cells): SD {_fmt(g.floor_sd)} beside repeatability SD "
                f"{_fmt(g.result.repeatability.sd)}"
            )
        for v in g.verifications:
            verdict = {True: "verified", False: "NOT verified", None: "undefined"}[v.verified]
            lines.append(
                f"  claim {v.component}: observed {_fmt(v.observed)} vs claim {_fmt(v.claim)}, "
                f"UVL {_fmt(v.uvl)} (F {_fmt(v.factor)}, df {_fmt(v.df, 1)}): {verdict} ({v.reason})"
            )
    for e in report.excluded[:50]:
        lines.append(f"excluded line {e.line}: {e.reason}")
    if len(report.excluded) > 50:
        lines.append(f"… and {len(report.excluded) - 50} more excluded rows (all listed in --json)")
    return "\n".join(lines)


def parse_claim(text: str, kind: Literal["sd", "cv"]) -> Claim:
    """``[MEASURAND:]REPEATABILITY,WITHIN_LAB`` (e.g. ``NEUT%:2.5,3.5``) → Claim; a WbcvError otherwise."""
    measurand, _, numbers = text.rpartition(":")
    parts = [p.strip() for p in numbers.split(",")]
    values = [_number(p) for p in parts]
    if len(values) != 2 or any(v is None or v <= 0 for v in values):
        raise WbcvError(
            f"--claim-{kind} {shown(text)}: expected [MEASURAND:]REPEATABILITY,WITHIN_LAB with two numbers above 0, "
            "e.g. NEUT%:2.5,3.5"
        )
    r, w = values
    assert r is not None and w is not None
    return Claim(kind, r, w, measurand.strip() or None)


__all__ = [
    "REPEATABILITY",
    "WITHIN_LAB",
    "Claim",
    "PrecisionReport",
    "format_report",
    "parse_claim",
    "report_payload",
    "run_precision",
]
