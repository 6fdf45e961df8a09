"""Intervals over runs that hold at the number of runs a table has, and the minimum below which it gives none.

A grid has few runs per cell (3 seeds) and a few dozen in all; a percentile bootstrap that resamples
so few runs covers far less than it says (at 4 points a 95% bootstrap interval of Pearson's r covers
about 75% when ρ = 0.9; at 3 runs a bootstrap of a mean difference covers under 80%:
tests/unit/test_intervals.py). So:

- **a correlation over runs** (the schedule grid's KL–OOD r) gets Fisher's z interval,
  tanh(atanh r ± z_0.975 / √(n − 3)), which holds for bivariate normal points at any n from
  ``MIN_CORRELATION_RUNS`` = 4 (below, 1/√(n − 3) is undefined), and a two-sided permutation p-value
  of "no correlation" (no normality assumed), exact over all n! orderings up to
  ``EXACT_PERMUTATIONS_UP_TO`` runs, from seeded random orderings beyond;
- **a bootstrap over runs** (imm.report.paired) resamples runs only from ``MIN_BOOTSTRAP_RUNS`` = 20
  runs on, where its percentile interval covers about 93%; with fewer the runs are held fixed and
  only the test items are resampled, and the table lists each run's own value.

Below its minimum a table gives no interval over runs, says so, and shows the runs instead.
"""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np

MIN_CORRELATION_RUNS = 4  # Fisher's z: standard error 1/√(n − 3)
EXACT_PERMUTATIONS_UP_TO = 8  # 8! = 40 320 orderings; beyond, PERMUTATION_DRAWS random ones
PERMUTATION_DRAWS = 10_000
MIN_BOOTSTRAP_RUNS = 20  # a percentile bootstrap over runs covers ~93% at 20 runs, ~79% at 3


def pearson(xs: list[float], ys: list[float]) -> float:
    """Pearson's r; nan for fewer than 3 points or a constant coordinate."""
    return statistics.correlation(xs, ys) if len(xs) > 2 and len(set(xs)) > 1 and len(set(ys)) > 1 else float("nan")


def fisher_interval(r: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Fisher's z interval of a correlation r over n points; (nan, nan) below MIN_CORRELATION_RUNS."""
    if n < MIN_CORRELATION_RUNS or math.isnan(r):
        return float("nan"), float("nan")
    if abs(r) >= 1.0:  # every point on a line: atanh is infinite, the interval the point itself
        return r, r
    z, half = math.atanh(r), statistics.NormalDist().inv_cdf(0.5 + level / 2) / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


def permutation_p(xs: list[float], ys: list[float], draws: int = PERMUTATION_DRAWS, seed: int = 0) -> float:
    """Two-sided p-value of "no correlation": the share of orderings of ``ys`` whose |r| reaches the
    observed |r| (the observed ordering among them), exact up to EXACT_PERMUTATIONS_UP_TO points,
    else (1 + hits) / (1 + draws) over seeded random orderings; nan where r is."""
    r = pearson(xs, ys)
    if math.isnan(r):
        return float("nan")
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if len(x) <= EXACT_PERMUTATIONS_UP_TO:
        orders = np.array(list(itertools.permutations(range(len(y)))))
        return float((np.abs(_rows_r(x, y[orders])) >= abs(r) - 1e-12).mean())
    rng = np.random.default_rng(seed)
    shuffled = rng.permuted(np.broadcast_to(y, (draws, len(y))), axis=1)
    return float((1 + (np.abs(_rows_r(x, shuffled)) >= abs(r) - 1e-12).sum()) / (1 + draws))


def _rows_r(x: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pearson's r of ``x`` with each row of ``ys``."""
    xc, yc = x - x.mean(), ys - ys.mean(axis=1, keepdims=True)
    return (yc @ xc) / np.sqrt((xc @ xc) * (yc * yc).sum(axis=1))


def correlation_note(xs: list[float], ys: list[float], name: str) -> str:
    """The sentence a table or figure gives: r, n, Fisher's interval and the permutation p-value, or,
    below MIN_CORRELATION_RUNS, r and n with the reason there is no interval."""
    n, r = len(xs), pearson(xs, ys)
    if n < MIN_CORRELATION_RUNS:
        runs = ", ".join(f"({x:.3g}, {y:.3g})" for x, y in zip(xs, ys))
        return f"Pearson {name} = {r:.2f} over {n} runs: no interval below {MIN_CORRELATION_RUNS} runs; the runs: {runs}"
    lo, hi = fisher_interval(r, n)
    return (f"Pearson {name} = {r:.2f} over n = {n} runs, Fisher 95% interval [{lo:.2f}, {hi:.2f}], "
            f"permutation p = {permutation_p(xs, ys):.3f}")
