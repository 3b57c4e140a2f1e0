"""Per-measurand statistics and the acceptance verdict of a comparison.

For every measurand of the protocol, on the values that were not excluded:

* **coverage**: k of n samples within the allowable error (``within_limit`` of the comparison
  table, which already applies the absolute limit for low values), with its Clopper–Pearson CI;
* **coverage error**: the |error %| that covers the required fraction of samples (the blue line of
  the verification plot), with a bootstrap CI; samples judged on an absolute limit with a zero
  reference have no relative error and are left out of this figure only;
* **sampling floor**: the mean over samples of the probability that counting alone keeps the
  error within the limit (``wbcv.validation.sampling``), i.e. the coverage a perfect classifier would
  be expected to reach on this batch;
* **sample-size planning**: how many samples would show the criterion at the lower confidence
  bound if the true coverage were the observed one (``wbcv.validation.sampling.samples_needed``);
* method comparison: Bland–Altman (absolute and percent), Passing–Bablok with the CUSUM test,
  Deming, OLS, Lin's CCC, Pearson and Spearman, and bias at the protocol's decision levels.

Verdict of a measurand: the coverage (``basis: point_estimate``) or its Clopper–Pearson lower
bound (``basis: lower_bound``) must reach ``required_coverage``. The reason states the numbers;
a failure is attributed to counting when the sampling floor itself is below the requirement.
Overall: every measurand passes, and at least one value was compared.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from wbcv.base.records import DomainCheck, OutlierRule
from wbcv.validation import agreement, bias_range, regression, sampling
from wbcv.validation.comparison_outliers import OutlierScreen, screen_outliers, without_outliers
from wbcv.validation.protocol import Protocol
from wbcv.validation.regression_acceptance import judge_regression


@dataclass(frozen=True)
class MeasurandVerdict:
    measurand: str
    n: int
    n_within: int
    coverage: float | None
    coverage_lower: float | None
    coverage_upper: float | None
    confidence: float  # two-sided level of the coverage interval (the protocol's)
    required_coverage: float
    basis: str
    allowable_error_pct: float
    absolute_limit: float | None
    coverage_error_pct: float | None  # the error covering required_coverage of samples
    sampling_floor: float | None  # expected coverage of a perfect classifier on this batch
    passed: bool
    reason: str
    regression_passed: bool | None = None  # None: the protocol sets no regression criterion
    n_outliers: int = 0  # listed by generalized ESD (statistics.json: outliers)
    outliers_removed: bool = False  # the verdict was judged without them (protocol outliers.verdict)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tuples, numpy scalars and NaN into plain JSON values (NaN -> null)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _attempt(fn: Callable[[], Any]) -> Any:
    """A statistic that cannot be computed on these data (too few points, no spread) is reported
    with the reason instead of stopping the whole comparison."""
    try:
        return to_jsonable(fn())
    except (ValueError, ZeroDivisionError, np.linalg.LinAlgError) as e:
        return {"not_computed": str(e)}


def _fit(fn: Callable[[], regression.RegressionResult]) -> regression.RegressionResult | dict[str, str]:
    """A regression result, or why it could not be computed (kept as the object: fitted once, its
    bias at the decision levels is read from it)."""
    try:
        return fn()
    except (ValueError, ZeroDivisionError, np.linalg.LinAlgError) as e:
        return {"not_computed": str(e)}


def measurand_statistics(rows: pl.DataFrame, protocol: Protocol, measurand: str) -> dict[str, Any]:
    """The method-comparison statistics of one measurand (test = predicted, reference = reference),
    every interval at the protocol's confidence. Each regression is fitted once; the bias at the
    protocol's decision levels is read from those fits (``RegressionResult.bias_at``). The
    quadratic parts of Passing–Bablok and the weighted-Deming jackknife switch to their large-n
    algorithms above ``regression.LARGE_N`` pairs (``benchmarks/bench_stats.py``)."""
    ref, pred = rows["reference"].to_numpy(), rows["predicted"].to_numpy()
    errors = rows["error_pct"].drop_nulls().to_numpy()
    levels = protocol.decision_levels.get(measurand, ())
    alpha = 1 - protocol.confidence
    fits = {
        "passing_bablok": _fit(lambda: regression.passing_bablok(ref, pred, alpha)),
        "deming": _fit(lambda: regression.deming(ref, pred, 1.0, alpha)),
        "weighted_deming": _fit(lambda: regression.weighted_deming(ref, pred, 1.0, alpha)),
        "ols": _fit(lambda: regression.ols(ref, pred, alpha)),
    }
    out: dict[str, Any] = {
        "coverage_error": _attempt(
            lambda: agreement.coverage_error(errors, protocol.required_coverage, confidence=protocol.confidence)
        ),
        "bland_altman_absolute": _attempt(lambda: agreement.bland_altman(pred, ref, "absolute", protocol.confidence)),
        "bland_altman_percent": _attempt(lambda: agreement.bland_altman(pred, ref, "percent", protocol.confidence)),
        **{name: to_jsonable(fit) for name, fit in fits.items()},
        "lins_ccc": _attempt(lambda: agreement.lins_ccc(ref, pred, protocol.confidence)),
        "pearson": _attempt(lambda: agreement.pearson(ref, pred, protocol.confidence)),
        "spearman": _attempt(lambda: agreement.spearman(ref, pred, protocol.confidence)),
    }
    if levels:
        out["bias_at_decision_levels"] = {
            name: fit if isinstance(fit, dict) else _attempt(functools.partial(fit.bias_at, levels))
            for name, fit in fits.items()
            if name != "ols"
        }
    return out


def _coverage_verdict(
    rows: pl.DataFrame, protocol: Protocol, name: str, st: dict[str, Any] | None = None
) -> MeasurandVerdict:
    """The coverage criterion of one measurand on these rows; ``st``: their statistics
    (:func:`measurand_statistics`), for the coverage error."""
    rule = protocol.measurands[name]
    n = rows.height
    common: dict[str, Any] = {
        "measurand": name,
        "n": n,
        "confidence": protocol.confidence,
        "required_coverage": protocol.required_coverage,
        "basis": protocol.basis,
        "allowable_error_pct": rule.allowable_error_pct,
        "absolute_limit": rule.absolute_limit,
    }
    if n == 0:
        return MeasurandVerdict(
            **common,
            n_within=0,
            coverage=None,
            coverage_lower=None,
            coverage_upper=None,
            coverage_error_pct=None,
            sampling_floor=None,
            passed=False,
            reason="no sample could be compared (see the excluded list)",
        )
    k = int(rows["within_limit"].sum())
    ci = agreement.clopper_pearson(k, n, protocol.confidence)
    floor_values = rows["counting_coverage"].drop_nulls()
    floor = float(floor_values.mean()) if floor_values.len() == n else None  # type: ignore[arg-type]
    ce = (st or {}).get("coverage_error")
    judged = ci.estimate if protocol.basis == "point_estimate" else ci.lower
    passed = judged >= protocol.required_coverage
    limit = f"±{rule.allowable_error_pct:g} %" + (
        f" or ±{rule.absolute_limit:g} (absolute)" if rule.absolute_limit is not None else ""
    )
    what = "observed coverage" if protocol.basis == "point_estimate" else "lower confidence bound of the coverage"
    reason = (
        f"{k} of {n} samples within {limit}: coverage {100 * ci.estimate:.1f} % "
        f"({100 * protocol.confidence:g} % CI {100 * ci.lower:.1f}–{100 * ci.upper:.1f} %); "
        f"{what} {100 * judged:.1f} % {'≥' if passed else '<'} required {100 * protocol.required_coverage:g} %"
    )
    if not passed and floor is not None:
        if floor < protocol.required_coverage:
            reason += (
                f"; even a perfect classifier would be expected to reach only {100 * floor:.1f} % with these "
                "cell counts (sampling floor): count more cells per slide"
            )
        else:
            reason += f"; the sampling floor is {100 * floor:.1f} %, so the shortfall is the classifier's"
    return MeasurandVerdict(
        **common,
        n_within=k,
        coverage=ci.estimate,
        coverage_lower=ci.lower,
        coverage_upper=ci.upper,
        coverage_error_pct=ce.get("error_pct") if isinstance(ce, dict) else None,
        sampling_floor=floor,
        passed=passed,
        reason=reason,
    )


def _with_regression(v: MeasurandVerdict, st: dict[str, Any], protocol: Protocol) -> MeasurandVerdict:
    """The verdict with the measurand's regression criterion (if the protocol sets one) applied."""
    criterion = protocol.measurands[v.measurand].regression
    if criterion is None or v.n == 0:
        return v
    fit = st.get("passing_bablok")
    judgement = judge_regression(fit if isinstance(fit, dict) else {}, criterion, protocol.regression_basis)
    st["regression_acceptance"] = {
        "basis": protocol.regression_basis,
        "slope": criterion.slope,
        "intercept_abs": criterion.intercept_abs,
        "passed": judgement.passed,
        "reason": judgement.reason,
    }
    mark = "met" if judgement.passed else "NOT met"
    return dataclasses.replace(
        v,
        passed=v.passed and judgement.passed,
        regression_passed=judgement.passed,
        reason=f"{v.reason}; regression criterion {mark}: {judgement.reason}",
    )


