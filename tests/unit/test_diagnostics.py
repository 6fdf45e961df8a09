"""The per-round diagnostics: KL to the base from logits, answer diversity, chance-corrected
forgetting and Verified pass@1, as exact values on small hand-made inputs, and as an evaluation
logs them against the base model's (imm.loop)."""

import math
from types import SimpleNamespace

import pytest
import torch

from imm.analysis.divergence import held_out, response_kl, token_kl
from imm.analysis.diversity import answer_diversity, answer_key
from imm.analysis.forgetting import SOUND, chance_corrected, chance_level, corrected, group_means, verified_pass1
from imm.data.world.steps import CLASSES


def test_token_kl_both_directions_by_hand():
    p, q = torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.9, 0.1]]))
    fwd, rev = token_kl(p + 3.0, q)  # logits: a shift changes nothing
    assert float(fwd) == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1))
    assert float(rev) == pytest.approx(0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5))
    assert float(token_kl(q, q)[0]) == 0.0


class Tok:
    """Characters as tokens (a–z → 0–25), 26 the EOS and 27 the padding."""
    eos_token_id, pad_token_id = 26, 27

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) - 97 for c in text if c.isalpha()]}


class Net:
    """Logits that depend on the input token, tilted toward token ``tilt`` at positions ``where``."""
    device = torch.device("cpu")

    def __init__(self, tilt=None, where=()):
        self.tilt, self.where = tilt, where

    def __call__(self, input_ids, attention_mask):
        logits = torch.nn.functional.one_hot(input_ids % 28, 28).double()
        for t in self.where:
            logits[:, t, self.tilt] += 2.0
        return SimpleNamespace(logits=logits)


def test_response_kl_counts_response_tokens_only():
    tok, prompts, responses = Tok(), ["abc"], ["de"]  # ids a b c | d e EOS: positions 2, 3, 4 predict the response
    same = response_kl(Net(), Net(), tok, prompts, responses)
    assert same == {"forward": 0.0, "reverse": 0.0, "tokens": 3}
    assert response_kl(Net(), Net(5, where=(0, 1, 5)), tok, prompts, responses)["forward"] == 0.0  # prompt and EOS
    moved = response_kl(Net(), Net(5, where=(3,)), tok, prompts, responses)
    one = token_kl(torch.nn.functional.one_hot(torch.tensor(3), 28).double(),
                   torch.nn.functional.one_hot(torch.tensor(3), 28).double() + 2.0 * torch.nn.functional.one_hot(torch.tensor(5), 28))
    assert moved["forward"] == pytest.approx(float(one[0]) / 3) and moved["reverse"] == pytest.approx(float(one[1]) / 3)


def test_response_kl_of_no_sequences_is_zero_over_zero_tokens():
    assert response_kl(Net(), Net(), Tok(), [], []) == {"forward": 0.0, "reverse": 0.0, "tokens": 0}


def test_response_kl_with_a_shared_prompt_prefix_equals_the_kl_computed_apart():
    """Prompts sharing 33 tokens (run once per model, their cache copied into each batch; the answers
    share more, which must not count): the pooled KL per response token equals one computed from each
    whole sequence's logits."""
    from tests.unit.test_round_figures import Tok as Chars, tiny_model

    base, tuned = tiny_model(), tiny_model()
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tok, shared, answer = Chars(), "abcdefghij" * 3 + "abc", "klmnopqrst" * 4  # 33 shared prompt tokens
    prompts, responses = [shared + "xy", shared + "zzw", shared + "q"], [answer + "mn", answer + "o", answer + "pqrs"]
    got = response_kl(base, tuned, tok, prompts, responses, batch_size=2)
    fwd = rev = n = 0
    with torch.no_grad():
        for p, r in zip(prompts, responses):
            ids = tok(p)["input_ids"] + tok(p + r)["input_ids"][len(tok(p)["input_ids"]):] + [tok.eos_token_id]
            at = slice(len(tok(p)["input_ids"]) - 1, len(ids) - 1)  # the positions predicting a response token
            lp, lq = (torch.log_softmax(m(input_ids=torch.tensor([ids])).logits[0, at].double(), -1) for m in (base, tuned))
            fwd += float((lp.exp() * (lp - lq)).sum())
            rev += float((lq.exp() * (lq - lp)).sum())
            n += at.stop - at.start
    assert got["tokens"] == n == 3 * 40 + 3 + 2 + 5
    assert got["forward"] == pytest.approx(fwd / n, rel=1e-6) and got["reverse"] == pytest.approx(rev / n, rel=1e-6)


def test_held_out_takes_the_first_items_and_the_base_answers():
    tests = {"a": [{"q": "x"}, {"q": "y"}, {"q": "z"}], "b": [{"q": "w"}]}
    records = [{"set": s, "index": i, "text": f"{s}{i}"} for s, n in (("a", 3), ("b", 1)) for i in range(n)]
    prompts, responses = held_out(tests, records, ["a", "b"], 2, lambda item: item["q"])
    assert (prompts, responses) == (["x", "y", "w"], ["a0", "a1", "b0"])


