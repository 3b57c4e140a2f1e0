"""`wbcv plan P.yaml --out DIR`: the validation plan, written before any data exist.

From the protocol alone: the acceptance criteria, the statistics that will be used, the
sample-size calculation for the coverage criterion with its assumptions, the least samples the
other analyses need, the required case mix (``plan.strata`` of the protocol) and a signature block.
Written as ``plan.html``, ``plan.pdf`` (printed by Chromium as the report is,
``wbcv.validation.pdf``), ``plan.json`` (the same content as data) and ``manifest.json`` (sha256
of the three files and of the protocol file). `wbcv compare --plan DIR` records the manifest's
sha256 in the comparison run, and the report sets the plan against what was achieved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from scipy import stats

from wbcv.base.atomic import atomic_write_bytes, atomic_write_json, sha256_file
from wbcv.base.errors import WbcvError, shown
from wbcv.base.records import to_json
from wbcv.base.runstore import write_manifest
from wbcv.base.software import software_info
from wbcv.validation.outliers import MIN_VALUES
from wbcv.validation.protocol import Protocol, load_protocol
from wbcv.validation.sampling import samples_needed

PLAN_FORMAT: Final[str] = "wbcv-plan/1"
PLAN_JSON: Final[str] = "plan.json"
PLAN_HTML: Final[str] = "plan.html"
PLAN_PDF: Final[str] = "plan.pdf"
PLAN_MANIFEST: Final[str] = "manifest.json"
#: The true coverage the sample size is planned for when the protocol does not say (plan.expected_coverage).
DEFAULT_EXPECTED_COVERAGE: Final[float] = 0.99


def least_passing_count(n: int, required: float, confidence: float, basis: str) -> int | None:
    """The fewest samples within limits (of n) that pass the coverage criterion; None if none do.

    basis ``point_estimate``: k/n >= required, k = ⌈required·n⌉ (up to 1e-12 for rounding);
    basis ``lower_bound``: the two-sided Clopper–Pearson lower bound B(α/2; k, n − k + 1) >= required,
    α = 1 − confidence (Clopper & Pearson 1934), found by search over k (the bound increases with k).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if basis == "point_estimate":
        return min(n, math.ceil(required * n - 1e-12))
    a = 1 - confidence
    for k in range(n, -1, -1):
        lower = float(stats.beta.ppf(a / 2, k, n - k + 1)) if k > 0 else 0.0
        if lower < required:
            return None if k == n else k + 1
    return 0


def pass_probability(n: int, expected: float, required: float, confidence: float, basis: str) -> float:
    """P(the study passes) when each of n samples is within limits with probability ``expected``
    independently: P(K >= k_min), K ~ Binomial(n, expected), k_min = :func:`least_passing_count`
    (exact binomial; 0 when no count passes)."""
    k_min = least_passing_count(n, required, confidence, basis)
    return 0.0 if k_min is None else float(stats.binom.sf(k_min - 1, n, expected))


@dataclass(frozen=True)
class PlanSize:
    expected_coverage: float
    n_coverage: int | None  # samples for the coverage criterion (None: not demonstrable)
    k_within: int | None
    lower_bound: float | None
    pass_probability: float | None  # at n_coverage under the expected coverage
    n_outlier_test: int  # generalized ESD needs this many per measurand
    n_strata: int  # the sum of the strata minimums
    n_planned: int  # the largest of the three
    note: str


def plan_size(protocol: Protocol) -> PlanSize:
    """The sample-size calculation of the plan (module docstring; :func:`wbcv.validation.sampling.samples_needed`)."""
    p = protocol.plan_expected_coverage or DEFAULT_EXPECTED_COVERAGE
    try:
        need = samples_needed(
            expected_coverage=p, required_coverage=protocol.required_coverage, confidence=protocol.confidence
        )
        n_cov, k, lower, note = need.n_samples, need.k_within, need.lower_bound, ""
        power = pass_probability(n_cov, p, protocol.required_coverage, protocol.confidence, protocol.basis)
    except ValueError as e:
        n_cov, k, lower, power, note = None, None, None, None, str(e)
    n_strata = sum(protocol.plan_strata.values())
    planned = max(n_cov or 0, MIN_VALUES, n_strata)
    return PlanSize(p, n_cov, k, lower, power, MIN_VALUES, n_strata, planned, note)


def plan_document(protocol: Protocol, protocol_sha256: str) -> dict[str, Any]:
    """plan.json: what the plan fixes before the data."""
    return {
        "format": PLAN_FORMAT,
        "protocol": {
            "file": protocol.path.name,
            "sha256": protocol_sha256,
            "id": protocol.id,
            "version": protocol.version,
            "record": to_json(protocol.as_record()),
        },
        "sample_size": to_json(_jsonable(plan_size(protocol))),
        "strata": dict(protocol.plan_strata),
    }


def _jsonable(size: PlanSize) -> dict[str, Any]:
    return {k: getattr(size, k) for k in size.__dataclass_fields__}