def _counting_interval_statistics(rows: pl.DataFrame, confidence: float) -> dict[str, Any]:
    """Against a manual reference: how many values lie within the reference's counting interval
    (``within_reference_interval``), with the Clopper–Pearson interval of that share; nothing when
    the reference has no counting interval. Reported beside the error % criterion, not part of the
    verdict."""
    if "within_reference_interval" not in rows.columns:
        return {}
    flags = rows["within_reference_interval"].drop_nulls()
    if flags.is_empty():
        return {}
    k, n = int(flags.sum()), flags.len()
    ci = agreement.clopper_pearson(k, n, confidence)
    return {"within_reference_interval": {"k": k, "n": n, "share": k / n, "ci": [ci.lower, ci.upper]}}


def _range_statistics(rows: pl.DataFrame, protocol: Protocol, name: str) -> dict[str, Any]:
    """Bias by concentration interval (protocol cut points, else tertiles of the reference) and,
    when the protocol asks for them, the regression-based limits of agreement."""
    ref = rows["reference"].to_numpy()
    cuts = protocol.bias_intervals.get(name)
    source = "protocol" if cuts else "tertiles of the reference values"
    err = rows["error_pct"].fill_null(float("nan")).to_numpy()
    diff = (rows["predicted"] - rows["reference"]).to_numpy()

    def by_interval() -> dict[str, Any]:
        edges = cuts or bias_range.tertile_cuts(ref)
        rows_out = bias_range.bias_by_interval(ref, diff, err, edges, protocol.confidence)
        return {"cuts": list(edges), "source": source, "intervals": to_jsonable(rows_out)}

    out: dict[str, Any] = {"bias_by_interval": _attempt(by_interval)}
    if protocol.difference_limits == "regression":
        means = ((rows["reference"] + rows["predicted"]) / 2).to_numpy()
        out["regression_limits"] = _attempt(lambda: bias_range.regression_limits(means, diff, 0.95))
    return out


