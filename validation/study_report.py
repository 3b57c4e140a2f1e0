"""The report of a precision or qualitative study run: ``RUN/report/report.html``, ``report.pdf``, ``manifest.json``.

The same layout and sealing as a comparison's report (``wbcv.validation.report.seal_report``), so
`wbcv verify RUN` checks it the same way. A report of its own rather than a section of the
comparison's report: a study is made once for an analyzer, a comparison many times, and each is
signed when it is done. Everything shown comes from the sealed run (run.json, result.json,
excluded.parquet), checked intact first; no clock, no random ids: the same run gives the same HTML.

`wbcv report RUN` dispatches here by the run's kind (``write_run_report``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import polars as pl

from wbcv.base.records import PrecisionRecord, QualitativeRecord
from wbcv.base.runstore import read_run_record
from wbcv.validation.integrity import require_intact
from wbcv.validation.report import (
    MAX_LISTED_ROWS,
    REPORT_FORMAT,
    SIGNATURE_ROLES,
    RenderedReport,
    ReportResult,
    Signatory,
    fmt,
    seal_report,
    template_environment,
    write_report,
)
from wbcv.validation.study_run import STUDY_EXCLUDED_FILE, StudyRun, load_study, study_result

TITLES: Final[dict[str, str]] = {
    "precision": "Precision study (CLSI EP05-A3 / EP15-A3)",
    "qualitative": "Flag agreement study (CLSI EP12-A2)",
}


def document_id(record_sha256: str) -> str:
    """Names the report; it changes whenever anything in the run record changes."""
    return f"WBCV-SR-{record_sha256[:12].upper()}"


def _ci(low: float | None, high: float | None, digits: int = 3) -> str:
    return "–" if low is None or high is None else f"{fmt(low, digits)} to {fmt(high, digits)}"


def _pct_ci(pair: Sequence[float] | None) -> str:
    return "–" if not pair else f"{100 * pair[0]:.1f} to {100 * pair[1]:.1f} %"


def fixed(value: float | None, decimals: int) -> str:
    """A number with a fixed count of decimals (CV %, degrees of freedom: 117.85, 23.8, never 1.2e+02)."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{decimals}f}".replace("-", "−")


def design_text(days: int, runs: int, n: int, balanced: bool) -> str:
    """'5 days × 5 replicates (one run a day: EP15-A3)' or '20 days × 2 runs × 2 replicates (EP05-A3)'."""
    if not balanced:
        return f"{days} days, {runs} runs in all, {n} results (unbalanced)"
    if runs == days:
        return f"{days} days × {n // days} replicates (one run a day: the EP15-A3 design)"
    return f"{days} days × {runs // days} runs × {n // runs} replicates (the EP05-A3 design)"