def test_answer_diversity():
    groups = [["3", "3", "3"], ["3", "4", None], [None, None, None], ["5", "5", None]]
    assert answer_diversity(groups) == {"distinct_answers": (1 + 2 + 0 + 1) / 4, "all_agree": 1 / 4}
    assert answer_diversity([["3"], [None]]) == {"distinct_answers": 0.5, "all_agree": 0.5}  # k = 1
    assert answer_key("so 2 + 2 = 4. The answer is 1,000.") == answer_key("The answer is 1000.0") == "1000"
    assert answer_key("no answer here") is None


def test_chance_level_and_correction_by_hand():
    assert chance_level(["1", "1", "2", "3"]) == pytest.approx(0.25 + 0.0625 + 0.0625)
    # g = 0.2: luck = WW·g/(1−g) = 0.4·0.25 = 0.1; (F − 0.1)/0.8, (B − 0.1)/0.8
    assert corrected(0.3, 0.12, 0.4, 0.2) == pytest.approx((0.25, 0.025))
    assert corrected(0.3, 0.05, 0.4, 0.2) == pytest.approx((0.25, 0.0))  # never below 0
    assert corrected(0.3, 0.12, 0.4, 0.0) == (0.3, 0.12)  # no chance: the raw shares
    assert corrected(0.3, 0.12, 0.4, 1.0) == (0.0, 0.0)  # every answer a guess: nothing known to forget
    assert chance_level([]) == 0.0


def records(rights, name="s"):
    return [{"set": name, "index": i, "right": r} for i, r in enumerate(rights)]


def test_chance_corrected_shares_from_records():
    before = records([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    after = records([1, 0, 0, 1, 0, 0, 0, 0, 0, 0])  # F 0.2, B 0.1, WW 0.6
    out = chance_corrected(before, after, {"s": 0.25}, {"id": ["s"], "ood": []})
    luck = 0.6 * 0.25 / 0.75
    assert out["s/forgotten_adj"] == pytest.approx((0.2 - luck) / 0.75)
    assert out["s/newly_solved_adj"] == 0.0 and out["id/forgotten_adj"] == out["s/forgotten_adj"]
    assert "ood/forgotten_adj" not in out


def test_verified_pass1_needs_a_right_answer_with_sound_steps():
    assert SOUND == CLASSES[0]  # the checker's name for right steps
    rows = [{"set": "s", "index": 0, "right": True, "steps": ["sound", "wrong"]},
            {"set": "s", "index": 1, "right": True, "steps": ["shortcut"]},
            {"set": "s", "index": 2, "right": False, "steps": ["wrong"]},
            {"set": "s", "index": 3, "right": True, "steps": ["sound"]},
            {"set": "bench", "index": 0, "right": True}]  # no step classes: not counted
    out = verified_pass1(rows, {"id": ["s"], "ood": ["bench"]})
    assert out == {"s/verified": 0.5, "id/verified": 0.5}


def test_group_means_are_over_the_sets_that_have_the_measure():
    out = group_means({"a/verified": 0.2, "b/verified": 0.6}, {"ood": ["a", "b", "c"], "id": ["d"]}, ("verified",))
    assert out == {"ood/verified": pytest.approx(0.4)}


def test_an_evaluation_logs_verified_and_forgetting_since_the_base(tmp_path):
    from imm.loop import Result, _Stages

    logged = {}
    tracker = SimpleNamespace(metrics=lambda m, step: logged.update({(k, step): v for k, v in m.items()}),
                              artifact=lambda *a, **k: None)
    stage = _Stages(Result(sets=["s"]), tracker, {"id": ["s"], "ood": []}, {"s": 0.1}, tmp_path)
    rows = lambda rights: [{"set": "s", "index": i, "right": bool(r), "steps": ["sound" if r else "wrong"]}  # noqa: E731
                           for i, r in enumerate(rights)]
    stage.record("Base", "base", 0, {"s": 0.3}, rows([1, 1, 1, 0, 0, 0, 0, 0, 0, 0]))
    stage.record("SFT 1", "sft", 1, {"s": 0.2}, rows([1, 0, 0, 1, 0, 0, 0, 0, 0, 0]))  # F 0.2, B 0.1, WW 0.6
    assert logged[("eval/base/s/verified", 0)] == pytest.approx(0.3) and ("eval/base/s/forgotten", 0) not in logged
    luck = 0.6 * 0.1 / 0.9
    assert logged[("eval/sft/s/forgotten", 1)] == pytest.approx(0.2)
    assert logged[("eval/sft/s/newly_solved", 1)] == pytest.approx(0.1)
    assert logged[("eval/sft/id/forgotten_adj", 1)] == pytest.approx((0.2 - luck) / 0.9)
    assert logged[("eval/sft/s/newly_solved_adj", 1)] == pytest.approx((0.1 - luck) / 0.9)
    assert logged[("eval/sft/id/verified", 1)] == pytest.approx(0.2) and logged[("eval/sft/s", 1)] == 0.2