def _outlier_screen(rows: pl.DataFrame, protocol: Protocol) -> OutlierScreen:
    return screen_outliers(rows, protocol.outliers or OutlierRule())


def decide(table: pl.DataFrame, protocol: Protocol) -> tuple[list[MeasurandVerdict], dict[str, Any]]:
    """Verdict and statistics per measurand, in protocol order.

    Outliers (generalized ESD on the differences, ``wbcv.validation.comparison_outliers``) are
    listed under ``outliers`` of each measurand's statistics. With ``outliers.verdict: without``
    the coverage, the regression criterion and every statistic are computed without them, and
    ``verdict_with_all_samples`` holds the verdict on all samples; otherwise all samples count.
    """
    verdicts: list[MeasurandVerdict] = []
    stats: dict[str, Any] = {}
    drop = protocol.outliers is not None and protocol.outliers.verdict == "without"
    for name in protocol.measurands:
        all_rows = table.filter(pl.col("measurand") == name)
        if all_rows.height == 0:
            verdicts.append(_coverage_verdict(all_rows, protocol, name))
            continue
        screen = _outlier_screen(all_rows, protocol)
        rows = without_outliers(all_rows, screen) if drop else all_rows
        st = measurand_statistics(rows, protocol, name)
        v = _coverage_verdict(rows, protocol, name, st)
        st.update(_range_statistics(rows, protocol, name))
        st.update(_counting_interval_statistics(rows, protocol.confidence))
        st["outliers"] = to_jsonable(screen)
        # Planning: if the true coverage were what this batch shows, how many samples would show
        # the criterion at the Clopper-Pearson lower bound? (Undefined when it is not above the requirement.)
        st["samples_needed_at_observed_coverage"] = _attempt(
            functools.partial(
                sampling.samples_needed,
                expected_coverage=v.coverage or 0.0,  # n > 0 here: the coverage is a number
                required_coverage=protocol.required_coverage,
                confidence=protocol.confidence,
            )
        )
        v = dataclasses.replace(_with_regression(v, st, protocol), n_outliers=len(screen.outliers))
        if drop and screen.outliers:
            st_all = measurand_statistics(all_rows, protocol, name)
            full = _with_regression(_coverage_verdict(all_rows, protocol, name, st_all), st_all, protocol)
            st["verdict_with_all_samples"] = to_jsonable(full)
            v = dataclasses.replace(
                v,
                outliers_removed=True,
                reason=f"judged without {len(screen.outliers)} outlier(s) (generalized ESD, listed): {v.reason}; "
                f"with all {all_rows.height} samples: {'PASS' if full.passed else 'FAIL'}",
            )
        stats[name] = st
        verdicts.append(v)
    return verdicts, stats


