"""The unbiased pass@k estimator against the exact binomial form."""

from math import comb

import pytest

from imm.grading.passk import mean_pass_at_k, pass_at_k


@pytest.mark.parametrize("n", [1, 2, 5, 10, 30])
def test_matches_binomial_form(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            exact = 1 - comb(n - c, k) / comb(n, k)
            assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)


def test_stable_for_large_n():
    value = pass_at_k(2000, 3, 100)
    assert 0 < value < 1
    assert value == pytest.approx(1 - comb(1997, 100) / comb(2000, 100), rel=1e-9)


def test_edge_cases_and_mean():
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 5, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert mean_pass_at_k([(1, 1), (1, 0)], 1) == 0.5
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)
