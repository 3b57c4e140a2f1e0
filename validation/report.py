"""The sign-off report of a comparison run: ``report.html`` (self-contained) and ``report.pdf``.

Written into the sealed comparison run; these are the only files ever added to a sealed run::

    RUN/report/report.html     plotly.js, styles and every figure inline: opens offline, anywhere
    RUN/report/report.pdf      report.html printed by the system Chromium (wbcv.validation.pdf)
    RUN/report/manifest.json   sha256 of both files and of RUN/run.json (see wbcv.validation.integrity)

The report prints the sha256 of RUN/run.json, the manifest of every data file of the run, on its
title page; `wbcv report` prints the sha256 of report/manifest.json. `wbcv verify RUN` checks both.

Deterministic: everything shown comes from the run record (no clock, no random ids), so the same
record gives byte-identical HTML and a PDF with the same text. A report that exists is never
overwritten: it may have been signed.

Contents: title page (identification and hashes), verdict table, one section per measurand (the
verification plot, statistics with CIs, Bland-Altman and regression plots), cell-level results
(confusion matrix against expert labels, unclassified cells), every excluded sample or value and
every skipped file with its reason, the methods (every statistical convention, with sources), and
the signature block.
"""

from __future__ import annotations

import json
import math
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import plotly.graph_objects as go
import plotly.io as pio
import polars as pl
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from wbcv.base.atomic import atomic_write_bytes, sha256_file
from wbcv.base.errors import WbcvError
from wbcv.base.records import ComparisonRecord, InferenceRecord, ProtocolRecord, ResultsRecord, to_json
from wbcv.base.runstore import (
    RUN_RECORD,
    locate_source_run,
    read_record_of,
    read_run_record,
    remove_tree,
    seal_directory,
    write_manifest,
)
from wbcv.base.software import software_info
from wbcv.base.tables import (
    COMPARISON_FILE,
    COUNTS_FILE,
    EXCLUDED_FILE,
    IMPORT_EXCLUDED_FILE,
    PREDICTIONS_FILE,
    REFERENCE_FILE,
    SKIPPED_FILE,
    STATISTICS_FILE,
    VERDICT_FILE,
)
from wbcv.base.taxonomy import CELL_CLASSES
from wbcv.validation import cell_metrics
from wbcv.validation.bias_range import SQRT_PI_OVER_2
from wbcv.validation.expert_labels import LabelledCells, labelled_cells
from wbcv.validation.figures import bland_altman_plot, confusion_matrix_plot, regression_plot, verification_plot
from wbcv.validation.integrity import (
    REPORT_DIR,
    REPORT_FILES,
    REPORT_HTML,
    REPORT_MANIFEST,
    REPORT_PDF,
    REPORT_STAGING,
    require_intact,
)
from wbcv.validation.measurands import MEASURANDS
from wbcv.validation.preclassification import preclassification_statistics
from wbcv.validation.regression import LARGE_N
from wbcv.validation.strata import StratumAchieved, strata_achieved
from wbcv.validation.verdict import coverage_error_label
from wbcv.validation.verification_log import check_log, verified_cells

REPORT_FORMAT: Final[str] = "wbcv-report/1"
SIGNATURE_ROLES: Final[tuple[str, ...]] = ("Prepared by", "Reviewed by", "Approved by")
#: Long lists (excluded values, skipped files, unclassified by sample) are shown up to this many
#: rows; the report then says how many more there are and in which file of the run they are.
MAX_LISTED_ROWS: Final[int] = 500
FIGURE_WIDTH: Final[int] = 680  # px: the A4 text width at 96 dpi with 14 mm margins, so print = screen
FIGURE_CONFIG: Final[dict[str, Any]] = {"displaylogo": False, "responsive": False}


@dataclass(frozen=True)
class Signatory:
    """A name and function printed in the signature block; empty fields become lines to fill in."""

    role: str
    name: str = ""
    function: str = ""


@dataclass(frozen=True)
class CellEvidence:
    """What the run behind the comparison says about single cells: an inference run (every cell),
    or a results run (an analyzer's export: cells only when it was a per-cell table)."""

    record: InferenceRecord | None  # None for a results run
    n_cells: int
    n_unclassified: int
    abstain_reasons: dict[str, int]
    unclassified_by_sample: pl.DataFrame  # sample_id, n_cells, n_unclassified, unclassified_pct
    skipped: pl.DataFrame
    labelled: LabelledCells | None  # None when no cell has an expert label
    results: ResultsRecord | None = None  # the results run's record, for a comparison of an analyzer's export


@dataclass(frozen=True)
class ReportData:
    run_dir: Path
    record: ComparisonRecord
    protocol: ProtocolRecord  # record.protocol: a report needs the whole protocol
    record_sha256: str
    verdicts: list[dict[str, Any]]
    statistics: dict[str, Any]
    comparison: pl.DataFrame
    excluded: pl.DataFrame
    cells: CellEvidence
    strata: list[StratumAchieved] | None = None  # samples per stratum against the plan; None: not recorded

    @property
    def document_id(self) -> str:
        """Names this report: it changes whenever anything in the run record changes."""
        return f"WBCV-VR-{self.record_sha256[:12].upper()}"


@dataclass(frozen=True)
class ReportResult:
    report_dir: Path
    html: Path
    pdf: Path
    manifest: Path
    manifest_sha256: str
    document_id: str


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise WbcvError(f"{path}: unreadable: {e}") from None


