"""Precision studies (CLSI EP05-A3, EP15-A3): variance components of a nested design and claim verification.

Designs handled, one sample (level) and measurand at a time:

* **EP05-A3** day / run / replicate (the full design is 20 days × 2 runs × 2 replicates):
  repeatability, between-run, between-day and within-laboratory variance;
* **EP15-A3** day / replicate (5 days × 5 replicates): repeatability, between-day and
  within-laboratory variance (no run factor: ``run`` left out).

Estimation: the ANOVA (method-of-moments, Type I) estimator of the random nested model
``y_ijk = μ + D_i + R_ij + e_ijk``, which for unbalanced data uses the expected-mean-square
coefficients of Searle, Casella & McCulloch, *Variance Components* (Wiley 1992), "the 2-way
nested classification" (the same estimator as SAS PROC NESTED and R package VCA's ``anovaVCA``).
Balanced and unbalanced data go through the same formulas; for balanced data they reduce to
the EP05-A3 / EP15-A3 worksheets (``V_run = (MS_run − MS_err)/n`` and so on).

**Negative estimates** (a rule, stated once): a variance component whose ANOVA estimate is
negative is reported as 0 (its raw estimate kept in ``raw_variance``) and contributes nothing to
the within-laboratory variance — EP05-A3's rule and VCA's ``NegVC = FALSE``. The components
below it are estimated from the raw, untruncated values (the moment equations are solved
first, then truncated), as SAS PROC NESTED and VCA do.

**Confidence intervals**: for the repeatability SD, the chi-square interval with the error
degrees of freedom; for the within-laboratory SD, the chi-square interval with Satterthwaite's
degrees of freedom (EP05-A3; Satterthwaite, Biometrics Bulletin 2:110, 1946), computed from
the "adapted" mean squares ``D · VC⁺`` (VC⁺ = the truncated components, D the matrix of expected
mean-square coefficients; VCA's rule for the total when a component is negative). EP05-A3 gives
no interval for the between-run and between-day components: they are reported without one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import stats

__all__ = [
    "ClaimVerification",
    "NestedAnova",
    "PrecisionResult",
    "VarianceComponent",
    "binomial_floor_sd_pct",
    "chi_square_sd_interval",
    "components_from_anova",
    "nested_anova",
    "precision_study",
    "satterthwaite_df",
    "uvl_factor",
    "verify_claim",
]

REPEATABILITY: Final[str] = "repeatability"
BETWEEN_RUN: Final[str] = "between-run"
BETWEEN_DAY: Final[str] = "between-day"
WITHIN_LAB: Final[str] = "within-laboratory"


@dataclass(frozen=True)
class NestedAnova:
    """The ANOVA table of the day / run / replicate design and its expected-mean-square coefficients.

    ``ms_day = σ²_e + k_run_in_day · σ²_run + k_day · σ²_day``, ``ms_run = σ²_e + k_run · σ²_run``,
    ``ms_error = σ²_e``. Without a run factor (EP15-A3) ``df_run`` is 0 and the run terms vanish.
    """

    n_obs: int
    n_days: int
    n_runs: int  # runs in all (a run is a day's run: run "1" of day 1 is not run "1" of day 2)
    mean: float
    balanced: bool
    ss_day: float
    ss_run: float
    ss_error: float
    df_day: int
    df_run: int
    df_error: int
    k_run: float  # coefficient of σ²_run in E[MS_run]
    k_run_in_day: float  # coefficient of σ²_run in E[MS_day]
    k_day: float  # coefficient of σ²_day in E[MS_day]

    @property
    def ms_day(self) -> float:
        return self.ss_day / self.df_day

    @property
    def ms_run(self) -> float:
        return self.ss_run / self.df_run if self.df_run else math.nan

    @property
    def ms_error(self) -> float:
        return self.ss_error / self.df_error

    @property
    def has_runs(self) -> bool:
        return self.df_run > 0


def _codes(labels: Sequence[object] | np.ndarray, name: str, n: int) -> np.ndarray:
    arr = np.asarray(labels, dtype=object)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have one label per value ({n}), got shape {arr.shape}")
    _, codes = np.unique(arr.astype(str), return_inverse=True)
    return codes.ravel()


def _run_codes(day: Sequence[object] | np.ndarray, run: Sequence[object], n: int) -> np.ndarray:
    """One code per (day, run): a run is nested in its day."""
    if len(run) != n:
        raise ValueError(f"run must have one label per value ({n}), got {len(run)}")
    return _codes([f"{a}\x1f{b}" for a, b in zip(np.asarray(day, dtype=object), run, strict=True)], "run", n)


def nested_anova(
    day: Sequence[object] | np.ndarray, value: Sequence[float] | np.ndarray, run: Sequence[object] | None = None
) -> NestedAnova:
    """Sums of squares, degrees of freedom and EMS coefficients of the nested random model.

    With ``a`` days, ``B`` runs in all, ``n_ij`` replicates in run j of day i, ``n_i = Σ_j n_ij``,
    ``N = Σ n_ij``:

    * SS_day = Σ_i n_i (ȳ_i − ȳ)², df a − 1; SS_run = Σ_ij n_ij (ȳ_ij − ȳ_i)², df B − a;
      SS_error = Σ (y − ȳ_ij)², df N − B;
    * k_run = (N − Σ_i Σ_j n_ij² / n_i) / (B − a);
      k_run_in_day = (Σ_i Σ_j n_ij² / n_i − Σ_ij n_ij² / N) / (a − 1);
      k_day = (N − Σ_i n_i² / N) / (a − 1).

    Source: Searle, Casella & McCulloch (1992), *Variance Components*, the 2-way nested
    classification (unbalanced data); for balanced data k_run = n, k_run_in_day = n,
    k_day = b·n (CLSI EP05-A3, Appendix). ``run`` None: one run per day (EP15-A3).
    """
    y = np.asarray(value, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"value must be one-dimensional, got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("value holds NaN or infinite numbers; exclude them (with a reason) before the analysis")
    n = y.size
    d = _codes(day, "day", n)
    r = d if run is None else _run_codes(day, run, n)
    a = int(d.max()) + 1 if n else 0
    n_runs = int(r.max()) + 1 if n else 0
    if a < 2:
        raise ValueError(f"at least 2 days are needed for a between-day component, got {a}")
    if n - n_runs < 1:
        raise ValueError("no run has two replicates: repeatability cannot be estimated")
    run_day = np.zeros(n_runs, dtype=int)
    run_day[r] = d
    n_ij = np.bincount(r, minlength=n_runs).astype(float)
    n_i = np.bincount(d, minlength=a).astype(float)
    mean_ij = np.bincount(r, weights=y, minlength=n_runs) / n_ij
    mean_i = np.bincount(d, weights=y, minlength=a) / n_i
    grand = float(y.mean())
    ss_day = float(np.sum(n_i * (mean_i - grand) ** 2))
    ss_run = float(np.sum(n_ij * (mean_ij - mean_i[run_day]) ** 2))
    ss_error = float(np.sum((y - mean_ij[r]) ** 2))
    sum_nij2_over_ni = float(np.sum(n_ij**2 / n_i[run_day]))
    df_run = n_runs - a
    return NestedAnova(
        n_obs=n,
        n_days=a,
        n_runs=n_runs,
        mean=grand,
        balanced=bool(np.all(n_ij == n_ij[0]) and np.all(np.bincount(run_day) == n_runs // a)),
        ss_day=ss_day,
        ss_run=ss_run,
        ss_error=ss_error,
        df_day=a - 1,
        df_run=df_run,
        df_error=n - n_runs,
        k_run=(n - sum_nij2_over_ni) / df_run if df_run else math.nan,
        k_run_in_day=(sum_nij2_over_ni - float(np.sum(n_ij**2)) / n) / (a - 1) if df_run else 0.0,
        k_day=(n - float(np.sum(n_i**2)) / n) / (a - 1),
    )


def _ems_matrix(t: NestedAnova) -> np.ndarray:
    """D with E[MS] = D · (σ²_day, σ²_run, σ²_e) (rows MS_day, MS_run, MS_error); without runs, 2 × 2."""
    if t.has_runs:
        return np.array([[t.k_day, t.k_run_in_day, 1.0], [0.0, t.k_run, 1.0], [0.0, 0.0, 1.0]])
    return np.array([[t.k_day, 1.0], [0.0, 1.0]])


def _mean_squares(t: NestedAnova) -> tuple[np.ndarray, np.ndarray]:
    if t.has_runs:
        return np.array([t.ms_day, t.ms_run, t.ms_error]), np.array([t.df_day, t.df_run, t.df_error], dtype=float)
    return np.array([t.ms_day, t.ms_error]), np.array([t.df_day, t.df_error], dtype=float)


def satterthwaite_df(
    coefficients: Sequence[float] | np.ndarray,
    mean_squares: Sequence[float] | np.ndarray,
    df: Sequence[float] | np.ndarray,
) -> float:
    """Effective degrees of freedom of a linear combination V = Σ c_i·MS_i of mean squares.

    ν = (Σ c_i MS_i)² / Σ ((c_i MS_i)² / df_i). Undefined (NaN) when V is 0 (no variation at all).

    Source: Satterthwaite F.E., Biometrics Bulletin 2:110–114 (1946); CLSI EP05-A3 (within-laboratory
    degrees of freedom) and EP15-A3 (the same formula for the 1-factor design).
    """
    c, ms, d = (np.asarray(v, dtype=float) for v in (coefficients, mean_squares, df))
    terms = c * ms
    denominator = float(np.sum(terms**2 / d))
    if denominator == 0.0:
        return math.nan
    return float(np.sum(terms)) ** 2 / denominator


def chi_square_sd_interval(sd: float, df: float, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided interval of a standard deviation with ν degrees of freedom.

    [s·√(ν / χ²(1 − α/2; ν)), s·√(ν / χ²(α/2; ν))], α = 1 − confidence. NaN bounds when ν is not a
    positive number (undefined).

    Source: CLSI EP05-A3, confidence limits of repeatability and within-laboratory SD.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if not (math.isfinite(df) and df > 0):
        return math.nan, math.nan
    a = 1.0 - confidence
    return (
        sd * math.sqrt(df / float(stats.chi2.ppf(1 - a / 2, df))),
        sd * math.sqrt(df / float(stats.chi2.ppf(a / 2, df))),
    )


@dataclass(frozen=True)
class VarianceComponent:
    """One component: variance (negative estimates reported as 0), SD, CV %, df and the SD's interval.

    ``cv_pct`` is NaN when the mean is 0 (undefined); ``df`` and the interval are None where the
    guideline gives none (between-run, between-day).
    """

    name: str
    variance: float
    raw_variance: float  # the ANOVA estimate before the negative-to-zero rule
    sd: float
    cv_pct: float
    df: float | None
    sd_lower: float | None
    sd_upper: float | None

    @property
    def truncated(self) -> bool:
        return self.raw_variance < 0


@dataclass(frozen=True)
class PrecisionResult:
    anova: NestedAnova
    components: tuple[VarianceComponent, ...]  # repeatability, [between-run,] between-day, within-laboratory
    confidence: float

    @property
    def mean(self) -> float:
        return self.anova.mean

    def component(self, name: str) -> VarianceComponent:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def repeatability(self) -> VarianceComponent:
        return self.component(REPEATABILITY)

    @property
    def within_lab(self) -> VarianceComponent:
        return self.component(WITHIN_LAB)


def _cv(sd: float, mean: float) -> float:
    return 100.0 * sd / abs(mean) if mean != 0 else math.nan


def precision_study(
    day: Sequence[object] | np.ndarray,
    value: Sequence[float] | np.ndarray,
    run: Sequence[object] | None = None,
    confidence: float = 0.95,
) -> PrecisionResult:
    """Variance components, SDs, CVs and intervals of one sample's precision experiment.

    Moment equations ``MS = D · VC`` solved for VC = (σ²_day, [σ²_run,] σ²_e); negative estimates
    set to 0; within-laboratory variance = sum of the truncated components; its degrees of freedom
    by Satterthwaite on the adapted mean squares ``D · VC⁺`` with coefficients ``1ᵀ D⁻¹`` (module
    docstring). CV % = 100 · SD / |mean|.

    Sources: CLSI EP05-A3 (2014), Appendix; CLSI EP15-A3 (2014); Searle et al. (1992).
    """
    return components_from_anova(nested_anova(day, value, run), confidence)


def components_from_anova(t: NestedAnova, confidence: float = 0.95) -> PrecisionResult:
    """The variance components, SDs, CVs and intervals of an ANOVA table (:func:`precision_study` without
    the data: a table printed in a guideline's worked example can be checked directly)."""
    d = _ems_matrix(t)
    ms, df = _mean_squares(t)
    raw = np.linalg.solve(d, ms)
    vc = np.maximum(raw, 0.0)
    total = float(vc.sum())
    coef = np.ones(len(vc)) @ np.linalg.inv(d)
    df_total = satterthwaite_df(coef, d @ vc, df)
    names = (BETWEEN_DAY, BETWEEN_RUN, REPEATABILITY) if t.has_runs else (BETWEEN_DAY, REPEATABILITY)
    by_name: dict[str, VarianceComponent] = {}
    for name, v, v_raw in zip(names, vc, raw, strict=True):
        sd = math.sqrt(float(v))
        if name == REPEATABILITY:
            lo, hi = chi_square_sd_interval(sd, t.df_error, confidence)
            by_name[name] = VarianceComponent(name, float(v), float(v_raw), sd, _cv(sd, t.mean), t.df_error, lo, hi)
        else:
            by_name[name] = VarianceComponent(name, float(v), float(v_raw), sd, _cv(sd, t.mean), None, None, None)
    sd_total = math.sqrt(total)
    lo, hi = chi_square_sd_interval(sd_total, df_total, confidence)
    by_name[WITHIN_LAB] = VarianceComponent(WITHIN_LAB, total, total, sd_total, _cv(sd_total, t.mean), df_total, lo, hi)
    order = [n for n in (REPEATABILITY, BETWEEN_RUN, BETWEEN_DAY, WITHIN_LAB) if n in by_name]
    return PrecisionResult(anova=t, components=tuple(by_name[n] for n in order), confidence=confidence)


def uvl_factor(df: float, n_samples: int = 1, alpha: float = 0.05) -> float:
    """EP15-A3 upper-verification-limit factor F = √(χ²(1 − α/ℓ; ν) / ν).

    ℓ = the number of samples (levels) tested in the verification (a Bonferroni correction, so that
    the family of ℓ verifications keeps a false-rejection rate of α); ν = the degrees of freedom of
    the SD being verified (repeatability: D·(n − 1); within-laboratory: Satterthwaite's).
    UVL = F · claimed SD (or claimed CV). NaN for a df that is not positive.

    Source: CLSI EP15-A3 (2014), user verification of precision, "upper verification limit".
    """
    if not (isinstance(n_samples, int) and n_samples >= 1):
        raise ValueError(f"n_samples must be a whole number ≥ 1, got {n_samples!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if not (math.isfinite(df) and df > 0):
        return math.nan
    return math.sqrt(float(stats.chi2.ppf(1 - alpha / n_samples, df)) / df)


@dataclass(frozen=True)
class ClaimVerification:
    """An observed SD (or CV) against the maker's claim: verified when observed ≤ claim, or ≤ UVL."""

    component: str
    observed: float
    claim: float
    df: float
    factor: float
    uvl: float
    verified: bool | None  # None: undefined (no degrees of freedom)
    reason: str


def verify_claim(
    component: str, observed: float, claim: float, df: float, n_samples: int = 1, alpha: float = 0.05
) -> ClaimVerification:
    """EP15-A3 decision: observed ≤ claim → verified; else observed ≤ UVL = F·claim → verified (the
    difference is not significant at α); else not verified. Undefined (None) when df is not positive.

    Source: CLSI EP15-A3 (2014).
    """
    if not claim > 0:
        raise ValueError(f"the claimed value must be above 0, got {claim!r}")
    f = uvl_factor(df, n_samples, alpha)
    uvl = f * claim
    if math.isnan(f):
        return ClaimVerification(component, observed, claim, df, f, uvl, None, "undefined: no degrees of freedom")
    if observed <= claim:
        return ClaimVerification(component, observed, claim, df, f, uvl, True, "observed ≤ claim")
    if observed <= uvl:
        return ClaimVerification(component, observed, claim, df, f, uvl, True, "claim < observed ≤ UVL")
    return ClaimVerification(component, observed, claim, df, f, uvl, False, "observed > UVL")


def binomial_floor_sd_pct(percent: float, n_cells: int) -> float:
    """SD (percentage points) of a class percentage that counting n cells alone causes.

    100·√(p(1 − p)/n) with p = percent/100: for a neutrophil share of 60 % on 200 cells, 3.46 points.
    Undefined (NaN) for n < 1 or a percentage outside 0–100.

    Source: the binomial model of the differential count, CLSI H20-A2 (2007); Rümke (1960).
    """
    if not (isinstance(n_cells, int | np.integer) and n_cells >= 1) or not 0 <= percent <= 100:
        return math.nan
    p = percent / 100.0
    return 100.0 * math.sqrt(p * (1.0 - p) / n_cells)
