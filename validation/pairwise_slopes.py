"""Order statistics of the n(n − 1)/2 pairwise slopes without storing them (Passing–Bablok at large n).

Passing–Bablok needs a few order statistics of the slopes S_ij = (y_j − y_i) / (x_j − x_i): the
shifted median, the two CI bounds, and how many slopes lie below (or equal) −1. Sorting all of
them costs O(n²) memory (1.35 GiB at n = 6,000). This module selects the same order statistics
from the implicit set of slopes in O(n log n) memory: each count costs a sort and O(n log n)
vector operations, and an order statistic takes a few rounds of counts (n = 100,000: about 0.6 s
per order statistic on the 2-core development machine, see benchmarks/bench_stats.py).

**Counting slopes below a value t.** For two points with x_i < x_j, S_ij < t exactly when
v_j < v_i with v = y − t·x. Order the points by x (ties by y) and, separately, by v (ties by x);
the slopes below t are the pairs the two orders disagree on, i.e. the inversions of one
permutation against the other (Cole, Salowe, Steiger & Szemerédi, SIAM J Comput 18:792–810, 1989;
Matoušek, Inf Process Lett 39:183–187, 1991). "Below or equal" breaks the ties of v by x
descending instead. Pairs with equal x (vertical, ±∞ in Passing–Bablok) and pairs equal in x and y
(no slope) are never inversions and are counted apart.

**Counting and listing inversions** in O(n log n) with NumPy (:func:`_inversion_levels`): the
permutation's values are split bit by bit, from the highest, keeping the elements in position
order within each group of equal higher bits (a wavelet tree; Grossi, Gupta & Vitter 2003). At
each level an element whose bit is 0 forms an inversion with every element of its group before it
whose bit is 1, and after the stable split those partners sit in one contiguous run, so the
inversions can be counted, listed, or drawn uniformly at random by their rank.

**Selecting the k-th slope** (:meth:`PairwiseSlopes.angle_at`; randomized slope selection in the
manner of Matoušek 1991 and Dillencourt, Mount & Netanyahu, Int J Comput Geom Appl 2:1–27, 1992):
keep two cuts with k between their counts; draw :data:`SAMPLE_SIZE` slopes uniformly from between
them, take the sample slopes 5 standard errors either side of k's relative position, and count
exactly at cuts 1e-9 (relative) below and above them (a cut is kept only if its count confirms it,
so the randomness changes the running time, never the result; the 1e-9 keeps slopes that are equal
in real arithmetic, e.g. of rounded data, on one side of a cut whatever floating point makes of
them). Each round keeps about 1 % of the slopes; once at most :data:`ENUMERATE_MAX` lie between
the cuts they are listed, their angles computed exactly as the quadratic algorithm computes them
(mcr's ``diff`` tolerance, atan of the quotient), sorted, and the k-th is read off. When the k-th
slope lies within 1e-9 of a sample slope t, the block around t is listed the same way if it holds
at most ENUMERATE_MAX slopes; a larger block (many equal slopes: rounded or integer data) is
answered with atan(t), exact for equal slopes of exactly represented data.

**Equal values.** mcr treats two values closer than 1e-12 of their magnitude as equal (so their
difference is 0). Here each array is first "snapped": sorted values closer than that to their
predecessor take the value of the first of such a run, which gives the same equal pairs except for
runs of three or more values spread over more than 1e-12 (never in measured data).

**Agreement with the quadratic algorithm.** The slopes counted against a cut are decided by the
sign of a difference of v = y − t·x in floating point, the listed ones by the quotient's atan (as
the quadratic algorithm). The two agree except for slopes within rounding of a cut, which is 1e-9
away from any sample slope; and a block answered without listing is within 1e-9 of the exact
slope, and equal to it when its slopes are equal in floating point too. So the results are the
quadratic algorithm's except where floating point orders slopes within 1e-9 (relative) of each
other differently (tests: identical on integer and continuous data, within 1e-12 on data rounded
to 0.1 and 0.01). The counts of slopes below and equal to −1 (+1), which set the shift, are taken
by listing the slopes within 1e-9 of it and comparing their angles as the quadratic algorithm
does (up to :data:`BAND_MAX` of them; beyond, by exact comparison with −1, right for integers).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np

__all__ = ["BAND_MAX", "ENUMERATE_MAX", "SAMPLE_SIZE", "PairwiseSlopes", "mcr_diff", "pair_angles", "snap"]

# mcr's C helper diff(): a difference below 1e-12 of the operands' magnitude counts as zero.
MCR_DIFF_EPS: Final[float] = 1e-12
# Slopes between two cuts are listed (angles in memory) once at most this many remain.
ENUMERATE_MAX: Final[int] = 1_000_000
# Slopes drawn per narrowing round, and the half-width of the kept band in standard errors.
SAMPLE_SIZE: Final[int] = 200_000
_Z: Final[float] = 5.0
# Cuts are placed this far (relative) either side of a sample slope, and the slopes this close to
# -1 / +1 are listed to count them as the quadratic algorithm does (at most BAND_MAX of them).
_FUZZ: Final[float] = 1e-9
BAND_MAX: Final[int] = 50_000_000
# Rounds in a row whose cuts both miss before selection gives up (each misses with probability ~1e-6).
_MAX_IDLE_ROUNDS: Final[int] = 50


def mcr_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a − b, set to 0 where it is below 1e-12 of the operands' mean magnitude (mcr ``diff``)."""
    d = a - b
    d[np.abs(d) < MCR_DIFF_EPS * (np.abs(a) + np.abs(b)) / 2] = 0.0
    return d