def _cell_evidence(run_dir: Path, record: ComparisonRecord) -> CellEvidence:
    """The cell-level results of the inference run the comparison was made from (verified intact)."""
    path = locate_source_run(run_dir, record)
    source = read_run_record(path)
    if isinstance(source, ResultsRecord):
        return _results_evidence(path, source)
    inference = read_record_of(path, InferenceRecord, "expected the inference run of the comparison")
    columns = ["sample_id", "expert_label", "predicted_class", "unclassified", "abstain_reason"]
    predictions = pl.read_parquet(path / PREDICTIONS_FILE, columns=columns)
    counts = pl.read_parquet(path / COUNTS_FILE, columns=["sample_id", "n_cells", "n_unclassified"])
    reasons = predictions.filter(pl.col("unclassified")).group_by("abstain_reason").len().sort("abstain_reason")
    by_sample = (
        counts.filter(pl.col("n_unclassified") > 0)
        .with_columns(unclassified_pct=100 * pl.col("n_unclassified") / pl.col("n_cells"))
        .sort(["unclassified_pct", "sample_id"], descending=[True, False])
    )
    return CellEvidence(
        record=inference,
        n_cells=predictions.height,
        n_unclassified=int(predictions["unclassified"].sum()),
        abstain_reasons={str(r): int(n) for r, n in reasons.iter_rows()},
        unclassified_by_sample=by_sample,
        skipped=pl.read_parquet(path / SKIPPED_FILE),
        labelled=labelled_cells(predictions),
    )


def _results_evidence(path: Path, results: ResultsRecord) -> CellEvidence:
    """A results run's counts and what its import left out (listed where skipped files are)."""
    counts = pl.read_parquet(path / COUNTS_FILE, columns=["sample_id", "n_cells", "n_unclassified"])
    left_out = pl.read_parquet(path / IMPORT_EXCLUDED_FILE).select(
        level=pl.lit("import"),
        sample_id="sample_id",
        path=pl.concat_str(pl.col("location"), pl.col("export_class").fill_null(""), separator=" ").str.strip_chars(),
        reason=pl.when(pl.col("n_cells").is_not_null())
        .then(pl.format("{} ({} cells)", pl.col("reason"), pl.col("n_cells")))
        .otherwise(pl.col("reason")),
    )
    by_sample = (
        counts.filter(pl.col("n_unclassified") > 0)
        .with_columns(unclassified_pct=100 * pl.col("n_unclassified") / pl.col("n_cells"))
        .sort(["unclassified_pct", "sample_id"], descending=[True, False])
    )
    return CellEvidence(
        record=None,
        n_cells=int(counts["n_cells"].sum()),
        n_unclassified=int(counts["n_unclassified"].sum()),
        abstain_reasons={},
        unclassified_by_sample=by_sample,
        skipped=left_out,
        labelled=None,
        results=results,
    )


def _verification_statistics(inference_run: Path, protocol: ProtocolRecord) -> dict[str, Any]:
    """Pre-classification against the technologist's verification in the dashboard, when the inference
    run has a verification log (``wbcv.validation.verification_log``); none from a broken chain."""
    log = check_log(inference_run)
    if not log.entries and log.intact:
        return {}
    users = sorted({e["user"] for e in log.entries})
    times = [e["time_utc"] for e in log.entries]
    about = {
        "path": str(log.path),
        "records": len(log.entries),
        "head_sha256": log.head_sha256,
        "users": users,
        "first_utc": min(times, default=None),
        "last_utc": max(times, default=None),
        "findings": [str(f) for f in log.findings],
    }
    if not log.intact:
        stats: dict[str, Any] = {"not_computed": "the verification log is not intact (listed above)", "n_cells": 0}
    else:
        predictions = pl.read_parquet(
            inference_run / PREDICTIONS_FILE, columns=["sample_id", "cell_path", "predicted_class", "unclassified"]
        )
        stats = preclassification_statistics(verified_cells(predictions, log.entries), protocol.confidence)
    return {"preclassification": stats, "verification_log": about}


def load_report_data(run_dir: Path) -> ReportData:
    """Everything the report shows, from a sealed, intact comparison run."""
    run_dir = Path(run_dir)
    record = read_record_of(
        run_dir, ComparisonRecord, "a report is made from a comparison run (`wbcv compare` or `wbcv run`)"
    )
    if not isinstance(record.protocol, ProtocolRecord):
        raise WbcvError(
            f"{run_dir / RUN_RECORD}: field 'protocol.measurands' missing: this comparison was made by a wbcv that "
            "recorded only the protocol's identification, and the report states every rule. Compare again "
            "(`wbcv compare`) to report it."
        )
    check = require_intact(run_dir, "a report would certify data that is not what was computed")
    cells = _cell_evidence(run_dir, record)
    statistics = _read_json(run_dir / STATISTICS_FILE)
    if cells.record is not None:  # wbcv's own inference run: its cells may have been verified in the dashboard
        statistics = {**statistics, **_verification_statistics(locate_source_run(run_dir, record), record.protocol)}
    comparison = pl.read_parquet(run_dir / COMPARISON_FILE)
    return ReportData(
        run_dir=run_dir,
        record=record,
        protocol=record.protocol,
        record_sha256=check.record_sha256,
        verdicts=_read_json(run_dir / VERDICT_FILE)["measurands"],
        statistics=statistics,
        comparison=comparison,
        excluded=pl.read_parquet(run_dir / EXCLUDED_FILE),
        cells=cells,
        strata=achieved_strata(run_dir, record, comparison),
    )