def precision_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per (sample, measurand) group: its design and a row per variance component."""
    out = []
    for g in result["groups"]:
        entry: dict[str, Any] = {
            "sample": g["sample"],
            "measurand": g["measurand"],
            "n": g["n"],
            "problem": g["problem"],
        }
        if g["problem"] is None:
            entry["mean"] = fmt(g["mean"])
            entry["design"] = design_text(g["design"]["days"], g["design"]["runs"], g["n"], g["balanced"])
            entry["components"] = [
                (
                    c["name"],
                    fmt(c["sd"]),
                    fixed(c["cv_pct"], 2),
                    fixed(c["df"], 1),
                    _ci(c["sd_lower"], c["sd_upper"]),
                    "negative estimate set to 0" if c["raw_variance"] < 0 else "",
                )
                for c in g["components"]
            ]
        floor = g["binomial_floor_sd"]
        entry["floor"] = None if floor is None else f"SD {fmt(floor)} for {g['n_cells']} cells per result"
        entry["claims"] = [
            (
                v["component"],
                fmt(v["observed"]),
                fmt(v["claim"]),
                fmt(v["uvl"]),
                {True: "verified", False: "NOT verified", None: "undefined"}[v["verified"]],
                v["reason"],
            )
            for v in g["verifications"]
        ]
        out.append(entry)
    return out


def kappa_text(flag: dict[str, Any]) -> str:
    """Cohen's kappa of a flag's 2×2 table with its interval; runs sealed before kappa existed say so."""
    if "kappa" not in flag:
        return "not computed (run sealed before kappa was added)"
    if flag["kappa"] is None:
        return "undefined (every sample has the same finding on both sides)"
    ci = flag.get("kappa_ci")
    return f"{flag['kappa']:.3f}" + ("" if not ci else f" (Wald CI {ci[0]:.3f} to {ci[1]:.3f})")


def qualitative_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per flag: the 2×2 table and PPA, NPA, OPA with both intervals (None: undefined)."""
    out = []
    verdicts = {v["flag"]: v for v in result.get("verdicts", [])}  # runs before flag_acceptance: none
    for f in result["flags"]:
        props = []
        for name in ("ppa", "npa", "opa"):
            p = f[name]
            estimate = (
                "undefined (no sample in this margin)" if p["estimate"] is None else f"{100 * p['estimate']:.1f} %"
            )
            props.append(
                (name.upper(), f"{p['k']}/{p['n']}", estimate, _pct_ci(p["wilson"]), _pct_ci(p["clopper_pearson"]))
            )
        cells = (f["true_positive"], f["false_positive"], f["false_negative"], f["true_negative"])
        out.append(
            {
                "flag": f["flag"],
                "n": f["n"],
                "cells": cells,
                "proportions": props,
                "kappa": kappa_text(f),
                "verdict": verdicts.get(f["flag"]),
            }
        )
    return out


def render_study_html(run: StudyRun, record_sha256: str, signatories: Sequence[Signatory] = ()) -> str:
    """The report as one self-contained HTML document (a pure function of the sealed run)."""
    result = study_result(run)
    excluded = pl.read_parquet(run.run_dir / STUDY_EXCLUDED_FILE)
    by_role = {s.role: s for s in signatories}
    record = run.record
    precision = isinstance(record, PrecisionRecord)
    return (
        template_environment()
        .get_template("study_report.html.j2")
        .render(
            document_id=document_id(record_sha256),
            title=TITLES[record.kind],
            record=record,
            record_sha256=record_sha256,
            software=record.software,
            confidence=f"{100 * record.confidence:g} %",
            groups=precision_rows(result) if precision else [],
            flags=[] if precision else qualitative_rows(result),
            overall=result.get("overall"),
            rules=result["rules"],
            excluded=excluded.head(MAX_LISTED_ROWS).rows(),
            excluded_more=max(0, excluded.height - MAX_LISTED_ROWS),
            signatures=[by_role.get(role, Signatory(role)) for role in SIGNATURE_ROLES],
            report_format=REPORT_FORMAT,
        )
    )


def write_study_report(
    run_dir: Path, signatories: Sequence[Signatory] = (), out_dir: Path | None = None
) -> ReportResult:
    """Check the study run intact, render its report and seal it (``seal_report``)."""
    from wbcv.validation.pdf import find_chromium

    find_chromium()
    run = load_study(run_dir)
    check = require_intact(run.run_dir, "a report would certify data that is not what was computed")
    doc = document_id(check.record_sha256)
    footer = f"{doc} · {TITLES[run.record.kind]}"
    rendered = RenderedReport(
        document_id=doc, run_id=run.record.run_id, record_sha256=check.record_sha256, footer=footer
    )
    return seal_report(
        run.run_dir, rendered, lambda: render_study_html(run, check.record_sha256, signatories), signatories, out_dir
    )


def write_run_report(run_dir: Path, signatories: Sequence[Signatory] = (), out_dir: Path | None = None) -> ReportResult:
    """`wbcv report RUN`: the report of a study run, or of a comparison run (``write_report``)."""
    if isinstance(read_run_record(Path(run_dir)), PrecisionRecord | QualitativeRecord):
        return write_study_report(run_dir, signatories, out_dir)
    return write_report(run_dir, signatories, out_dir)