def pair_angles(x: np.ndarray, y: np.ndarray, i: np.ndarray, j: np.ndarray, positive: bool) -> np.ndarray:
    """atan((y_j − y_i) / (x_j − x_i)) of the given pairs, as the quadratic algorithm computes it.

    Pairs with equal x get +π/2 (−π/2 for a negative correlation); pairs equal in x and y are the
    caller's to drop (their angle here is ±π/2 as well).
    """
    dx, dy = mcr_diff(x[j], x[i]), mcr_diff(y[j], y[i])
    vertical = dx == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ang = np.arctan(dy / np.where(vertical, 1.0, dx))
    ang[vertical] = math.pi / 2 if positive else -math.pi / 2
    return ang


def snap(a: np.ndarray) -> np.ndarray:
    """``a`` with values closer than mcr's tolerance to their sorted predecessor set to the first of
    such a run (a copy; ``a`` itself when no two values are that close)."""
    order = np.argsort(a, kind="stable")
    s = a[order]
    d = np.diff(s)
    close = (d > 0) & (d < MCR_DIFF_EPS * (np.abs(s[:-1]) + np.abs(s[1:])) / 2)
    if not close.any():
        return a
    starts = np.concatenate(([True], ~close))
    rep = np.maximum.accumulate(np.where(starts, np.arange(s.size), 0))
    out = np.empty_like(a)
    out[order] = s[rep]
    return out