def achieved_strata(run_dir: Path, record: ComparisonRecord, comparison: pl.DataFrame) -> list[StratumAchieved] | None:
    """Samples compared per stratum against the plan's (``wbcv.validation.strata``), when a plan was given."""
    if record.inputs.plan is None:
        return None
    counts = pl.read_parquet(locate_source_run(run_dir, record) / COUNTS_FILE)  # verified by require_intact
    return strata_achieved(counts, comparison, record.inputs.plan.strata)


# --- formatting -------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    """A number to ``digits`` significant figures; '–' for a missing value; ±∞ spelled out."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        return f"{value:.{digits}g}".replace("-", "−")
    return str(value)


def pct(fraction: float | None, digits: int = 1) -> str:
    return "–" if fraction is None else f"{100 * fraction:.{digits}f} %"


def ci(pair: Sequence[float | None] | None, digits: int = 3) -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return "–"
    return f"{fmt(pair[0], digits)} to {fmt(pair[1], digits)}"


def figure_slug(measurand: str) -> str:
    """An HTML id part per measurand: NEUT# and NEUT% must not collide (plotly draws by id)."""
    return measurand.lower().replace("#", "-count").replace("%", "-percent")


def _figure(fig: go.Figure, div_id: str, height: int) -> Markup:
    fig.update_layout(width=FIGURE_WIDTH, height=height, margin={"l": 60, "r": 20, "t": 50, "b": 40})
    html = pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id, config=FIGURE_CONFIG)
    # plotly's output: its JSON escapes "</" and "<!--", so sample ids cannot end the script
    return Markup(f'<div class="figure">{html}</div>')


# The regressions of statistics.json (wbcv.validation.verdict), in the order the report lists them.
FIT_LABELS: Final[dict[str, str]] = {
    "passing_bablok": "Passing–Bablok",
    "deming": "Deming",
    "weighted_deming": "weighted Deming",
    "ols": "least squares",
}