def render_plan_html(protocol: Protocol, document: dict[str, Any]) -> str:
    from wbcv.validation.report import template_environment  # the report's module loads plotly

    size = document["sample_size"]
    return (
        template_environment()
        .get_template("plan.html.j2")
        .render(
            protocol=protocol,
            doc=document,
            size=size,
            document_id=f"WBCV-VP-{document['protocol']['sha256'][:12].upper()}",
            software=to_json(software_info()),
        )
    )


def write_plan(protocol_path: Path, out_dir: Path) -> Path:
    """Write the plan of ``protocol_path`` into ``out_dir`` (refused if a plan is there already)."""
    from wbcv.validation.pdf import find_chromium, html_to_pdf

    find_chromium()
    out_dir = Path(out_dir)
    if (out_dir / PLAN_MANIFEST).exists():
        raise WbcvError(
            f"{out_dir}: a plan is already there (manifest.json); a plan that may be signed is never overwritten"
        )
    protocol = load_protocol(protocol_path)
    sha = sha256_file(Path(protocol_path))
    document = plan_document(protocol, sha)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / PLAN_JSON, document)
    html = render_plan_html(protocol, document)
    atomic_write_bytes(out_dir / PLAN_HTML, html.encode("utf-8"))
    html_to_pdf(out_dir / PLAN_HTML, out_dir / PLAN_PDF, f"plan · {protocol.id} v{protocol.version}")
    write_manifest(
        out_dir,
        PLAN_MANIFEST,
        {"format": PLAN_FORMAT, "protocol_sha256": sha},
        (PLAN_JSON, PLAN_HTML, PLAN_PDF),
    )
    return out_dir / PLAN_MANIFEST


@dataclass(frozen=True)
class PlanCheck:
    manifest_sha256: str
    protocol_sha256: str  # of the protocol the plan was made from
    strata: dict[str, int]
    protocol_record: dict[str, Any]  # the protocol as the plan fixed it (plan.json protocol.record)


#: At most this many changed fields are listed (a protocol rewritten wholesale still gives a short list).
MAX_CHANGES_LISTED: Final[int] = 50


def _flattened(doc: Any, prefix: str = "") -> dict[str, Any]:
    """Key path -> value of every leaf of a JSON document (lists are leaves: compared whole; an empty
    mapping has no leaves, so ``{}`` against ``{"NEUT#": [2, 7.5]}`` is the one field ``….NEUT#``)."""
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        for k, v in doc.items():
            out.update(_flattened(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: doc}


def protocol_changes(planned: dict[str, Any], applied: dict[str, Any]) -> tuple[str, ...]:
    """The protocol fields whose applied value differs from the signed plan's, one line each:
    ``"measurands.NEUT#.allowable_error_pct: 10.0 (plan) → 15.0 (applied)"``; a field only on one side
    reads "absent" on the other. Both sides are the JSON record of a protocol (``to_json(as_record())``).
    Sorted by key path; at most :data:`MAX_CHANGES_LISTED`, then one line saying how many more."""
    a, b = _flattened(planned), _flattened(applied)
    missing = object()
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k, missing) != b.get(k, missing))
    lines = [
        f"{k}: {shown(a[k]) if k in a else 'absent'} (plan) → {shown(b[k]) if k in b else 'absent'} (applied)"
        for k in changed[:MAX_CHANGES_LISTED]
    ]
    if len(changed) > MAX_CHANGES_LISTED:
        lines.append(f"… and {len(changed) - MAX_CHANGES_LISTED} more fields")
    return tuple(lines)


def read_plan(plan_dir: Path) -> PlanCheck:
    """A plan folder, checked: its manifest lists plan.json, plan.html and plan.pdf with their sha256,
    and each file still has it. Refused (WbcvError naming the file) otherwise."""
    import json

    plan_dir = Path(plan_dir)
    manifest_path = plan_dir / PLAN_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
        protocol_sha = manifest["protocol_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WbcvError(
            f"{manifest_path}: not a plan manifest of `wbcv plan` ({e}); give the folder `wbcv plan` wrote"
        ) from None
    for name in (PLAN_JSON, PLAN_HTML, PLAN_PDF):
        if name not in files:
            raise WbcvError(f"{manifest_path}: lists no {name}; expected the three files of `wbcv plan`")
        if not (plan_dir / name).is_file() or sha256_file(plan_dir / name) != files[name]:
            raise WbcvError(
                f"{plan_dir / name}: missing or changed since the plan was made (sha256 differs from the manifest)"
            )
    document = json.loads((plan_dir / PLAN_JSON).read_text(encoding="utf-8"))
    record = document.get("protocol", {}).get("record", {}) if isinstance(document, dict) else {}
    return PlanCheck(
        sha256_file(manifest_path),
        str(protocol_sha),
        dict(document.get("strata", {})),
        record if isinstance(record, dict) else {},
    )
