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
    assert len(build_trainset(MethodConfig(name="accumulation"), HISTORY, 0)) == 20


@pytest.mark.parametrize("share,expected", [(0.0, 4), (0.5, 4 + 8), (1.0, 20)])
def test_mixture_adds_share_of_earlier(share, expected):
    out = build_trainset(MethodConfig(name="mixture", history_share=share), HISTORY, 0)
    assert len(out) == expected
    assert out[-4:] == HISTORY[-1]
    assert build_trainset(MethodConfig(name="mixture", history_share=share), HISTORY, 0) == out  # seeded


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