def _counting_interval_row(st: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Against a manual reference: values within its counting interval (wbcv.validation.verdict)."""
    w = st.get("within_reference_interval")
    if not isinstance(w, dict):
        return []
    return [
        (
            "Within the reference's counting interval (Clopper–Pearson 95 % of the manual count; not the criterion)",
            f"{pct(w['share'])} ({w['k']}/{w['n']})",
            f"{pct(w['ci'][0])} to {pct(w['ci'][1])} (Clopper–Pearson)",
        )
    ]


def examiner_check_view(run_dir: Path) -> dict[str, Any] | None:
    """The CLSI H20 between-examiner check of a manual reference (reference.parquet of the comparison):
    samples checked, flagged (with the classes) and not checked; None for another kind of reference."""
    path = Path(run_dir) / REFERENCE_FILE
    if not path.is_file() or "between_examiners" not in pl.read_parquet_schema(path):
        return None
    ref = pl.read_parquet(path, columns=["sample_id", "examiners", "between_examiners"])
    not_checked = ref.filter(pl.col("between_examiners").str.starts_with("not checked"))
    flagged = ref.filter(
        (pl.col("between_examiners") != "") & ~pl.col("between_examiners").str.starts_with("not checked")
    )
    return {
        "n_checked": ref.height - not_checked.height,
        "flagged": [(r["sample_id"], r["between_examiners"]) for r in flagged.sort("sample_id").iter_rows(named=True)],
        "not_checked": [
            (r["sample_id"], r["between_examiners"]) for r in not_checked.sort("sample_id").iter_rows(named=True)
        ],
    }


def _stat_rows(st: dict[str, Any], confidence: float, required_coverage: float) -> list[tuple[str, str, str]]:
    """(statistic, estimate, CI) rows of one measurand; a statistic that could not be computed
    says why."""
    level = f"{100 * confidence:g} % CI"
    rows: list[tuple[str, str, str]] = []

    def computed(name: str, key: str) -> dict[str, Any] | None:
        """The statistic under ``key``, or None after a row saying why it was not computed."""
        value = st.get(key)
        if not isinstance(value, dict) or "not_computed" in value:
            reason = value.get("not_computed", "not available") if isinstance(value, dict) else "not available"
            rows.append((name, "not computed", reason))
            return None
        return value

    e_name = f"{100 * required_coverage:g} %-coverage error ({coverage_error_label(required_coverage)})"
    if (ce := computed(e_name, "coverage_error")) is not None:
        rows.append(
            (
                f"error covering {100 * ce['coverage']:g} % of samples",
                f"{fmt(ce['error_pct'])} %",
                f"{level} {fmt(ce['lower'])} to {fmt(ce['upper'])} % (bootstrap)",
            )
        )
    for key, label, unit in (("bland_altman_absolute", "absolute", ""), ("bland_altman_percent", "percent", " %")):
        ba = computed(f"Bland–Altman ({label})", key)
        if ba is None:
            continue
        rows.append((f"bias, Bland–Altman ({label})", f"{fmt(ba['bias'])}{unit}", f"{level} {ci(ba['bias_ci'])}"))
        rows.append((f"lower limit of agreement ({label})", f"{fmt(ba['loa_lower'])}{unit}", ci(ba["loa_lower_ci"])))
        rows.append((f"upper limit of agreement ({label})", f"{fmt(ba['loa_upper'])}{unit}", ci(ba["loa_upper_ci"])))
    for key, label in FIT_LABELS.items():
        fit = computed(label, key)
        if fit is None:
            continue
        rows.append((f"{label} slope", fmt(fit["slope"], 4), f"{level} {ci(fit['slope_ci'], 4)}"))
        rows.append((f"{label} intercept", fmt(fit["intercept"], 4), f"{level} {ci(fit['intercept_ci'], 4)}"))
        lin = fit.get("linearity")
        if isinstance(lin, dict) and "p_value" in lin:
            verdict = "deviation from linearity" if lin["rejected"] else "no significant deviation"
            rows.append(("Passing–Bablok CUSUM linearity test", verdict, f"p = {fmt(lin['p_value'])}"))
    for key, label, value in (("lins_ccc", "Lin's concordance", "ccc"), ("pearson", "Pearson r", "r")):
        if (c := computed(label, key)) is not None:
            rows.append((label, fmt(c[value], 4), f"{level} {fmt(c['lower'], 4)} to {fmt(c['upper'], 4)}"))
    for method, levels in (st.get("bias_at_decision_levels") or {}).items():
        if not isinstance(levels, list):
            continue
        for b in levels:
            interval = "no CI defined" if b["lower"] is None else f"{level} {fmt(b['lower'])} to {fmt(b['upper'])}"
            name = FIT_LABELS.get(method, method)
            rows.append((f"bias at {fmt(b['level'])} ({name})", fmt(b["bias"]), interval))
    plan = st.get("samples_needed_at_observed_coverage")
    if isinstance(plan, dict) and "n_samples" in plan:
        rows.append(
            (
                "samples needed to show the criterion at the lower bound",
                str(plan["n_samples"]),
                f"if the true coverage were the observed {pct(plan['expected_coverage'])}",
            )
        )
    return rows


def _interval_label(low: float | None, high: float | None) -> str:
    if low is None:
        return f"< {fmt(high)}"
    if high is None:
        return f"≥ {fmt(low)}"
    return f"{fmt(low)} to < {fmt(high)}"


def _mean_ci(m: dict[str, Any] | None, unit: str = "") -> tuple[str, str, str]:
    """(n, mean, CI) of a mean difference of statistics.json."""
    if not m:
        return ("0", "–", "no sample")
    interval = "undefined (n = 1)" if m["lower"] is None else f"{fmt(m['lower'])} to {fmt(m['upper'])}{unit}"
    return (str(m["n"]), f"{fmt(m['mean'])}{unit}", interval)


def ep09_view(st: dict[str, Any], verdict: dict[str, Any]) -> dict[str, Any]:
    """The EP09c additions of one measurand for the report: the outliers listed by generalized ESD,
    the verdict with all samples (when judged without the outliers), the bias by concentration
    interval, the regression-based limits of agreement and the regression criterion."""
    keys = ("outliers", "with_all", "intervals", "intervals_not_computed", "regression_limits", "regression_acceptance")
    view: dict[str, Any] = dict.fromkeys(keys)
    screen = st.get("outliers")
    if isinstance(screen, dict):
        scale = (
            "absolute differences (test − reference)"
            if screen["differences"] == "absolute"
            else "relative differences (%)"
        )
        view["outliers"] = {
            "summary": (
                f"not tested: {screen['not_computed']}"
                if screen["not_computed"]
                else f"generalized ESD on the {scale} of {screen['n_tested']} samples, "
                f"at most {screen['max_outliers']} outlier(s) tested (share {fmt(screen['max_share'])}), "
                f"α = {fmt(screen['alpha'])}: "
                f"{len(screen['outliers'])} outlier(s)"
            ),
            "rows": [
                [
                    o["sample_id"],
                    fmt(o["reference"]),
                    fmt(o["predicted"]),
                    fmt(o["difference"]),
                    fmt(o["r"]),
                    fmt(o["critical"]),
                ]
                for o in screen["outliers"]
            ],
            "not_tested": [f"{sid}: {why}" for sid, why in screen["not_tested"]],
            "removed": bool(verdict.get("outliers_removed")),
        }
    full = st.get("verdict_with_all_samples")
    if isinstance(full, dict):
        view["with_all"] = f"{'PASS' if full['passed'] else 'FAIL'}: {full['reason']}"
    bi = st.get("bias_by_interval")
    if isinstance(bi, dict) and "intervals" in bi:
        view["intervals"] = {
            "source": bi["source"],
            "rows": [
                [_interval_label(p["low"], p["high"]), *_mean_ci(p["absolute"]), *_mean_ci(p["percent"], " %")[1:]]
                for p in bi["intervals"]
            ],
        }
    elif isinstance(bi, dict):
        view["intervals_not_computed"] = bi.get("not_computed", "not available")
    rl = st.get("regression_limits")
    if isinstance(rl, dict):
        view["regression_limits"] = (
            f"not computed: {rl['not_computed']}"
            if "not_computed" in rl
            else f"bias = {fmt(rl['bias_intercept'], 4)} + {fmt(rl['bias_slope'], 4)}·A; limits = bias ± "
            f"{fmt(rl['z'] * SQRT_PI_OVER_2, 3)}·({fmt(rl['spread_intercept'], 4)} + {fmt(rl['spread_slope'], 4)}·A), "
            "A the mean of test and reference"
        )
    ra = st.get("regression_acceptance")
    if isinstance(ra, dict):
        view["regression_acceptance"] = (
            f"{'met' if ra['passed'] else 'NOT met'} ({ra['basis'].replace('_', ' ')}): {ra['reason']}"
        )
    return view


def _table(frame: pl.DataFrame, columns: Sequence[str]) -> tuple[list[str], list[list[str]], int]:
    """Header, at most MAX_LISTED_ROWS formatted rows, and how many rows were left out."""
    shown = frame.head(MAX_LISTED_ROWS)
    rows = [[fmt(v) for v in row] for row in shown.select(columns).iter_rows()]
    return list(columns), rows, frame.height - shown.height


def _measurand_sections(data: ReportData, required_coverage: float, confidence: float) -> list[dict[str, Any]]:
    sections = []
    for v in data.verdicts:
        name = v["measurand"]
        slug = figure_slug(name)
        st = data.statistics.get(name, {})
        rows = data.comparison.filter(pl.col("measurand") == name)
        figures = []
        if rows.height:
            figures.append(
                _figure(
                    verification_plot(
                        data.comparison,
                        name,
                        v["allowable_error_pct"],
                        v["coverage_error_pct"],
                        required_coverage,
                        absolute_limit=v["absolute_limit"],
                    ),
                    f"fig-{slug}-verification",
                    430,
                )
            )
            ba = st.get("bland_altman_absolute")
            rl = st.get("regression_limits")
            figures.append(
                _figure(
                    bland_altman_plot(
                        data.comparison,
                        name,
                        ba if isinstance(ba, dict) else None,
                        regression_limits=rl if isinstance(rl, dict) and "bias_slope" in rl else None,
                    ),
                    f"fig-{slug}-bland-altman",
                    330,
                )
            )
            pb = st.get("passing_bablok")
            figures.append(
                _figure(
                    regression_plot(data.comparison, name, pb if isinstance(pb, dict) else None, "Passing–Bablok"),
                    f"fig-{slug}-regression",
                    330,
                )
            )
        sections.append(
            {
                "name": name,
                "slug": slug,
                "unit": MEASURANDS[name].unit,
                "verdict": v,
                "stats": (_stat_rows(st, confidence, required_coverage) + _counting_interval_row(st)) if st else [],
                "ep09": ep09_view(st, v),
                "figures": figures,
                "n_absolute": int((rows["criterion"] == "absolute").sum()) if rows.height else 0,
            }
        )
    return sections


def _methods(protocol: ProtocolRecord, statistics: dict[str, Any], export: bool = False) -> list[tuple[str, str]]:
    """Every convention the numbers depend on, as (topic, statement) pairs; ``export``: the counts are
    an analyzer's exported results, not the model's."""
    conf = f"{100 * protocol.confidence:g} %"
    req = f"{100 * protocol.required_coverage:g} %"
    any_stats: Any = next(iter(statistics.values()), {})
    ce = any_stats.get("coverage_error", {}) if isinstance(any_stats, dict) else {}
    n_boot = ce.get("n_boot", 2000) if isinstance(ce, dict) else 2000
    seed = ce.get("seed", 0) if isinstance(ce, dict) else 0
    mode = protocol.count_mode
    excl = protocol.exclude_flags
    flags = {"any": "any IP or Q-flag", "none": "no flag"}[excl] if isinstance(excl, str) else ", ".join(excl)
    out = [
        (
            "Error",
            "error % = 100 · (test − reference) / reference, per sample and measurand (source study). "
            + (
                "Relative count mode: a class fraction is k_c / n_classified (unclassified cells excluded from the "
                "denominator); X% = 100 · fraction; X# = fraction · reference WBC, so its error equals the fraction's."
                if mode == "relative"
                else "Volumetric count mode: WBC = cells found / imaged volume (µL) / 1000 or cells · calibration "
                "factor; X# = fraction · that WBC estimate."
            ),
        ),
        (
            "Allowable error",
            "A sample is within limits when |test − reference| ≤ max(L / 100 · reference, A), L the allowable "
            "error % and A the absolute limit of the measurand (table below); with a reference of 0 only the "
            "absolute limit applies.",
        ),
        (
            "Acceptance",
            f"coverage = samples within limits / samples compared, with its exact two-sided {conf} "
            "Clopper–Pearson interval (Clopper & Pearson 1934). A measurand passes when the "
            + ("observed coverage" if protocol.basis == "point_estimate" else "lower confidence bound")
            + f" is at least {req}; the study passes when every measurand passes.",
        ),
        (
            f"{req}-coverage error ({coverage_error_label(protocol.required_coverage)})",
            "the smallest |error| that at least the required fraction of samples do not exceed: the empirical "
            "quantile of |error %| with the inverted-CDF rule (Hyndman & Fan 1996 type 1, order statistic "
            f"⌈q·n⌉); its {conf} CI is a percentile bootstrap ({n_boot} resamples, seed {seed}; Efron & "
            "Tibshirani 1993). It is the blue dotted line of the verification plot.",
        ),
        (
            "Sampling floor",
            "for each sample, P(a perfect classifier stays within the limit) = P(n·p·(1−L) ≤ K ≤ n·p·(1+L)), "
            "K ~ Binomial(n, p), n the classified cells of the slide and p the reference fraction (exact "
            "binomial); the measurand's floor is its mean over samples, the coverage a perfect classifier would "
            "be expected to reach with these cell counts. The grey band of the verification plot is each "
            "sample's central 95 % interval of the counting error (binomial quantiles). Computed in relative "
            "count mode for class measurands.",
        ),
        (
            "Bland–Altman",
            "bias = mean difference, SD with n − 1; limits of agreement = bias ± 1.96 SD (z quantile of 0.975); "
            f"{conf} CI of the bias bias ± t(n−1)·SD/√n; CI of each limit ± t(n−1)·√(3 SD²/n) (Bland & Altman "
            "1986, 1999). Absolute scale: test − reference; percent scale: 100 · (test − reference) / pair mean.",
        ),
        (
            "Passing–Bablok",
            "slope = shifted median of all pairwise slopes, intercept = median(y − b·x), analytical CIs and the "
            "CUSUM linearity test (Passing & Bablok 1983), computed as the R package mcr 1.3.3.1 does "
            f"(checked against mcr's published reference cases); above {LARGE_N:,} samples the same order "
            "statistics are selected without storing all the slopes.",
        ),
        (
            "Deming",
            "error ratio 1 (equal imprecision of both methods), CIs by jackknife centred on the full-data "
            "estimate with a t quantile on n − 2 degrees of freedom (Linnet 1990; mcr).",
        ),
        (
            "Weighted Deming",
            "for a constant coefficient of variation: weights 1 / (estimated true value)², refitted until the "
            "coefficients change by less than 1e-6 (Linnet 1990; mcr), jackknife CIs as for Deming; needs "
            "positive values.",
        ),
        ("Least squares", "ordinary least squares, analytical t-based CIs on n − 2 degrees of freedom (mcr)."),
        (
            "Bias at decision levels",
            "intercept + (slope − 1) · level (CLSI EP09c; mcr calcBias); Deming and weighted Deming with their "
            "jackknife CIs; "
            "Passing–Bablok defines no CI of the bias.",
        ),
        (
            "Outliers",
            "generalized ESD (Rosner 1983; NIST e-Handbook §1.3.5.17.3) on each measurand's "
            + (
                "differences, at most ⌊share · n⌋ (at least 1) outliers tested, as CLSI EP09c recommends; outliers are "
                "listed with R_i and λ_i; the acceptance is judged "
                + (
                    "WITHOUT them (and also stated with all samples)"
                    if protocol.outliers.verdict == "without"
                    else "with all samples"
                )
                + f" (protocol: {protocol.outliers.differences} differences, α = {protocol.outliers.alpha:g}, "
                f"share {protocol.outliers.max_share:g}); at least 15 samples are needed."
                if protocol.outliers is not None
                else "differences: not screened by the wbcv that made this comparison."
            ),
        ),
        (
            "Bias by concentration interval",
            "mean difference (test − reference) and mean relative error within intervals of the reference value "
            "(low ≤ x < high; protocol cut points, else the tertiles of the reference values, Hyndman & Fan type 7), "
            f"each with the Student-t {conf} interval d̄ ± t(n−1)·s/√n (CLSI EP09c).",
        ),
        (
            "Regression-based limits of agreement",
            "differences regressed on the pair means by least squares, absolute residuals regressed on the means; "
            "limits = fitted bias ± 1.96·√(π/2)·fitted |residual| (Bland & Altman 1999, §3.2), drawn on the "
            "difference plot. "
            + (
                "Requested by the protocol."
                if protocol.difference_limits == "regression"
                else "Not requested by the protocol."
            ),
        ),
        (
            "Acceptance on the regression",
            "where the protocol sets it per measurand: the Passing–Bablok slope within [low, high] and |intercept| "
            "within the limit, judged on the "
            + (
                "point estimates"
                if protocol.regression_basis == "point_estimate"
                else f"whole {conf} confidence intervals (an equivalence rule)"
            )
            + "; a measurand passes only when both the coverage and this criterion are met.",
        ),
        (
            "Concordance and correlation",
            f"Lin's concordance correlation coefficient and Pearson's r with Fisher-z {conf} intervals (Lin 1989).",
        ),
        (
            "Exclusions",
            f"reference results with {flags} are excluded; values carrying the marks "
            f"{', '.join(protocol.exclude_marks) or 'none'} are excluded; samples with fewer than "
            f"{protocol.min_cells} classified cells are excluded; reruns: the "
            f"{protocol.rerun_rule} result is used"
            + (" (a rerun excludes the sample)" if protocol.rerun_rule == "reject" else "")
            + f"; immature granulocytes: {protocol.immature_granulocytes}. Technical rows (background "
            "checks, QC) are not samples. Every exclusion is listed with its reason in this report.",
        ),
        (
            "Unclassified cells",
            "white cells the analyzer's export names outside the five classes, mapped to unclassified by the class "
            "mapping the results run records (blasts, immature granulocytes, unidentified cells), are counted "
            "separately and are not part of any class fraction; classes mapped to excluded or not mapped are "
            "left out with their reason."
            if export
            else "cells the ensemble would not commit to (no or several one-vs-all heads firing, disagreement with "
            "the lineage head, or a combined probability below the model's threshold) are counted separately and "
            "are not part of any class fraction.",
        ),
    ]
    if any(isinstance(st, dict) and "within_reference_interval" in st for st in statistics.values()):
        out.append(
            (
                "Counting interval of a manual reference",
                "The reference's own counting error: the exact two-sided 95 % Clopper–Pearson interval of its k of n "
                "cells (Clopper & Pearson 1934), not Rümke's table (Rümke 1960, reproduced in CLSI H20), whose "
                "rounded limits differ slightly (9 % of 100 cells: exact 4.2–16.4 %, Rümke 4–17 %). The share of "
                "values within it is shown beside the error % criterion and is not part of the verdict.",
            )
        )
    if "preclassification" in statistics:
        out.append(
            (
                "Pre-classification",
                "The analyzer's pre-classified class against the technologist's verified class (the reference), "
                "both mapped to wbcv's categories: agreement and reclassification rate (class name changed), per "
                "category sensitivity, PPV and specificity, each with its Wilson score interval (Wilson 1927; "
                f"Newcombe 1998, method 3; scipy) at {conf}; Cohen's kappa (Cohen 1960) and weighted kappa with "
                "linear and quadratic disagreement weights by category order (Cohen 1968), each with a Wald interval "
                "from the large-sample standard error of Fleiss, Cohen & Everitt (1969), not clipped to [−1, 1]; "
                "the per-sample difference is of the differentials among the five classes (ICSH 2019).",
            )
        )
    return out


def template_environment() -> Environment:
    """The one Jinja environment of every document wbcv writes (reports, study reports, plans):
    HTML-escaped, strict about undefined names, with the ``fmt`` and ``pct`` filters."""
    env = Environment(
        loader=PackageLoader("wbcv.validation", "templates"),
        autoescape=select_autoescape(default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt=fmt, pct=pct)
    return env


def render_html(data: ReportData, signatories: Sequence[Signatory] = ()) -> str:
    """The report as one self-contained HTML document (a pure function of the run record)."""
    record, protocol = data.record, data.protocol
    by_role = {s.role: s for s in signatories}
    sections = _measurand_sections(data, protocol.required_coverage, protocol.confidence)
    cells = data.cells
    confusion = None
    if cells.labelled is not None and cells.labelled.confusion is not None:
        cm = cells.labelled.confusion
        confusion = {
            "figure": _figure(confusion_matrix_plot(cm), "fig-confusion-matrix", 420),
            "n": int(cm.sum()),
            "balanced_accuracy": pct(cell_metrics.balanced_accuracy(cm)),
            "selective_accuracy": pct(cell_metrics.selective_accuracy(cm)),
            "per_class": [
                (c, int(cm[i].sum()), pct(float(s)), pct(float(p)))
                for i, (c, s, p) in enumerate(
                    zip(CELL_CLASSES, cell_metrics.sensitivity(cm), cell_metrics.ppv(cm), strict=True)
                )
            ],
        }
    cell_view = {
        "n_cells": cells.n_cells,
        "n_unclassified": cells.n_unclassified,
        "unclassified_pct": pct(cells.n_unclassified / cells.n_cells if cells.n_cells else None, 2),
        "reasons": cells.abstain_reasons,
        "by_sample": _table(cells.unclassified_by_sample, ["sample_id", "n_cells", "n_unclassified"]),
        "skipped": _table(cells.skipped, ["level", "sample_id", "path", "reason"]),
        "confusion": confusion,
        "labels_outside": cells.labelled.outside_classes if cells.labelled else {},
        "results": cells.results,
        "preclassification": preclassification_rows(data.statistics.get("preclassification")),
        "verification_log": data.statistics.get("verification_log"),
    }
    return (
        template_environment()
        .get_template("report.html.j2")
        .render(
            plotly_js=Markup(get_plotlyjs()),  # plotly's bundled library, not user input
            document_id=data.document_id,
            record=record,
            record_sha256=data.record_sha256,
            protocol=protocol,
            e_label=coverage_error_label(protocol.required_coverage),
            inputs=record.inputs,
            strata=data.strata,
            inference=data.cells.record,
            software=record.software,
            passed=record.verdict == "pass",
            verdicts=data.verdicts,
            sections=sections,
            excluded=_table(exclusion_lines(data.excluded), ["sample_id", "measurands", "source_row", "reason"]),
            examiner_check=examiner_check_view(data.run_dir),
            cells=cell_view,
            methods=_methods(protocol, data.statistics, export=data.cells.results is not None),
            rules=protocol.measurands,
            signatures=[by_role.get(role, Signatory(role)) for role in SIGNATURE_ROLES],
            report_format=REPORT_FORMAT,
        )
    )


def _interval_text(ci: list[float] | None) -> str:
    """A kappa interval of statistics.json as text; '–' when undefined or from a run made before it was kept."""
    return "–" if not ci else f"{fmt(ci[0])} to {fmt(ci[1])}"


def preclassification_rows(st: dict[str, Any] | None) -> dict[str, Any] | None:
    """The pre-classification statistics of statistics.json (``wbcv.validation.preclassification``) as
    text rows: estimates in %, Wilson intervals at the protocol's confidence. The report and the
    dashboard's pre-classification tab (``wbcv.dashboards.preclassification``) both show these."""
    if not st:
        return None
    if "not_computed" in st:
        return {"not_computed": st["not_computed"]}

    def prop(p: dict[str, Any]) -> tuple[str, str]:
        ci_text = "–" if not p["ci"] else f"{pct(p['ci'][0])} to {pct(p['ci'][1])}"
        return f"{pct(p['estimate'])} ({p['k']}/{p['n']})", ci_text

    return {
        "n_cells": st["n_cells"],
        "n_cells_without_both": st["n_cells_without_both"],
        "level": f"{100 * st['confidence']:g} % CI (Wilson)",
        "agreement": prop(st["agreement"]),
        "reclassification": prop(st["reclassification_rate"]),
        "kappa": [fmt(st["kappa"]), fmt(st["kappa_linear"]), fmt(st["kappa_quadratic"])],
        "kappa_ci": [_interval_text(st.get(f"{k}_ci")) for k in ("kappa", "kappa_linear", "kappa_quadratic")],
        "per_class": [
            (
                c["category"],
                c["verified"],
                c["preclassified"],
                *prop(c["sensitivity"]),
                *prop(c["ppv"]),
                *prop(c["specificity"]),
            )
            for c in st["per_class"]
        ],
        "reclassified_to": {
            pre: "; ".join(f"{ver} {n}" for ver, n in to.items()) for pre, to in st["reclassified_to"].items()
        },
        "per_sample": [
            (r["sample_id"], r["n_cells"], r["n_changed"], *(fmt(r[c], 2) for c in CELL_CLASSES))
            for r in st["per_sample"][:MAX_LISTED_ROWS]
        ],
        "per_sample_more": max(0, len(st["per_sample"]) - MAX_LISTED_ROWS),
        "categories": st["categories"],
        "matrix": st["matrix"],  # rows verified, columns pre-classified
    }


def exclusion_lines(excluded: pl.DataFrame) -> pl.DataFrame:
    """The rows of excluded.parquet as the report lists them: one line per sample (or reference row)
    and reason, so a sample excluded as a whole is one line naming its measurands."""
    return (
        excluded.group_by(["sample_id", "source_row", "reason"], maintain_order=True)
        .agg(measurands=pl.col("measurand").drop_nulls().str.join(", "))
        .sort(["sample_id", "source_row"], nulls_last=False)
    )


def count_figures(html: str) -> int:
    return html.count('<div class="figure">')


def write_report(run_dir: Path, signatories: Sequence[Signatory] = (), out_dir: Path | None = None) -> ReportResult:
    """Render report.html, print report.pdf and write manifest.json into ``RUN/report`` (or
    ``out_dir``, for a copy outside the run). An existing report is never overwritten."""
    from wbcv.validation.pdf import find_chromium

    find_chromium()  # before any work: says how to install it
    run_dir = Path(run_dir)
    data = load_report_data(run_dir)
    document = RenderedReport(
        document_id=data.document_id,
        run_id=data.record.run_id,
        record_sha256=data.record_sha256,
        footer=f"{data.document_id} · {data.protocol.id} v{data.protocol.version}",
    )
    return seal_report(run_dir, document, lambda: render_html(data, signatories), signatories, out_dir)


@dataclass(frozen=True)
class RenderedReport:
    """What names a report: its document id, the run it is of, that run's run.json sha256, the PDF footer."""

    document_id: str
    run_id: str
    record_sha256: str
    footer: str


def seal_report(
    run_dir: Path,
    document: RenderedReport,
    render: Callable[[], str],
    signatories: Sequence[Signatory] = (),
    out_dir: Path | None = None,
) -> ReportResult:
    """Write ``render()`` as report.html, print report.pdf and seal both with manifest.json in ``RUN/report``
    (or ``out_dir``): the one way any run's report is written. An existing report is never overwritten."""
    from wbcv.validation.pdf import html_to_pdf

    inside = out_dir is None
    target = run_dir / REPORT_DIR if out_dir is None else Path(out_dir)
    if (target / REPORT_MANIFEST).exists() or (inside and target.exists()):
        raise WbcvError(
            f"{target}: a report already exists (document {document.document_id}); a report that may have been "
            "signed is never overwritten. Write a copy elsewhere with --out DIR."
        )
    html = render()
    staging = run_dir / REPORT_STAGING if inside else target
    run_mode = run_dir.stat().st_mode
    if inside:
        run_dir.chmod(run_mode | stat.S_IWUSR)  # the sealed run opens only for this one folder
    try:
        if inside and staging.exists():  # left by a `wbcv report` that was killed
            remove_tree(staging)
        staging.mkdir(parents=True, exist_ok=not inside)
        atomic_write_bytes(staging / REPORT_HTML, html.encode("utf-8"))
        html_to_pdf(staging / REPORT_HTML, staging / REPORT_PDF, document.footer, expected_figures=count_figures(html))
        manifest = {
            "format": REPORT_FORMAT,
            "document_id": document.document_id,
            "run_id": document.run_id,
            "run_record_sha256": document.record_sha256,
            "signatories": [s.__dict__ for s in signatories],
            "software": to_json(software_info()),
        }
        write_manifest(staging, REPORT_MANIFEST, manifest, REPORT_FILES)
        if inside:
            seal_directory(staging, target)
    except BaseException:
        if inside and staging.exists():
            remove_tree(staging)
        raise
    finally:
        if inside:
            run_dir.chmod(run_mode)
    return ReportResult(
        report_dir=target,
        html=target / REPORT_HTML,
        pdf=target / REPORT_PDF,
        manifest=target / REPORT_MANIFEST,
        manifest_sha256=sha256_file(target / REPORT_MANIFEST),
        document_id=document.document_id,
    )
