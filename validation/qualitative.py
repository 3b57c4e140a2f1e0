"""Qualitative agreement of the analyzer's flags with the reference finding (CLSI EP12-A2).

One 2×2 table per flag (e.g. "blasts", "atypical lymphocytes"), the reference finding taken as the
comparator (not a diagnostic truth, hence "agreement", not sensitivity/specificity):

================  ===================  ===================
                  reference positive   reference negative
analyzer positive        a (TP)              b (FP)
analyzer negative        c (FN)              d (TN)
================  ===================  ===================

PPA = a / (a + c), NPA = d / (b + d), OPA = (a + d) / n, each with a Wilson score interval (the one
EP12-A2 uses) and a Clopper–Pearson exact interval; Cohen's kappa of the 2×2 table with its Wald
interval (the large-sample standard error of Fleiss, Cohen & Everitt 1969: ``cell_metrics``).

**Empty margin** (stated once): a proportion whose denominator is 0 (no reference-positive sample
for PPA, no reference-negative one for NPA, no sample at all for OPA) is undefined: its estimate
and both intervals are ``None`` — never 0 % or 100 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from wbcv.base.records import FlagAcceptance
from wbcv.validation.agreement import clopper_pearson
from wbcv.validation.cell_metrics import kappa_interval, weighted_kappa

__all__ = [
    "AgreementProportion",
    "FlagAgreement",
    "FlagVerdict",
    "flag_agreement",
    "flag_verdict",
    "proportion",
    "wilson_interval",
]


def _check(k: int, n: int, confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if not (isinstance(k, int) and isinstance(n, int)) or isinstance(k, bool) or isinstance(n, bool):
        raise ValueError(f"k and n must be whole numbers, got {k!r} and {n!r}")
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need n ≥ 1 and 0 ≤ k ≤ n, got k={k}, n={n}")


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion p̂ = k/n.

    (p̂ + z²/2n ± z·√(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n), z = Φ⁻¹(1 − α/2). The lower bound is
    exactly 0 for k = 0 and the upper exactly 1 for k = n (their exact values, which floating-point
    arithmetic misses by one ulp); bounds are clipped to [0, 1].

    Sources: Wilson E.B., JASA 22:209–212 (1927); Newcombe R.G., Stat Med 17:857–872 (1998),
    method 3; CLSI EP12-A2 (2008), the score confidence limits of PPA/NPA/OPA.
    """
    _check(k, n, confidence)
    z = float(stats.norm.ppf(1 - (1 - confidence) / 2))
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    lower = 0.0 if k == 0 else max(0.0, (centre - half) / scale)
    upper = 1.0 if k == n else min(1.0, (centre + half) / scale)
    return lower, upper


@dataclass(frozen=True)
class AgreementProportion:
    """k of n; estimate and intervals None when n = 0 (undefined, the empty-margin rule)."""

    k: int
    n: int
    estimate: float | None
    wilson: tuple[float, float] | None
    clopper_pearson: tuple[float, float] | None


def proportion(k: int, n: int, confidence: float = 0.95) -> AgreementProportion:
    """k/n with its Wilson and Clopper–Pearson intervals; all None for n = 0 (module docstring)."""
    if n == 0 and k == 0:
        return AgreementProportion(0, 0, None, None, None)
    _check(k, n, confidence)
    cp = clopper_pearson(k, n, confidence)
    return AgreementProportion(k, n, k / n, wilson_interval(k, n, confidence), (cp.lower, cp.upper))


@dataclass(frozen=True)
class FlagAgreement:
    flag: str
    true_positive: int  # a: both positive
    false_positive: int  # b: analyzer positive, reference negative
    false_negative: int  # c: analyzer negative, reference positive
    true_negative: int  # d: both negative
    ppa: AgreementProportion
    npa: AgreementProportion
    opa: AgreementProportion
    confidence: float
    kappa: float | None = None  # None: undefined (every sample in one row and the same column: p_e = 1)
    kappa_ci: tuple[float, float] | None = None  # Wald interval, not clipped to [-1, 1]

    @property
    def n(self) -> int:
        return self.true_positive + self.false_positive + self.false_negative + self.true_negative


def flag_agreement(flag: str, a: int, b: int, c: int, d: int, confidence: float = 0.95) -> FlagAgreement:
    """PPA = a/(a + c), NPA = d/(b + d), OPA = (a + d)/(a + b + c + d), with their intervals.

    Source: CLSI EP12-A2 (2008), *User Protocol for Evaluation of Qualitative Test Performance*,
    the 2×2 comparison with a non-reference comparator.
    """
    for name, v in (("a", a), ("b", b), ("c", c), ("d", d)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"cell {name} of the 2×2 table must be a whole number ≥ 0, got {v!r}")
    kappa, kappa_ci = _kappa(a, b, c, d, confidence)
    return FlagAgreement(
        flag=flag,
        true_positive=a,
        false_positive=b,
        false_negative=c,
        true_negative=d,
        ppa=proportion(a, a + c, confidence),
        npa=proportion(d, b + d, confidence),
        opa=proportion(a + d, a + b + c + d, confidence),
        confidence=confidence,
        kappa=kappa,
        kappa_ci=kappa_ci,
    )


def _kappa(a: int, b: int, c: int, d: int, confidence: float) -> tuple[float | None, tuple[float, float] | None]:
    """Cohen's kappa of the 2×2 table, (p_o − p_e)/(1 − p_e) (Cohen 1960), and its interval; None when
    undefined (no sample, or p_e = 1). Through ``cell_metrics.weighted_kappa(…, "none")``, the one kappa."""
    table = np.array([[a, b], [c, d]], dtype=np.float64)
    if table.sum() == 0:
        return None, None
    k = weighted_kappa(table, "none")
    if not math.isfinite(k):
        return None, None
    lo, hi = kappa_interval(table, "none", confidence)
    return k, ((lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None)


@dataclass(frozen=True)
class FlagVerdict:
    flag: str
    passed: bool
    reason: str


def _judged(name: str, p: AgreementProportion, minimum: float, basis: str) -> tuple[bool, str]:
    if p.estimate is None or p.wilson is None:
        return False, f"{name} undefined ({p.k}/{p.n}: no sample in this margin): not shown ≥ {100 * minimum:g} %"
    value = p.estimate if basis == "point_estimate" else p.wilson[0]
    what = f"{name} {100 * p.estimate:.1f} %" + (
        "" if basis == "point_estimate" else f" (lower bound {100 * value:.1f} %)"
    )
    ok = value >= minimum - 1e-12
    return ok, f"{what} {'≥' if ok else '<'} required {100 * minimum:g} %"


def flag_verdict(f: FlagAgreement, acceptance: FlagAcceptance) -> FlagVerdict:
    """A flag passes when its PPA and its NPA each reach the protocol's minimum, judged on the point
    estimate or on the lower bound of the Wilson interval (``acceptance.basis``; boundary included).
    An undefined proportion (empty margin) fails: agreement that was not observed is not shown.

    Source: CLSI EP12-A2 (2008): the acceptance of a qualitative comparison is fixed before the study.
    """
    ppa_ok, ppa_reason = _judged("PPA", f.ppa, acceptance.min_ppa, acceptance.basis)
    npa_ok, npa_reason = _judged("NPA", f.npa, acceptance.min_npa, acceptance.basis)
    return FlagVerdict(f.flag, ppa_ok and npa_ok, f"{ppa_reason}; {npa_reason}")
