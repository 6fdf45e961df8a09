"""Intervals over runs: Fisher's z interval and the permutation p-value of a correlation by hand and
against scipy, their coverage and calibration by simulation at the small n a grid has (where a
percentile bootstrap of r fails), and the sentence the schedule table gives."""

import math
import statistics

import numpy as np
import pytest
from scipy import stats

from imm.report.intervals import (MIN_CORRELATION_RUNS, correlation_note, fisher_interval, pearson,
                                  permutation_p)

RHO, N, DRAWS = -0.9, 4, 2000  # the grid's case: a strong negative r over 4 runs


def test_fisher_interval_by_hand_and_against_scipy():
    # r 0.5 over 28 points: atanh 0.549306, half-width 1.959964 / 5 = 0.391993
    assert fisher_interval(0.5, 28) == pytest.approx((math.tanh(0.157313), math.tanh(0.941299)), abs=1e-6)
    assert fisher_interval(0.5, 28) == pytest.approx((0.15603, 0.73582), abs=1e-5)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(9)
    y = x + rng.standard_normal(9)
    ci = stats.pearsonr(x, y).confidence_interval(0.95)  # scipy's interval is Fisher's too
    assert fisher_interval(pearson(list(x), list(y)), 9) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert all(math.isnan(v) for v in fisher_interval(0.5, MIN_CORRELATION_RUNS - 1))
    assert fisher_interval(-1.0, 5) == (-1.0, -1.0)


def test_permutation_p_is_exact_over_all_orderings():
    # x, y orderings of 1..4: r = (Σ x·y − 25) / 5; y = 1 2 4 3 has Σ 29, r 0.8. Orderings with Σ ≥ 29:
    # the identity and 3 adjacent swaps; with Σ ≤ 21 their reverses: 8 of 24
    assert pearson([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(0.8)
    assert permutation_p([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(8 / 24)
    assert permutation_p([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(2 / 24)  # the two lines
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal(7), rng.standard_normal(7)
    exact = stats.permutation_test((y,), lambda v, axis: np.abs(_rows_r(x, v)), permutation_type="pairings",
                                   alternative="greater", vectorized=True).pvalue
    assert permutation_p(list(x), list(y)) == pytest.approx(exact, abs=1e-12)


def test_pearson_needs_three_points_and_two_values_of_each():
    assert pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert pearson([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)  # x' = −1/3, −1/3, 2/3
    assert math.isnan(pearson([1, 2], [1, 2])) and math.isnan(pearson([1, 2, 3], [4, 4, 4]))
    assert math.isnan(pearson([4, 4, 4], [1, 2, 3]))


def test_permutation_p_at_the_largest_exact_n_and_beyond_it():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal(8), rng.standard_normal(8)
    exact = stats.permutation_test((y,), lambda v, axis: np.abs(_rows_r(x, v)), permutation_type="pairings",
                                   alternative="greater", vectorized=True, n_resamples=50_000).pvalue
    assert permutation_p(list(x), list(y)) == pytest.approx(exact, abs=1e-12)  # all 8! orderings
    # random orderings: (1 + hits) / (1 + draws). r = 0 exactly (y symmetric, x a line): every ordering hits
    assert permutation_p(list(range(10)), [1, 2, 3, 4, 5, 5, 4, 3, 2, 1], draws=99) == 1.0
    # two groups of 5, r = 1: only the ordering and its mirror reach it, 2 of C(10, 5) = 252
    tied = [0] * 5 + [1] * 5
    assert permutation_p(tied, tied) == pytest.approx(2 / 252, abs=0.003)


def test_permutation_p_beyond_exact_agrees_with_the_t_test_on_normal_data():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(30)
    y = 0.4 * x + rng.standard_normal(30)
    assert permutation_p(list(x), list(y)) == pytest.approx(stats.pearsonr(x, y).pvalue, abs=0.02)


def _bivariate(rng, rho, draws, n):
    z = rng.standard_normal((draws, n, 2))
    return z[..., 0], rho * z[..., 0] + math.sqrt(1 - rho ** 2) * z[..., 1]


def _rows_r(x, y):
    x, y = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))


def _percentile_bootstrap(x, y, rng, resamples=200):
    """The interval the schedule table gave before: 2.5% and 97.5% quantiles of r over resamples of
    the points with replacement, resamples with a constant coordinate skipped (every data set at once)."""
    idx = rng.integers(0, x.shape[1], (x.shape[0], resamples, x.shape[1]))
    r = _rows_r(np.take_along_axis(x[:, None, :], idx, 2), np.take_along_axis(y[:, None, :], idx, 2))
    return np.nanquantile(r, 0.025, axis=1), np.nanquantile(r, 0.975, axis=1)


def test_at_four_runs_the_bootstrap_interval_fails_and_fishers_covers():
    rng = np.random.default_rng(0)
    x, y = _bivariate(rng, RHO, DRAWS, N)
    lo, hi = _percentile_bootstrap(x, y, rng)
    old = float(((lo <= RHO) & (RHO <= hi)).mean())
    new = [fisher_interval(statistics.correlation(list(a), list(b)), N) for a, b in zip(x, y)]
    covered = float(np.mean([low <= RHO <= high for low, high in new]))
    assert old < 0.85  # about 0.75: no 95% interval
    assert 0.93 <= covered <= 0.98  # about 0.96


def test_permutation_p_is_calibrated_under_no_correlation():
    rng = np.random.default_rng(1)
    x, y = _bivariate(rng, 0.0, 400, 10)
    p = np.array([permutation_p(list(a), list(b), draws=400, seed=i) for i, (a, b) in enumerate(zip(x, y))])
    assert 0.02 <= (p < 0.05).mean() <= 0.09


def test_the_note_gives_n_the_interval_and_p_or_the_runs_below_the_minimum():
    xs, ys = [0.1, 0.2, 0.3, 0.4, 0.5], [0.5, 0.4, 0.45, 0.2, 0.1]
    lo, hi = fisher_interval(pearson(xs, ys), 5)
    note = correlation_note(xs, ys, "r(KL fwd, OOD)")
    assert note == (f"Pearson r(KL fwd, OOD) = {pearson(xs, ys):.2f} over n = 5 runs, Fisher 95% interval "
                    f"[{lo:.2f}, {hi:.2f}], permutation p = {permutation_p(xs, ys):.3f}")
    few = correlation_note(xs[:3], ys[:3], "r")
    assert "no interval below 4 runs" in few and "(0.1, 0.5), (0.2, 0.4), (0.3, 0.45)" in few
    assert "interval [" not in few
