"""`wbcv file RUN... [--plan DIR] --out DIR`: the validation file, one document with a section per study.

A validation file for an analyzer holds several studies, each sealed and signed on its own when it is
done (the plan of `wbcv plan`, comparison runs of `wbcv compare`/`wbcv run`, precision and flag-agreement
runs of `wbcv precision`/`wbcv qualitative`, each with its own report). This document gathers them: a
summary table (one line per study with its outcome), then a section per study with its key results
(the verdict table of a comparison with the counting floor beside each coverage and the plan binding;
the variance components of a precision study with the binomial floor; the 2×2 agreement of each flag
with kappa), each naming the run, its run record's sha256 and its own sealed report (document id and
manifest sha256) where the full detail is. Every run is verified intact first (``require_intact``)
and the plan against its manifest (``read_plan``); an altered one is refused, naming it.

Written as ``validation_file.html``, ``validation_file.pdf`` (Chromium, as the reports) and
``manifest.json`` (sha256 of both and of every run record and report manifest it cites) into a new
folder, never over an existing one. The content is a pure function of the runs and the plan: no
clock, so the same runs give the same HTML.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from wbcv.base.atomic import atomic_write_bytes, sha256_file
from wbcv.base.errors import WbcvError
from wbcv.base.records import ComparisonRecord, PrecisionRecord, QualitativeRecord, to_json
from wbcv.base.runstore import RUN_RECORD, read_run_record, write_manifest
from wbcv.base.software import software_info
from wbcv.validation.integrity import require_intact

FILE_FORMAT: Final[str] = "wbcv-validation-file/1"
FILE_HTML: Final[str] = "validation_file.html"
FILE_PDF: Final[str] = "validation_file.pdf"
FILE_MANIFEST: Final[str] = "manifest.json"
REPORT_MANIFEST: Final[str] = "report/manifest.json"
MAX_RUNS: Final[int] = 50  # a validation file of more studies is split (the document stays printable)
KIND_ORDER: Final[dict[str, int]] = {"comparison": 0, "precision": 1, "qualitative": 2}
PURPOSE: Final[str] = "a validation file would cite results that are not what was computed"


@dataclass(frozen=True)
class Section:
    """One study of the file: what the summary table and its section show."""

    kind: str  # "comparison", "precision", "qualitative"
    title: str
    run_id: str
    run_dir: Path
    record_sha256: str
    outcome: str  # "PASS", "FAIL", or words for a study without an acceptance rule
    passed: bool | None
    report: dict[str, str] | None  # document_id, manifest sha256; None: the run has no report yet
    body: dict[str, Any] = field(default_factory=dict)


def _report_of(run_dir: Path) -> dict[str, str] | None:
    path = run_dir / REPORT_MANIFEST
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WbcvError(f"{path}: not a report manifest ({e}); re-write the report with `wbcv report`") from None
    return {"document_id": str(doc.get("document_id", "?")), "manifest_sha256": sha256_file(path)}


def _plan_binding(record: ComparisonRecord, plan_sha: str | None) -> str:
    plan = record.inputs.plan
    if plan is None:
        return "made without a plan (no `--plan`)" if plan_sha else "no plan recorded"
    which = "this file's plan" if plan.manifest_sha256 == plan_sha else f"another plan ({plan.manifest_sha256[:12]}…)"
    if plan.changed_fields:
        return f"made under {which}; WARNING: the protocol differs in {len(plan.changed_fields)} field(s)"
    if plan.changed_fields is None and plan.protocol_sha256 != record.inputs.protocol.sha256:
        return f"made under {which}; the protocol file differs from the plan's (fields not compared)"
    return f"made under {which}; criteria as planned"


def _comparison(run_dir: Path, record: ComparisonRecord, plan_sha: str | None) -> Section:
    import polars as pl

    from wbcv.base.tables import COMPARISON_FILE
    from wbcv.validation.report import achieved_strata

    verdict = json.loads((run_dir / "verdict.json").read_text(encoding="utf-8"))
    strata = achieved_strata(run_dir, record, pl.read_parquet(run_dir / COMPARISON_FILE))
    rows = [
        {
            "measurand": m["measurand"],
            "n": m["n"],
            "within": m["n_within"],
            "coverage": f"{100 * m['coverage']:.1f} %" if m["coverage"] is not None else "–",
            "ci": "–"
            if m["coverage_lower"] is None
            else f"{100 * m['coverage_lower']:.1f}–{100 * m['coverage_upper']:.1f} %",
            "floor": "–" if m.get("sampling_floor") is None else f"{100 * m['sampling_floor']:.1f} %",
            "required": f"{100 * m['required_coverage']:.0f} %",
            "passed": m["passed"],
        }
        for m in verdict["measurands"]
    ]
    passed = verdict["overall"] == "pass"
    plan = record.inputs.plan
    body = {
        "protocol": f"{record.protocol.id}, version {record.protocol.version}",
        "producer": record.inputs.inference_run.producer,
        "samples": record.summary.n_samples_run,
        "exclusions": record.summary.exclusions_text,
        "rows": rows,
        "plan_binding": _plan_binding(record, plan_sha),
        "changed_fields": list(plan.changed_fields or ()) if plan is not None else [],
        "strata": None
        if strata is None
        else [{"name": x.name, "achieved": x.achieved, "planned": x.planned, "met": x.met} for x in strata],
        "floor_note": any(r["floor"] != "–" and not r["passed"] for r in rows),
    }
    title = record.protocol.title or f"Method comparison ({record.protocol.id})"
    return Section(
        "comparison",
        title,
        record.run_id,
        run_dir,
        sha256_file(run_dir / RUN_RECORD),
        "PASS" if passed else "FAIL",
        passed,
        _report_of(run_dir),
        body,
    )


def _study(run_dir: Path, record: PrecisionRecord | QualitativeRecord) -> Section:
    from wbcv.validation.study_report import TITLES, precision_rows, qualitative_rows
    from wbcv.validation.study_run import load_study, study_result

    result = study_result(load_study(run_dir))
    if isinstance(record, PrecisionRecord):
        groups = precision_rows(result)
        verdicts = [c[4] for g in groups for c in g.get("claims", [])]
        if not verdicts:
            outcome, passed = "estimated (no claim given to verify)", None
        else:
            passed = all(v == "verified" for v in verdicts)
            outcome = "claims verified" if passed else "a claim NOT verified"
        body: dict[str, Any] = {"groups": groups}
    else:
        flags = qualitative_rows(result)
        overall = result.get("overall")
        if overall is None:
            outcome, passed = f"{len(flags)} flag(s): agreement estimated (no acceptance limit given)", None
        else:
            passed = overall == "pass"
            failed = sum(1 for f in flags if f["verdict"] is not None and not f["verdict"]["passed"])
            outcome = "PASS" if passed else f"FAIL ({failed} of {len(flags)} flags)"
        body = {"flags": flags}
    return Section(
        record.kind,
        TITLES[record.kind],
        record.run_id,
        run_dir,
        sha256_file(run_dir / RUN_RECORD),
        outcome,
        passed,
        _report_of(run_dir),
        body,
    )


def study_section(run_dir: Path, plan_sha: str | None) -> Section:
    """The section of one sealed run, verified intact first (refused, naming what changed, when altered)."""
    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    if not isinstance(record, ComparisonRecord | PrecisionRecord | QualitativeRecord):
        raise WbcvError(
            f"{run_dir}: this is a {record.kind} run; a validation file gathers comparison, precision and "
            "qualitative runs (an inference run enters through its comparison)"
        )
    require_intact(run_dir, PURPOSE)
    if isinstance(record, ComparisonRecord):
        return _comparison(run_dir, record, plan_sha)
    return _study(run_dir, record)


def plan_section(plan_dir: Path) -> dict[str, Any]:
    """The plan, checked against its manifest (``wbcv.validation.plan.read_plan``)."""
    from wbcv.validation.plan import PLAN_JSON, read_plan

    check = read_plan(plan_dir)
    doc = json.loads((Path(plan_dir) / PLAN_JSON).read_text(encoding="utf-8"))
    return {
        "dir": Path(plan_dir).name,
        "manifest_sha256": check.manifest_sha256,
        "protocol": doc.get("protocol", {}),
        "size": doc.get("sample_size", {}),
        "strata": check.strata,
    }


def gather(runs: Sequence[Path], plan_dir: Path | None) -> tuple[dict[str, Any] | None, list[Section]]:
    """The plan and the sections, comparisons first (in the order given), then precision, then flags."""
    if not runs:
        raise WbcvError("give at least one run (comparison, precision or qualitative) for the validation file")
    if len(runs) > MAX_RUNS:
        raise WbcvError(f"{len(runs)} runs given; a validation file gathers at most {MAX_RUNS}: split it")
    resolved = [Path(r).resolve() for r in runs]
    if len(set(resolved)) != len(resolved):
        raise WbcvError("a run is given twice; give each run once")
    plan = None if plan_dir is None else plan_section(Path(plan_dir))
    plan_sha = None if plan is None else plan["manifest_sha256"]
    sections = [study_section(Path(r), plan_sha) for r in runs]
    return plan, sorted(sections, key=lambda s: KIND_ORDER[s.kind])


def document_id(plan: dict[str, Any] | None, sections: Sequence[Section]) -> str:
    """Names the file; it changes whenever a cited run record or the plan changes."""
    import hashlib

    parts = [plan["manifest_sha256"] if plan else "", *(s.record_sha256 for s in sections)]
    return "WBCV-VF-" + hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12].upper()


def render_file_html(plan: dict[str, Any] | None, sections: Sequence[Section]) -> str:
    from wbcv.validation.report import SIGNATURE_ROLES, template_environment

    return (
        template_environment()
        .get_template("validation_file.html.j2")
        .render(
            document_id=document_id(plan, sections),
            plan=plan,
            sections=sections,
            file_format=FILE_FORMAT,
            software=to_json(software_info()),
            signatures=[{"role": role, "name": "", "function": ""} for role in SIGNATURE_ROLES],
        )
    )


def write_validation_file(runs: Sequence[Path], plan_dir: Path | None, out_dir: Path) -> Path:
    """Write the validation file into the new folder ``out_dir``; returns its manifest's path."""
    from wbcv.validation.pdf import find_chromium, html_to_pdf

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise WbcvError(f"{out_dir}: exists already; a validation file is written into a new folder, never over one")
    find_chromium()
    plan, sections = gather(runs, plan_dir)
    html = render_file_html(plan, sections)
    out_dir.mkdir(parents=True)
    atomic_write_bytes(out_dir / FILE_HTML, html.encode("utf-8"))
    html_to_pdf(out_dir / FILE_HTML, out_dir / FILE_PDF, f"{document_id(plan, sections)} · validation file")
    cited = {s.run_id: {"run_record_sha256": s.record_sha256, "report": s.report} for s in sections}
    write_manifest(
        out_dir,
        FILE_MANIFEST,
        {
            "format": FILE_FORMAT,
            "document_id": document_id(plan, sections),
            "plan_manifest_sha256": None if plan is None else plan["manifest_sha256"],
            "runs": cited,
        },
        (FILE_HTML, FILE_PDF),
    )
    return out_dir / FILE_MANIFEST
