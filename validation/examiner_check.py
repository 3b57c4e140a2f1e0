"""Counting-error checks of a manual differential (CLSI H20): between examiners, and against it.

**Between examiners.** H20's reference count is 400 cells per sample, 200 by each of two examiners;
their two counts of a class should differ by no more than counting alone explains. The rule used
here: for each class, the two examiners' counts k1 of n1 and k2 of n2 (n: the cells of the five
classes each counted) form a 2 x 2 table [[k1, n1 - k1], [k2, n2 - k2]]; the class is flagged when
**Fisher's exact test** (two-sided, scipy's definition: the sum of the probabilities of all tables
with the same margins that are no more probable than the one observed) gives p < alpha (0.05).
Fisher's test is exact for binomial counts with small expectations (basophils at 1 %: two
cells in 200), where a normal-approximation two-proportion z-test is not. Sources: Fisher R.A.,
The Design of Experiments (1935), the tea-tasting table; Agresti A., Categorical Data Analysis,
2nd ed. (2002), section 3.5.1, Table 3.8 (p = 0.486). Each class is tested on its own at alpha:
with five classes, two examiners who agree in truth have a sample flagged for at least one class
with probability up to 1 - 0.95^5 = 23 % (less, since Fisher's test is conservative); a flag
asks for a look (or a recount), it is not a verdict.

**The analyzer against the reference's counting interval.** An analyzer value is *within the
reference's counting interval* when it lies inside the exact (Clopper–Pearson, 1934) 95 % interval
of the reference's k of n (``wbcv.validation.agreement.clopper_pearson``): the range of true
percentages the manual count cannot rule out. Rümke's table (Rümke 1960, reproduced in H20)
gives, for 100- to 1,000-cell counts, 95 % limits that are slightly different from the exact
ones: it was computed by older approximations and is rounded to whole percent, e.g. 9 % of a
100-cell count: Clopper–Pearson 4.2-16.4 %, Rümke 4-17 % (H20 example; binomial ±2 SD gives
3-15 %). wbcv uses the exact limits at any n rather than a table lookup.
"""

from __future__ import annotations

from typing import Final

from scipy.stats import fisher_exact

#: The level below which two examiners' counts of a class are flagged as differing.
EXAMINER_ALPHA: Final[float] = 0.05


def examiner_difference_p(k1: int, n1: int, k2: int, n2: int) -> float | None:
    """Two-sided p of Fisher's exact test that two examiners' counts k1/n1 and k2/n2 of a class
    come from one proportion (module docstring). None when either examiner counted no cell (n = 0)."""
    for k, n in ((k1, n1), (k2, n2)):
        if not 0 <= k <= n:
            raise ValueError(f"a count k must lie in 0..n, got k={k}, n={n}")
    if n1 == 0 or n2 == 0:
        return None
    return float(fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="two-sided").pvalue)


def examiners_differ(p: float | None, alpha: float = EXAMINER_ALPHA) -> bool | None:
    """Flag rule: p < alpha; None when the test could not be made."""
    return None if p is None else p < alpha


def within_counting_interval(value: float | None, low: float | None, high: float | None) -> bool | None:
    """Whether ``value`` lies in [low, high] (ends included); None when any of them is missing."""
    if value is None or low is None or high is None:
        return None
    return low <= value <= high
