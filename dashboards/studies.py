"""The precision and qualitative study runs of a runs folder, as lines of the dashboard's studies tab.

Each line holds the run, its input table and its main figures, taken from the run's result.json
after that file's sha256 is checked against run.json: an altered result shows as altered, never
with its figures. Precision: per sample and measurand the repeatability and within-laboratory
CV % (SD where the mean is 0) and each claim's outcome. Qualitative: per flag PPA, NPA and OPA with
their Wilson intervals ("undefined" for an empty margin).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from wbcv.base.atomic import sha256_file
from wbcv.base.records import PrecisionRecord, QualitativeRecord
from wbcv.validation.study_report import kappa_text
from wbcv.validation.study_run import RESULT_FILE

#: Figures listed per study run; a study with more groups says how many more there are.
MAX_FIGURES: Final[int] = 40


@dataclass(frozen=True)
class StudyLine:
    run_id: str
    kind: str  # precision or qualitative
    created_utc: str
    input_name: str
    n_rows: int
    n_rows_excluded: int
    figures: tuple[str, ...]  # one line per group (precision) or flag (qualitative)
    problem: str | None = None  # why no figures are shown (result.json altered or unreadable)


def _cv(component: dict[str, Any]) -> str:
    if component["cv_pct"] is not None:
        return f"CV {component['cv_pct']:.2f} %"
    return f"SD {component['sd']:.3g}"


def precision_figures(result: dict[str, Any]) -> list[str]:
    lines = []
    for g in result["groups"]:
        head = f"{g['sample']} {g['measurand']} (n={g['n']})"
        if g["problem"] is not None:
            lines.append(f"{head}: not analysed: {g['problem']}")
            continue
        parts = {c["name"]: c for c in g["components"]}
        text = (
            f"{head}: repeatability {_cv(parts['repeatability'])}, within-laboratory {_cv(parts['within-laboratory'])}"
        )
        verdicts = {True: "verified", False: "NOT verified", None: "undefined"}
        claims = [f"{v['component']} claim {verdicts[v['verified']]}" for v in g["verifications"]]
        lines.append(text + (f"; {', '.join(claims)}" if claims else ""))
    return lines


def _proportion(name: str, p: dict[str, Any]) -> str:
    if p["estimate"] is None:
        return f"{name} undefined ({p['k']}/{p['n']})"
    low, high = p["wilson"]
    return f"{name} {100 * p['estimate']:.1f} % ({100 * low:.1f}–{100 * high:.1f})"


def qualitative_figures(result: dict[str, Any]) -> list[str]:
    verdicts = {v["flag"]: v for v in result.get("verdicts", [])}  # judged against flag_acceptance, if given
    return [
        f"{f['flag']} (n={f['n']}): "
        + ", ".join(_proportion(n.upper(), f[n]) for n in ("ppa", "npa", "opa"))
        + f" · kappa {kappa_text(f)}"
        + f" · TP {f['true_positive']} FP {f['false_positive']} FN {f['false_negative']} TN {f['true_negative']}"
        + (
            f" · {'PASS' if verdicts[f['flag']]['passed'] else 'FAIL'}: {verdicts[f['flag']]['reason']}"
            if f["flag"] in verdicts
            else ""
        )
        for f in result["flags"]
    ]


def study_line(run_dir: Path, record: PrecisionRecord | QualitativeRecord) -> StudyLine:
    """The line of one study run (module docstring); the result is read only when its hash matches."""
    base = StudyLine(
        run_id=record.run_id,
        kind=record.kind,
        created_utc=record.created_utc,
        input_name=record.input.path.name,
        n_rows=record.summary.n_rows,
        n_rows_excluded=record.summary.n_rows_excluded,
        figures=(),
    )
    path = run_dir / RESULT_FILE
    if not path.is_file() or record.files.get(RESULT_FILE) != sha256_file(path):
        return dataclasses.replace(base, problem=f"{RESULT_FILE} is missing or differs from run.json: altered")
    result = json.loads(path.read_text(encoding="utf-8"))
    lines = precision_figures(result) if isinstance(record, PrecisionRecord) else qualitative_figures(result)
    if len(lines) > MAX_FIGURES:
        lines = [*lines[:MAX_FIGURES], f"… and {len(lines) - MAX_FIGURES} more in {RESULT_FILE}"]
    return dataclasses.replace(base, figures=tuple(lines))