def overall(verdicts: list[MeasurandVerdict]) -> bool:
    return bool(verdicts) and all(v.passed for v in verdicts)


def domain_failure(domain: DomainCheck, protocol: Protocol) -> str | None:
    """Why the comparison fails the protocol's ``require_in_domain``, or None.

    With ``require_in_domain: true`` the batch must be *shown* in domain: out of domain fails, and
    so does not_checked (a model without a domain profile cannot show it)."""
    if not protocol.require_in_domain or domain.verdict == "in_domain":
        return None
    if domain.verdict == "out_of_domain":
        return (
            f"batch out of domain: score {domain.score:.2f} above the model's threshold {domain.threshold:.2f} "
            f"({len(domain.slides_out_of_domain)} slide(s) out of domain); the protocol requires require_in_domain"
        )
    why = domain.method.removeprefix("none: ") if domain.method.startswith("none:") else "too few cells scored"
    return f"batch domain not checked ({why}); the protocol requires require_in_domain"


def coverage_error_label(required_coverage: float) -> str:
    """Short name of the error that covers the required fraction of samples: E95 for 95 %."""
    return f"E{100 * required_coverage:g}"


def format_verdicts(verdicts: list[MeasurandVerdict]) -> str:
    """The verdict table as text; the CI and coverage-error columns are labelled with the protocol's
    confidence and required coverage (the same for every measurand of a comparison)."""
    confidence = verdicts[0].confidence if verdicts else 0.95
    required = verdicts[0].required_coverage if verdicts else 0.95
    ci_head, e_head = f"{100 * confidence:g}% CI", f"{coverage_error_label(required)} %"
    head = f"{'measurand':<10} {'n':>5} {'within':>7} {'coverage':>9} {ci_head:>15} {e_head:>7} {'floor':>7}  verdict"
    lines = [head, "-" * len(head)]
    for v in verdicts:
        cov = "-" if v.coverage is None else f"{100 * v.coverage:.1f} %"
        ci = "-" if v.coverage_lower is None else f"{100 * v.coverage_lower:.1f}–{100 * v.coverage_upper:.1f} %"  # type: ignore[operator]
        e95 = "-" if v.coverage_error_pct is None else f"{v.coverage_error_pct:.1f}"
        floor = "-" if v.sampling_floor is None else f"{100 * v.sampling_floor:.1f} %"
        lines.append(
            f"{v.measurand:<10} {v.n:>5} {v.n_within:>7} {cov:>9} {ci:>15} {e95:>7} {floor:>7}  "
            f"{'PASS' if v.passed else 'FAIL'}"
        )
    lines.append("")
    lines += [f"{v.measurand}: {v.reason}" for v in verdicts]
    lines.append("")
    lines.append(f"OVERALL: {'PASS' if overall(verdicts) else 'FAIL'}")
    return "\n".join(lines)
