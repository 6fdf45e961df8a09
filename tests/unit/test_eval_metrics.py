"""What an evaluation logs, through ``imm.evaluate.evaluate`` on hand-made completions: pass@1 and
pass@k per set (the unbiased estimator over each item's n samples), the ID and OOD means over sets,
the share of samples with no final answer, and the shares that ran to the token limit or were stopped.

    python -m pytest tests/unit/test_eval_metrics.py
"""

import pytest

import imm.evaluate as ev
from imm.data import Data
from imm.evaluate import EvalConfig

TESTBED = "Tom has 23 apples. He buys 5 more and then gives away 3. How many apples does he have now?"
# question -> (gold, 4 samples, how each ended)
SAMPLES = {
    "q0": ("7", ["The answer is 7.", "The answer is 8.", "no answer here", "The answer is 7."],
           ["stop", "length", "length", "eos"]),
    "q1": ("3", ["The answer is 4.", "The answer is 3.", "The answer is 5.", "The answer is 6."],
           ["stop", "stop", "eos", "eos"]),
    "q2": ("10", ["The answer is 10."] * 4, ["eos"] * 4),
    "q3": ("2", ["The answer is 1."] * 4, ["length"] * 4),
    # testbed items: the mechanism readings take each sample's ending
    TESTBED: ("25", ["23 + 5 = 28. 28 - 3 = 25. The answer is 25."] * 4, ["length", "length", "length", "eos"]),
    TESTBED + " ": ("25", ["The answer is 25."] * 4, ["eos"] * 4),
}


class Chars:  # a character tokenizer (decoding_groups compares the prompts' shared prefixes)
    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def fake_complete(model, tok, prompts, stats=None, **kw):
    stats["endings"] = [e for p in prompts for e in SAMPLES[p][2]]
    return [list(SAMPLES[p][1]) for p in prompts]


@pytest.fixture
def metrics(monkeypatch):
    monkeypatch.setattr(ev, "complete", fake_complete)
    item = lambda q: {"question": q, "answer": SAMPLES[q][0]}  # noqa: E731
    world = lambda q: item(q) | {"family": "id_addsub", "solution": SAMPLES[TESTBED][1][0]}  # noqa: E731
    data = Data(train=[], tests={"a": [item("q0"), item("q1")], "b": [item("q2")], "c": [item("q3")],
                                 "t": [world(TESTBED), world(TESTBED + " ")]},
                id_sets=["a", "t"], ood_sets=["b", "c"])
    return ev.evaluate(None, Chars(), data, lambda it: it["question"], EvalConfig(n=4, temperature=0.7, ks=[1, 2]))


def test_pass_at_k_per_set_and_the_group_means(metrics):
    # a: item q0 has 2 of 4 right, q1 1 of 4. pass@1 = c/n: (1/2 + 1/4) / 2; pass@2 = 1 − C(n−c, 2)/C(4, 2):
    # q0 1 − 1/6, q1 1 − 3/6
    assert metrics["a"] == pytest.approx(0.375)
    assert metrics["a/pass_at_2"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert metrics["b"] == metrics["b/pass_at_2"] == 1.0 and metrics["c"] == metrics["c/pass_at_2"] == 0.0
    assert metrics["id"] == pytest.approx((0.375 + 1) / 2) and metrics["id/pass_at_2"] == pytest.approx((2 / 3 + 1) / 2)
    assert metrics["ood"] == 0.5 and metrics["ood/pass_at_2"] == 0.5  # the mean over its two sets


def test_no_answer_timeouts_and_endings_per_set(metrics):
    assert metrics["a/no_answer"] == pytest.approx(1 / 8) and metrics["b/no_answer"] == 0.0
    assert metrics["a/timeouts"] == 0
    assert metrics["a/ran_to_limit"] == pytest.approx(2 / 8) and metrics["a/stopped"] == pytest.approx(3 / 8)
    assert metrics["c/ran_to_limit"] == 1.0 and metrics["b/stopped"] == 0.0
    assert metrics["t/ran_to_limit"] == pytest.approx(3 / 8)  # per sample, in the readings of item after item
    assert metrics["t/form/canonical"] == 0.5 and metrics["t/sound_share"] == 0.5


def test_the_no_answer_share_of_one_sample(monkeypatch):
    monkeypatch.setattr(ev, "complete", lambda model, tok, prompts, stats=None, **kw: [["nothing"] for _ in prompts])
    data = Data(train=[], tests={"a": [{"question": "q", "answer": "1"}]}, id_sets=["a"], ood_sets=[])
    assert ev.evaluate(None, Chars(), data, lambda it: it["question"], EvalConfig())["a/no_answer"] == 1.0


def test_format_apart_from_reasoning_on_each_items_first_answer(metrics):
    # first answers: a: q0 "7" right, q1 "4" wrong (both answered); b: right; c: wrong
    assert metrics["a/answered"] == 1.0 and metrics["a/right_answered"] == 0.5
    assert metrics["b/right_answered"] == 1.0 and metrics["c/right_answered"] == 0.0
    assert metrics["ood/right_answered"] == 0.5 and metrics["ood/answered"] == 1.0


def test_right_among_answered_leaves_the_unanswered_out():
    rows = [{"set": "s", "right": True, "answered": True}, {"set": "s", "right": False, "answered": False},
            {"set": "s", "right": False, "answered": True}, {"set": "s", "right": False, "answered": False}]
    out = ev.format_metrics(rows, {"id": ["s"], "ood": []})
    assert out == {"s/answered": 0.5, "s/right_answered": 0.5, "id/answered": 0.5, "id/right_answered": 0.5}