def _pairs_within_groups(keys: tuple[np.ndarray, ...]) -> int:
    """Number of pairs of rows equal in every key."""
    order = np.lexsort(keys)
    same = np.ones(order.size - 1, dtype=bool)
    for k in keys:
        s = k[order]
        same &= s[1:] == s[:-1]
    starts = np.flatnonzero(np.concatenate(([True], ~same, [True])))
    sizes = np.diff(starts).astype(np.int64)
    return int((sizes * (sizes - 1) // 2).sum())


@dataclass(frozen=True)
class _Level:
    zero_ids: np.ndarray  # elements (positions in the first order) whose bit is 0 at this level
    counts: np.ndarray  # how many inversions each of them closes at this level
    partner_start: np.ndarray  # where its partners start in ``ids_after``
    ids_after: np.ndarray  # elements in their order after this level's stable split


def _inversion_levels(seq: np.ndarray, keep: bool) -> Iterator[_Level | int]:
    """The inversions of the permutation ``seq`` of 0..n−1 (pairs p < q with seq[p] > seq[q]), level
    by level of a wavelet tree: yields a :class:`_Level` per bit (``keep``) or just its count.

    Invariant: before the level of bit b the elements are stably sorted by value >> (b + 1), so
    the group of a prefix P occupies positions [P·2^(b+1), (P+1)·2^(b+1)) (the values are a
    permutation), and within a group they are in their original order.
    """
    n = seq.size
    cur = seq.astype(np.int64, copy=True)
    ids = np.arange(n, dtype=np.int64)
    pos = np.arange(n, dtype=np.int64)
    for b in reversed(range(max(1, (n - 1).bit_length()))):
        bit = (cur >> b) & 1
        start = (cur >> (b + 1)) << (b + 1)
        ones_before = np.cumsum(bit) - bit
        before = ones_before - ones_before[start]  # ones earlier in my group
        zeros_in_group = np.minimum(1 << b, n - start)
        zero = bit == 0
        new_pos = np.where(zero, pos - before, start + zeros_in_group + before)
        new_cur = np.empty_like(cur)
        new_cur[new_pos] = cur
        if keep:
            new_ids = np.empty_like(ids)
            new_ids[new_pos] = ids
            yield _Level(ids[zero], before[zero], (start + zeros_in_group)[zero], new_ids)
            ids = new_ids
        else:
            yield int(before[zero].sum())
        cur = new_cur


def _count_inversions(seq: np.ndarray) -> int:
    return sum(c for c in _inversion_levels(seq, keep=False))  # type: ignore[misc]


class _Inversions:
    """The inversions of a permutation, numbered 0..total−1 level by level, to list or draw from."""

    def __init__(self, seq: np.ndarray) -> None:
        self.levels: list[_Level] = list(_inversion_levels(seq, keep=True))  # type: ignore[arg-type]
        self.totals = np.array([int(lv.counts.sum()) for lv in self.levels], dtype=np.int64)
        self.total = int(self.totals.sum())
        self._level_end = np.cumsum(self.totals)
        self._ends = [np.cumsum(lv.counts) for lv in self.levels]

    def pick(self, u: np.ndarray) -> np.ndarray:
        """The inversions numbered ``u`` (sorted, in 0..total−1) as (p, q) position pairs, shape (m, 2)."""
        which = np.searchsorted(self._level_end, u, side="right")
        out = np.empty((u.size, 2), dtype=np.int64)
        for lv_index in np.unique(which):
            lv, ends = self.levels[int(lv_index)], self._ends[int(lv_index)]
            sel = which == lv_index
            local = u[sel] - (self._level_end[lv_index] - self.totals[lv_index])
            e = np.searchsorted(ends, local, side="right")
            offset = local - (ends[e] - lv.counts[e])
            out[sel, 0] = lv.ids_after[lv.partner_start[e] + offset]
            out[sel, 1] = lv.zero_ids[e]
        return out

    def chunks(self, size: int) -> Iterator[np.ndarray]:
        """Every inversion, ``size`` at a time."""
        for first in range(0, self.total, size):
            yield self.pick(np.arange(first, min(first + size, self.total), dtype=np.int64))


@dataclass(frozen=True)
class _Cut:
    """A place in the sorted slopes: just before the slopes equal to ``t`` (``after`` False) or just
    after them; ``below`` = how many finite slopes lie before it; ``order`` sorts the points so
    that its inversions against the x order are exactly those slopes."""

    t: float
    after: bool
    below: int
    order: np.ndarray


class PairwiseSlopes:
    """The implicit set of pairwise slopes of (x, y), with exact order statistics of their angles.

    The angles are those of the quadratic Passing–Bablok algorithm: atan of each finite slope,
    +π/2 (−π/2 when ``positive`` is False) for the pairs with equal x and different y, none for
    pairs equal in both. ``angle_at(r)`` is the r-th smallest (1-based) of all of them.
    ``seed`` fixes the random draws, which change the running time only; ``enumerate_max`` and
    ``sample_size`` default to :data:`ENUMERATE_MAX` and :data:`SAMPLE_SIZE` (tests lower them to
    exercise the narrowing on small data).
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray,
        positive: bool,
        *,
        seed: int = 0,
        enumerate_max: int | None = None,
        sample_size: int | None = None,
    ) -> None:
        self.x, self.y = x, y
        self.xs, self.ys = snap(x), snap(y)
        self.positive = positive
        self.n = n = x.size
        self._rng = np.random.default_rng(seed)
        self._enumerate_max = ENUMERATE_MAX if enumerate_max is None else enumerate_max
        self._sample_size = SAMPLE_SIZE if sample_size is None else sample_size
        equal_x = _pairs_within_groups((self.xs,))
        equal_xy = _pairs_within_groups((self.ys, self.xs))
        self.n_finite = n * (n - 1) // 2 - equal_x
        self.n_vertical = equal_x - equal_xy
        self.n_all = self.n_finite + self.n_vertical
        self._x_order = np.lexsort((self.ys, self.xs))  # x ascending, ties by y: the cut at -inf
        self._bottom = _Cut(-math.inf, True, 0, self._x_order)
        self._top = _Cut(math.inf, False, self.n_finite, np.lexsort((self.ys, -self.xs)))
        self._window: tuple[int, np.ndarray] | None = None  # (below, sorted angles) last listed

    # -- cuts --------------------------------------------------------------------------------

    def _between(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """``seq`` whose inversions are the pairs ordered differently by the orders ``lo`` and ``hi``."""
        rank_hi = np.empty(self.n, dtype=np.int64)
        rank_hi[hi] = np.arange(self.n)
        return rank_hi[lo]

    def cut(self, t: float, after: bool) -> _Cut:
        """The cut before (``after`` False) or after the finite slopes equal to ``t``: the points
        ordered by v = y − t·x, ties by x ascending (before) or descending (after)."""
        v = self.ys - t * self.xs
        order = np.lexsort((-self.xs if after else self.xs, v))
        return _Cut(t, after, _count_inversions(self._between(self._x_order, order)), order)

    def count_below(self, t: float) -> int:
        """Finite slopes < t (decided by the sign of a difference of v = y − t·x)."""
        return self.cut(t, after=False).below

    def count_up_to(self, t: float) -> int:
        """Finite slopes <= t (decided by the sign of a difference of v = y − t·x)."""
        return self.cut(t, after=True).below

    def _inversions(self, lo: _Cut, hi: _Cut) -> _Inversions:
        return _Inversions(self._between(lo.order, hi.order))

    def _angles(self, lo: _Cut, pq: np.ndarray) -> np.ndarray:
        ij = lo.order[pq]
        return pair_angles(self.x, self.y, ij[:, 0], ij[:, 1], self.positive)

    def angles_between(self, lo: _Cut, hi: _Cut) -> np.ndarray:
        """Sorted angles of all the finite slopes between two cuts."""
        inv = self._inversions(lo, hi)
        return np.sort(self._angles(lo, inv.pick(np.arange(inv.total, dtype=np.int64))))

    def _sample_slopes(self, lo: _Cut, hi: _Cut, size: int) -> np.ndarray:
        """``size`` slopes drawn uniformly (with replacement) from between two cuts, sorted."""
        inv = self._inversions(lo, hi)
        ij = lo.order[inv.pick(np.sort(self._rng.integers(0, inv.total, size=size)))]
        i, j = ij[:, 0], ij[:, 1]
        return np.sort(mcr_diff(self.y[j], self.y[i]) / mcr_diff(self.x[j], self.x[i]))

    # -- selection ---------------------------------------------------------------------------

    def angle_at(self, rank: int) -> float:
        """The rank-th smallest angle (1-based) among all ``n_all`` angles."""
        if not 1 <= rank <= self.n_all:
            raise IndexError(f"rank {rank} outside 1..{self.n_all}")
        vertical = math.pi / 2 if self.positive else -math.pi / 2
        if self.positive:
            return vertical if rank > self.n_finite else self._finite_angle_at(rank)
        return vertical if rank <= self.n_vertical else self._finite_angle_at(rank - self.n_vertical)

    def _finite_angle_at(self, rank: int) -> float:
        if self._window is not None:
            below, angles = self._window
            if below < rank <= below + angles.size:
                return float(angles[rank - below - 1])
        lo, hi = self._bottom, self._top
        idle = 0
        while hi.below - lo.below > self._enumerate_max:
            sample = self._sample_slopes(lo, hi, self._sample_size)
            s = sample.size
            f = (rank - lo.below - 0.5) / (hi.below - lo.below)
            spread = _Z * math.sqrt(s * f * (1 - f)) + 1
            candidates = [i for i in (math.floor(s * f - spread), math.ceil(s * f + spread)) if 0 <= i < s]
            if not candidates:  # a small sample: cut at the sample slope nearest k's position
                candidates = [min(s - 1, max(0, round(s * f)))]
            moved = False
            for index in candidates:
                # cut 1e-9 (relative) either side of a sample slope t, so that slopes equal to t in
                # real arithmetic (rounded data) fall between the two cuts whatever the rounding
                t = float(sample[index])
                before = self.cut(t - _FUZZ * abs(t), after=False)
                if before.below >= rank:
                    if before.below < hi.below:
                        hi, moved = before, True
                    continue
                after = self.cut(t + _FUZZ * abs(t), after=True)
                if after.below >= rank:  # the rank-th slope is within 1e-9 of t
                    if after.below - before.below > self._enumerate_max:
                        return float(np.arctan(t))  # a block of (nearly) equal slopes, too many to list
                    lo, hi, moved = before, after, True
                    break
                if after.below > lo.below:
                    lo, moved = after, True
            idle = 0 if moved else idle + 1
            if idle > _MAX_IDLE_ROUNDS:
                raise RuntimeError(f"slope selection made no progress at rank {rank} of {self.n_finite}")
        angles = self.angles_between(lo, hi)
        self._window = (lo.below, angles)
        # the listing holds hi.below - lo.below slopes, or a few more or fewer where floating point
        # placed a slope within rounding of a cut on the other side (the nearest is then as good)
        return float(angles[min(max(rank - lo.below - 1, 0), angles.size - 1)])

    def count_around(self, t: float) -> tuple[int, int]:
        """(finite slopes whose angle is below atan(t), finite slopes whose angle equals it), for
        t = −1 or +1, decided as the quadratic algorithm decides: the slopes within 1e-9 (relative)
        of t are listed, ``enumerate_max`` at a time, and compared by their angle. If more than
        :data:`BAND_MAX` lie there (rounded data with very many slopes equal to t), all of them count
        as equal to t: exact for data whose differences are exact in floating point (integers)."""
        lo = self.cut(t - _FUZZ * abs(t), after=False)
        hi = self.cut(t + _FUZZ * abs(t), after=True)
        band = hi.below - lo.below
        if band > BAND_MAX:
            return lo.below, band
        target = float(np.arctan(t))
        below, equal = lo.below, 0
        for pq in self._inversions(lo, hi).chunks(self._enumerate_max):
            angles = self._angles(lo, pq)
            below += int((angles < target).sum())
            equal += int((angles == target).sum())
        return below, equal
