"""Training sets by method, and filtering of samples by their final answer."""

import pytest

from imm.grading.filtering import keep_correct
from imm.methods import MethodConfig, build_trainset


def rows(it, n):
    return [{"question": f"q{it}-{i}", "response": "r", "iteration": it} for i in range(n)]


HISTORY = [rows(0, 10), rows(1, 6), rows(2, 4)]


def test_vanilla_imm_iimm_use_current_iteration_only():
    for name in ("vanilla", "imm", "iimm"):
        assert build_trainset(MethodConfig(name=name), HISTORY, 0) == HISTORY[-1]


def test_accumulation_uses_everything():
    out = build_trainset(MethodConfig(name="accumulation"), HISTORY, 0)
    assert out == HISTORY[0] + HISTORY[1] + HISTORY[2]  # every row of every iteration, oldest first, once
    assert [r["iteration"] for r in out] == [0] * 10 + [1] * 6 + [2] * 4


@pytest.mark.parametrize("share,expected", [(0.0, 0), (0.25, 4), (0.5, 8), (1.0, 16)])
def test_mixture_adds_share_of_earlier(share, expected):
    out = build_trainset(MethodConfig(name="mixture", history_share=share), HISTORY, 0)
    earlier, current = out[:-4], out[-4:]
    assert current == HISTORY[-1]  # this iteration's rows, all of them
    assert len(earlier) == expected  # share × the 16 earlier rows
    assert all(r in HISTORY[0] + HISTORY[1] for r in earlier)  # from earlier iterations only
    assert len({r["question"] for r in earlier}) == expected  # drawn without replacement
    assert build_trainset(MethodConfig(name="mixture", history_share=share), HISTORY, 0) == out  # seeded


def test_mixture_draws_from_every_earlier_iteration_and_by_seed():
    draws = [build_trainset(MethodConfig(name="mixture", history_share=0.5), HISTORY, seed)[:-4] for seed in range(5)]
    assert {r["iteration"] for d in draws for r in d} == {0, 1}
    assert len({tuple(r["question"] for r in d) for d in draws}) > 1  # another seed, another draw
    # with iterations of 10 and 6 rows, the draw's share of each is near its share of the history
    from_first = sum(r["iteration"] == 0 for d in draws for r in d) / sum(len(d) for d in draws)
    assert 0.4 < from_first < 0.85


def test_merge_flags():
    assert [MethodConfig(name=n).merges for n in ("vanilla", "mixture", "accumulation", "imm", "iimm")] == \
        [False, False, False, True, True]
    assert MethodConfig(name="iimm").importance_scaled and not MethodConfig(name="imm").importance_scaled


def test_keep_correct_counts_yield_and_coverage():
    items = [{"question": "a", "answer": "7"}, {"question": "b", "answer": "1,000"}, {"question": "c", "answer": "3"}]
    samples = [
        [{"text": "3 + 4 = 7. The answer is 7.", "temperature": 0.2}, {"text": "The answer is 8.", "temperature": 0.4}],
        [{"text": "The answer is 1000.", "temperature": 0.2}, {"text": "The answer is 1000.0", "temperature": 0.4}],
        [{"text": "no answer", "temperature": 0.2}, {"text": "The answer is 3.\nQuestion: x The answer is 4.", "temperature": 0.4}],
    ]
    kept, y = keep_correct(items, samples, iteration=0)
    assert (y.sampled, y.kept, y.questions, y.covered) == (6, 4, 3, 3)
    assert y.rate == pytest.approx(4 / 6)
    assert [k["question"] for k in kept] == ["a", "b", "b", "c"]
    assert all(k["iteration"] == 0 for k in kept)
