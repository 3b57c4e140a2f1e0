"""Acceptance on the Passing–Bablok regression (the criterion used for cleared analyzers, e.g.
slope 0.8–1.2 and |intercept| within a stated limit; ICSH 2019, CLSI EP09c).

Two bases, chosen by the protocol (``acceptance.regression_basis``):

* ``point_estimate``: the slope estimate lies in [low, high] and |intercept estimate| <= limit;
* ``ci``: the whole confidence interval of the slope lies in [low, high] and the whole CI of the
  intercept in [−limit, +limit] (an equivalence rule: the data show, at the protocol's confidence,
  that the true slope and intercept are within the limits). Stricter than the point estimate.

Boundaries are included. A criterion that cannot be judged (the regression was not computed, or
its CI is undefined) fails, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from wbcv.base.records import RegressionCriterion

__all__ = ["RegressionJudgement", "judge_regression", "within"]


def within(
    value: float | None,
    interval: tuple[float | None, float | None] | None,
    low: float,
    high: float,
    basis: Literal["point_estimate", "ci"],
) -> bool | None:
    """Whether the estimate (basis point_estimate) or its whole interval (basis ci) lies in [low, high];
    None when the needed number is missing."""
    if basis == "point_estimate":
        return None if value is None else low <= value <= high
    if interval is None or interval[0] is None or interval[1] is None:
        return None
    return low <= interval[0] and interval[1] <= high


@dataclass(frozen=True)
class RegressionJudgement:
    passed: bool
    reason: str


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


def judge_regression(
    fit: dict[str, Any], criterion: RegressionCriterion, basis: Literal["point_estimate", "ci"]
) -> RegressionJudgement:
    """Judge a Passing–Bablok fit (as in statistics.json: slope, slope_ci, intercept, intercept_ci)
    against the criterion (module docstring)."""
    if "not_computed" in fit or "slope" not in fit:
        return RegressionJudgement(False, f"Passing–Bablok not computed ({fit.get('not_computed', 'no fit')})")
    parts, ok = [], True
    what = "estimate" if basis == "point_estimate" else "CI"
    if criterion.slope is not None:
        lo, hi = criterion.slope
        res = within(fit["slope"], fit.get("slope_ci"), lo, hi, basis)
        ok &= bool(res)
        ci = fit.get("slope_ci") or (None, None)
        parts.append(
            f"slope {_fmt(fit['slope'])} (CI {_fmt(ci[0])} to {_fmt(ci[1])}): {what} "
            + ("undefined" if res is None else ("within" if res else "outside"))
            + f" [{lo:g}, {hi:g}]"
        )
    if criterion.intercept_abs is not None:
        a = criterion.intercept_abs
        res = within(fit["intercept"], fit.get("intercept_ci"), -a, a, basis)
        ok &= bool(res)
        ci = fit.get("intercept_ci") or (None, None)
        parts.append(
            f"intercept {_fmt(fit['intercept'])} (CI {_fmt(ci[0])} to {_fmt(ci[1])}): {what} "
            + ("undefined" if res is None else ("within" if res else "outside"))
            + f" ±{a:g}"
        )
    return RegressionJudgement(ok, "Passing–Bablok " + "; ".join(parts))
