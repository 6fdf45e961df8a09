"""The interval over seeds and items (imm.report.power): its coverage at few seeds, its components, its projection."""

import numpy as np
import pytest

from imm.report.power import components, interval


def _two_way(rng, seeds, items, sd_seed, sd_item, sd_rest, mu=0.0):
    return (mu + rng.normal(0, sd_seed, (seeds, 1)) + rng.normal(0, sd_item, (1, items))
            + rng.normal(0, sd_rest, (seeds, items)))


@pytest.mark.parametrize("sd_seed,sd_item", [(3.0, 20.0), (0.0, 30.0), (6.0, 5.0)])
def test_the_interval_covers_at_five_seeds(sd_seed, sd_item):
    # 5 seeds × 600 items, the seeds' share large, small or none: the 95% interval holds the true mean
    # in 92-98% of 600 draws (a bootstrap over 5 seeds covers ~80%, a t over seeds alone misses the items)
    hits = 0
    for i in range(600):
        e = interval(_two_way(np.random.default_rng(i), 5, 600, sd_seed, sd_item, 25.0, mu=1.0))
        hits += e.lo <= 1.0 <= e.hi
    assert 0.92 <= hits / 600 <= 0.98


def test_a_t_interval_over_seeds_alone_misses_the_shared_items():
    # the shared items' noise is the same for every seed: an interval from the seeds' spread alone
    # covers far less than 95% when items dominate (why the interval counts both)
    from scipy import stats

    hits = 0
    for i in range(400):
        d = _two_way(np.random.default_rng(i), 5, 300, 1.0, 30.0, 10.0, mu=0.0)
        means = d.mean(axis=1)
        half = stats.t.ppf(0.975, 4) * means.std(ddof=1) / np.sqrt(5)
        hits += abs(means.mean()) <= half
    assert hits / 400 < 0.8


def test_components_recover_the_model_and_project_its_variance():
    rng = np.random.default_rng(1)
    c = components(_two_way(rng, 40, 2000, 4.0, 20.0, 30.0))
    assert c.seed == pytest.approx(16, rel=0.5) and c.item == pytest.approx(400, rel=0.1)
    assert c.rest == pytest.approx(900, rel=0.05)
    # the projection is the variance formula: more seeds shrink the seed term, more items the item term
    assert c.variance(10, 1000) == pytest.approx(c.seed / 10 + c.item / 1000 + c.rest / 10_000)
    assert c.half_width(20, 1000) < c.half_width(5, 1000) and c.half_width(5, 4000) < c.half_width(5, 1000)
    need = c.seeds_for(2.0, 3000)
    assert need is not None and c.half_width(need, 3000) <= 2.0 < c.half_width(need - 1, 3000)


def test_one_seed_is_an_interval_over_items_only_and_a_zero_difference_has_p_one():
    d = np.array([[100.0, 0.0, -100.0, 0.0] * 50])
    e = interval(d)
    assert e.mean == 0 and e.p == pytest.approx(1.0) and e.lo < 0 < e.hi
    assert interval(np.zeros((3, 10))).p == 1.0
