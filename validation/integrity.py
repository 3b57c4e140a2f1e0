"""Tamper evidence for a whole run record: the run's files, its report and the run it was made from.

Three manifests, each hashing what it covers with sha256:

* ``RUN/run.json`` lists every data file of the run (``wbcv.base.runstore.verify_run``); the
  report prints run.json's own sha256 on its title page.
* ``RUN/report/manifest.json`` lists report.html and report.pdf and records run.json's sha256 at
  the time the report was written; `wbcv report` prints the manifest's own sha256.
* a comparison run's run.json records the sha256 of the inference run's run.json (the inputs
  manifest: every image's hash, the predictions, the counts), which is verified the same way;
  the inference run is looked for at its recorded path, then beside the comparison
  (``locate_source_run``: a runs folder moved whole).

Manifests are written and compared by ``wbcv.base.runstore`` (``write_manifest``,
``manifest_differences``), for the run and for its report alike.

``verify_record`` names every file that was changed, added or removed anywhere in that chain, and
every line edited or removed in the verification log beside the run whose cells were verified
(``wbcv.validation.verification_log``: the inference run itself, or the one a comparison used).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from wbcv.base.atomic import sha256_file
from wbcv.base.errors import WbcvError, listing
from wbcv.base.records import ComparisonRecord, RunRecord
from wbcv.base.runstore import RUN_RECORD, Verification, locate_source_run, manifest_differences, verify_run
from wbcv.validation.verification_log import LogCheck, check_log, head_path, log_path

# The report's layout inside a run; defined here (light imports) so `wbcv verify` starts fast.
REPORT_DIR: Final[str] = "report"
REPORT_HTML: Final[str] = "report.html"
REPORT_PDF: Final[str] = "report.pdf"
REPORT_MANIFEST: Final[str] = "manifest.json"
REPORT_FILES: Final[tuple[str, ...]] = (REPORT_HTML, REPORT_PDF)
REPORT_STAGING: Final[str] = ".report-staging"  # the report is written here, then renamed to REPORT_DIR


@dataclass(frozen=True)
class Finding:
    kind: str  # changed, added, missing, unreadable
    path: str  # relative to the run checked (or absolute for the linked run)
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class RecordVerification:
    run_dir: Path
    record_sha256: str
    report_manifest_sha256: str | None  # None when the run has no report
    linked_runs: tuple[Path, ...]  # runs this one was made from, verified too
    findings: tuple[Finding, ...]
    verification_logs: tuple[LogCheck, ...] = ()  # the technologist's verification of the cells, when logged

    @property
    def intact(self) -> bool:
        return not self.findings


def _verify_report(run_dir: Path, record_sha256: str) -> tuple[str | None, list[Finding]]:
    report = run_dir / REPORT_DIR
    manifest_path = report / REPORT_MANIFEST
    if not report.exists():
        return None, []
    if not manifest_path.is_file():
        present = sorted(p.relative_to(run_dir).as_posix() for p in report.rglob("*") if p.is_file())
        return None, [Finding("added", p, "report folder without manifest.json") for p in present]
    manifest_sha = sha256_file(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        expected: dict[str, str] = dict(manifest["files"])
        recorded_run = str(manifest["run_record_sha256"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        return manifest_sha, [Finding("unreadable", f"{REPORT_DIR}/{REPORT_MANIFEST}", str(e))]
    findings: list[Finding] = []
    if recorded_run != record_sha256:
        findings.append(Finding("changed", RUN_RECORD, f"the report was written for run.json sha256 {recorded_run}"))
    changed, added, missing = manifest_differences(report, expected, REPORT_MANIFEST)
    for kind, names in (("changed", changed), ("added", added), ("missing", missing)):
        findings += [Finding(kind, f"{REPORT_DIR}/{name}") for name in names]
    if set(REPORT_FILES) - set(expected):
        findings.append(Finding("unreadable", f"{REPORT_DIR}/{REPORT_MANIFEST}", "does not list both report files"))
    return manifest_sha, findings


def source_run_findings(run_dir: Path, record: RunRecord, *, files: bool = True) -> tuple[Path | None, list[Finding]]:
    """The inference run a comparison record was made from (None for other runs) and what no longer
    matches: its run.json against the sha256 recorded at comparison, then (``files``) its files."""
    if not isinstance(record, ComparisonRecord):
        return None, []
    path = locate_source_run(run_dir, record)
    if not (path / RUN_RECORD).is_file():
        used = f"the {record.inputs.inference_run.kind} run this comparison used"
        return path, [Finding("missing", str(path / RUN_RECORD), used)]
    if sha256_file(path / RUN_RECORD) != record.inputs.inference_run.record_sha256:
        return path, [Finding("changed", str(path / RUN_RECORD), "differs from the sha256 recorded at comparison")]
    if not files:
        return path, []
    inner = verify_run(path)
    kinds = (("changed", inner.changed), ("added", inner.added), ("missing", inner.missing))
    return path, [Finding(kind, str(path / name)) for kind, names in kinds for name in names]


def _data_findings(v: Verification) -> list[Finding]:
    """What changed in a run's data files; its report (or one a killed `wbcv report` left half
    written) is not data and is checked against its own manifest."""
    ours = (f"{REPORT_DIR}/", f"{REPORT_STAGING}/")
    findings = [
        Finding(kind, name) for kind, names in (("changed", v.changed), ("missing", v.missing)) for name in names
    ]
    return findings + [Finding("added", name) for name in v.added if not name.startswith(ours)]


def verify_record(run_dir: Path) -> RecordVerification:
    """Every file of the run, of its report and of the inference run a comparison was made from."""
    run_dir = Path(run_dir)
    v = verify_run(run_dir)  # raises WbcvError when run.json itself is missing or unreadable
    # A half-written report is listed here (`wbcv report` replaces it) but does not stop a report.
    findings = _data_findings(v) + [Finding("added", n) for n in v.added if n.startswith(f"{REPORT_STAGING}/")]
    manifest_sha, report_findings = _verify_report(run_dir, v.record_sha256)
    findings += report_findings
    linked, linked_findings = source_run_findings(run_dir, v.record)
    findings += linked_findings
    logs = _verification_logs(linked if linked is not None else run_dir)
    findings += [Finding(f.kind, str(log.path), f"{f.where}: {f.detail}") for log in logs for f in log.findings]
    return RecordVerification(
        run_dir, v.record_sha256, manifest_sha, (linked,) if linked else (), tuple(findings), tuple(logs)
    )


def _verification_logs(cells_run: Path) -> list[LogCheck]:
    """The verification log beside the run whose cells were verified, checked, when there is one."""
    if not (log_path(cells_run).exists() or head_path(cells_run).exists()):
        return []
    return [check_log(cells_run)]


def require_intact(run_dir: Path, purpose: str) -> Verification:
    """Verify a run before it is used, with every run it was made from; refuse it when altered.

    Checked: every data file of the run against its run.json and, for a comparison, the inference
    run's run.json against the sha256 recorded at comparison and that run's files against it. Not
    checked here: the run's report (it is about to be rewritten, or is not read) and the input
    images (`wbcv verify --inputs`). ``purpose`` completes "... would ..." in the message.
    Raises WbcvError (exit 2) naming every changed, added or missing file.
    """
    run_dir = Path(run_dir)
    v = verify_run(run_dir)
    own = _data_findings(v)
    source, upstream = source_run_findings(run_dir, v.record)
    if own or upstream:
        kind = v.record.inputs.inference_run.kind if isinstance(v.record, ComparisonRecord) else "inference"
        altered = "the run" if own else f"the {kind} run it was made from ({source})"
        what = "; ".join(listing([str(f) for f in own + upstream]))
        raise WbcvError(
            f"{run_dir}: {altered} was altered after it was sealed ({what}); {purpose}. "
            f"Run `wbcv verify {run_dir}` for details, or make the run again."
        )
    return v
