"""`wbcv qualitative`: a table of analyzer flags and reference findings → one 2×2 table per flag.

Input (CSV, validation/study_csv.py rules): columns ``sample_id``, ``flag``, ``analyzer``,
``reference``. A finding is positive (``1``, ``positive``, ``pos``, ``+``, ``yes``, ``y``, ``true``)
or negative (``0``, ``negative``, ``neg``, ``-``, ``no``, ``n``, ``false``), case-insensitive.
Rows excluded, each with its line and reason, and counted: a row that does not fit the header, an
empty sample or flag, a finding that is neither, a repeated (sample, flag).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from wbcv.base.errors import WbcvError, shown
from wbcv.base.records import FlagAcceptance
from wbcv.validation.qualitative import AgreementProportion, FlagAgreement, FlagVerdict, flag_agreement, flag_verdict
from wbcv.validation.study_csv import json_safe, read_study_csv

REQUIRED: Final[tuple[str, ...]] = ("sample_id", "flag", "analyzer", "reference")
POSITIVE: Final[frozenset[str]] = frozenset({"1", "positive", "pos", "+", "yes", "y", "true"})
NEGATIVE: Final[frozenset[str]] = frozenset({"0", "negative", "neg", "-", "no", "n", "false"})


@dataclass(frozen=True)
class Excluded:
    line: int
    reason: str


@dataclass(frozen=True)
class FlagReport:
    path: Path
    flags: tuple[FlagAgreement, ...]
    excluded: tuple[Excluded, ...]
    n_rows: int
    acceptance: FlagAcceptance | None = None  # the protocol's flag_acceptance, when one was given

    @property
    def verdicts(self) -> tuple[FlagVerdict, ...]:
        """Each flag judged against the acceptance; empty without one."""
        if self.acceptance is None:
            return ()
        return tuple(flag_verdict(f, self.acceptance) for f in self.flags)

    @property
    def passed(self) -> bool | None:
        """Every flag passes; None without an acceptance (the agreement is then only estimated)."""
        return None if self.acceptance is None else all(v.passed for v in self.verdicts)


def _finding(text: str) -> bool | None:
    t = text.strip().lower()
    return True if t in POSITIVE else False if t in NEGATIVE else None


def _abcd(counts: list[int]) -> tuple[int, int, int, int]:
    a, b, c, d = counts
    return a, b, c, d


def run_qualitative(path: Path | str, confidence: float = 0.95, acceptance: FlagAcceptance | None = None) -> FlagReport:
    path = Path(path)
    cells: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # a, b, c, d
    seen: dict[tuple[str, str], int] = {}
    excluded: list[Excluded] = []
    n_rows = 0
    for row in read_study_csv(path, "flag", REQUIRED):
        n_rows += 1
        if row.problem:
            excluded.append(Excluded(row.line, row.problem))
            continue
        c = row.cells
        test, ref = _finding(c["analyzer"]), _finding(c["reference"])
        key = (c["sample_id"], c["flag"])
        problem = next((f"empty {k}" for k in ("sample_id", "flag") if not c[k]), None)
        for col, v in (("analyzer", test), ("reference", ref)):
            if problem is None and v is None:
                problem = f"{col} {shown(c[col])} is neither positive (1, pos, +, yes) nor negative (0, neg, -, no)"
        if problem is None and key in seen:
            problem = f"repeats sample {shown(key[0])} and flag {shown(key[1])} of line {seen[key]}"
        if problem:
            excluded.append(Excluded(row.line, problem))
            continue
        seen[key] = row.line
        cells[c["flag"]][(0 if ref else 1) if test else (2 if ref else 3)] += 1
    if not cells:
        raise WbcvError(
            f"{path}: no usable row ({len(excluded)} excluded); expected sample_id, flag, analyzer, reference"
        )
    flags = tuple(flag_agreement(f, *_abcd(cells[f]), confidence=confidence) for f in sorted(cells))
    return FlagReport(path, flags, tuple(excluded), n_rows, acceptance)


def _pct(p: AgreementProportion) -> str:
    if p.estimate is None or p.wilson is None or p.clopper_pearson is None:
        return f"{p.k}/{p.n} undefined (no sample in this margin)"
    w, e = p.wilson, p.clopper_pearson
    return (
        f"{p.k}/{p.n} = {100 * p.estimate:.1f} % (Wilson {100 * w[0]:.1f}–{100 * w[1]:.1f}, "
        f"exact {100 * e[0]:.1f}–{100 * e[1]:.1f})"
    )


def _kappa(f: FlagAgreement) -> str:
    if f.kappa is None:
        return "undefined (every sample has one finding on both sides)"
    ci = "" if f.kappa_ci is None else f" ({f.kappa_ci[0]:.3f} to {f.kappa_ci[1]:.3f})"
    return f"{f.kappa:.3f}{ci}"


def format_report(report: FlagReport) -> str:
    lines = [f"flag agreement {report.path}: {report.n_rows} rows, {len(report.excluded)} excluded"]
    for f in report.flags:
        pct = round(f.confidence * 100)
        lines.append(
            f"{f.flag}: n={f.n}  TP {f.true_positive}  FP {f.false_positive}  FN {f.false_negative}  "
            f"TN {f.true_negative}  ({pct}% CIs)"
        )
        lines += [f"  PPA {_pct(f.ppa)}", f"  NPA {_pct(f.npa)}", f"  OPA {_pct(f.opa)}", f"  kappa {_kappa(f)}"]
    for v in report.verdicts:
        lines.append(f"{v.flag}: {'PASS' if v.passed else 'FAIL'}: {v.reason}")
    if report.passed is not None:
        lines.append(f"OVERALL: {'PASS' if report.passed else 'FAIL'} (flag_acceptance of the protocol)")
    for e in report.excluded[:50]:
        lines.append(f"excluded line {e.line}: {e.reason}")
    if len(report.excluded) > 50:
        lines.append(f"… and {len(report.excluded) - 50} more excluded rows (all listed in --json)")
    return "\n".join(lines)


def report_payload(report: FlagReport) -> dict[str, Any]:
    return json_safe(
        {
            "file": str(report.path),
            "rows": report.n_rows,
            "excluded": [asdict(e) for e in report.excluded],
            "flags": [{**asdict(f), "n": f.n} for f in report.flags],
            "acceptance": None if report.acceptance is None else asdict(report.acceptance),
            "verdicts": [asdict(v) for v in report.verdicts],
            "overall": None if report.passed is None else ("pass" if report.passed else "fail"),
            "rules": {
                "empty_margin": "undefined: estimate and intervals null",
                "interval": "Wilson score; Clopper-Pearson",
                "kappa": "Cohen 1960 on the 2x2 table; Wald interval with the Fleiss-Cohen-Everitt 1969 SE; "
                "null when undefined",
            },
        }
    )
