"""The ``gen/*`` and ``sft/*`` figures a round logs, each computed by hand on small inputs through the
function that reports it: the sampling yield and coverage, how samples ended, the kept text, the SFT
loop's losses, steps, padding share, throughput and learning rates (a tiny Qwen2 on the CPU, its
losses recomputed apart), weight masking's kept share, and the flattening into MLflow names.

    python -m pytest tests/unit/test_round_figures.py
"""

import random
from types import SimpleNamespace

import pytest
import torch

from imm.grading.filtering import keep_correct
from imm.loop import _flat
from imm.sampling import ending_shares
from imm.sft import interventions, torch_loop
from imm.sft.config import SFTConfig
from imm.stages import kept_text


def test_yield_coverage_and_no_answer():
    items = [{"question": q, "answer": a} for q, a in (("a", "7"), ("b", "3"), ("c", "5"))]
    texts = [["The answer is 7.", "The answer is 7.", "none"], ["The answer is 4.", "none", "none"],
             ["The answer is 5.", "The answer is 6.", "The answer is 5."]]
    samples = [[{"text": t, "temperature": 0.5} for t in group] for group in texts]
    _, y = keep_correct(items, samples, iteration=0)
    assert (y.sampled, y.kept, y.questions, y.covered, y.no_answer) == (9, 4, 3, 2, 3)
    assert y.rate == pytest.approx(4 / 9) and y.coverage == pytest.approx(2 / 3)
    from imm.grading.filtering import Yield
    assert (Yield(0, 0, 0, 0).rate, Yield(0, 0, 0, 0).coverage) == (0.0, 0.0)  # nothing sampled, no question


def test_ending_shares():
    assert ending_shares(["length", "stop", "eos", "stop", "length", "length", "eos", "eos"]) == \
        {"ran_to_limit": 3 / 8, "stopped": 2 / 8}
    assert ending_shares(["length"]) == {"ran_to_limit": 1.0, "stopped": 0.0} and ending_shares([]) == {}


def test_kept_text_shares_trailing_samples_and_their_mean_length():
    kept = [{"response": "3 + 4 = 7. The answer is 7.", "tokens": 12},
            {"response": "The answer is 7.\nQuestion: what next?", "tokens": 20},
            {"response": "The answer is 7.   ", "tokens": 7}, {"response": "The answer is 7. So 7."}]
    assert kept_text(kept) == {"kept_trailing": 2 / 4, "kept_tokens": (12 + 20 + 7) / 3}
    assert kept_text([]) == {}


def test_nested_figures_flatten_to_mlflow_names_numbers_only():
    y = {"yield": 0.5, "device": "cpu", "form": {"canonical": 0.25}, "new_tokens": None, "kept": 3}
    assert _flat(y, "gen/") == {"gen/yield": 0.5, "gen/form/canonical": 0.25, "gen/kept": 3}


class Tok:
    """Characters as tokens (a–z → 0–25), 26 the EOS, 27 the padding."""
    eos_token_id, pad_token_id = 26, 27

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) - 97 for c in text if c.isalpha()]}


def tiny_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=28, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg).float()


def loss_apart(model, ids, labels):
    """The mean token cross-entropy of the labelled next tokens, from the logits."""
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=(ids != Tok.pad_token_id).long()).logits.float()
    return float(torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 28), labels[:, 1:].reshape(-1),
                                                   ignore_index=-100))


def train(model, rows, cfg, monkeypatch, clock=(5.0, 15.0)):
    """torch_loop.train on ``rows`` with a stubbed clock (the first reading, then the second), recording
    each on_step call as (step, total, forward passes so far) and checking no gradient is left over."""
    ticks, calls, forwards = iter(clock[:1]), [], []
    monkeypatch.setattr(torch_loop, "time", SimpleNamespace(perf_counter=lambda: next(ticks, clock[1])))
    model.model.register_forward_hook(lambda *a: forwards.append(1))  # the decoder: every micro-batch runs it
    stats = torch_loop.train(model, Tok(), rows, lambda q: q, cfg, iteration=1,
                             on_step=lambda m, step, total: calls.append((step, total, len(forwards))))
    assert all(p.grad is None for p in model.parameters())  # the last micro-batch was stepped too
    return stats, calls


ROWS = [{"question": q, "response": r} for q, r in (("ab", "c"), ("abc", "de"), ("abcd", "efg"), ("abcde", "fghi"))]


def test_sft_losses_steps_padding_throughput_and_learning_rates(monkeypatch):
    """4 rows of 4 lengths, 2 a batch, 2 epochs: batches {the two shortest}, {the two longest} each epoch in
    a seeded order, 4 optimizer steps. lr 1e-12 leaves the weights as they are, so every batch's loss is
    the untrained model's; warm-up 1 of 4 steps, then linear decay; grad_decay γ 0.5 from epoch 1 on."""
    cfg = SFTConfig(epochs=2, lr=1e-12, batch_size=2, warmup_ratio=0.25, max_grad_norm=0.0, seed=1,
                    intervention="grad_decay", intervention_value=0.5)
    model, tok = tiny_model(), Tok()
    examples = [torch_loop.encode(tok, r["question"], r["response"]) for r in ROWS]  # lengths 4, 6, 8, 10
    chunks = [[0, 1], [2, 3]]
    random.Random(cfg.seed * 1_000_003 + 1).shuffle(chunks)  # the first epoch's order (seed 1, iteration 1)
    losses = {tuple(c): loss_apart(model, *torch_loop.collate(examples, c, tok.pad_token_id)[:2]) for c in chunks}
    stats, calls = train(model, ROWS, cfg, monkeypatch)
    assert stats["first_loss"] == pytest.approx(losses[tuple(chunks[0])], rel=1e-5)
    assert stats["loss"] == pytest.approx(sum(losses.values()) / 2, rel=1e-5)  # the last epoch's mean
    assert (stats["steps"], stats["global_batch"], stats["kept_share"]) == (4, 2, 1.0)
    tokens, padded = 2 * (4 + 6 + 8 + 10), 2 * (2 * 6 + 2 * 10)  # each batch padded to its longest row
    assert stats["pad_share"] == pytest.approx(1 - tokens / padded)
    assert stats["tokens_per_s"] == pytest.approx(tokens / 10.0)  # 15 s − 5 s on the stubbed clock
    # warm-up to the peak at step 1, then (4 − s) / 3 of it: 0, 1, 2/3, 1/3; epoch 1 at γ¹ = 0.5
    assert stats["lrs"] == pytest.approx([0.0, 1e-12, 1e-12 / 3, 1e-12 / 6], rel=1e-9, abs=1e-20)
    assert calls == [(0, 4, 0), (1, 4, 1), (2, 4, 2), (3, 4, 3), (4, 4, 4)]


def test_sft_accumulates_micro_batches_into_steps(monkeypatch):
    """5 rows, 1 a micro-batch, a global batch of 3: optimizer steps after micro-batches 3 and 5."""
    cfg = SFTConfig(epochs=1, lr=1e-12, batch_size=1, global_batch=3, warmup_ratio=0.0, max_grad_norm=0.0)
    rows = ROWS + [{"question": "abcdef", "response": "g"}]
    stats, calls = train(tiny_model(), rows, cfg, monkeypatch)
    assert (stats["steps"], stats["global_batch"], len(stats["lrs"])) == (2, 3, 2)
    assert calls == [(0, 2, 0), (1, 2, 3), (2, 2, 5)]


def test_sft_loss_is_the_last_epochs(monkeypatch):
    """One batch an epoch, a real step between the epochs: ``loss`` is the trained model's loss on it
    (read at the step), ``first_loss`` the untrained one's."""
    cfg = SFTConfig(epochs=2, lr=1e-2, batch_size=2, warmup_ratio=0.0, max_grad_norm=0.0)
    model, tok = tiny_model(), Tok()
    batch = torch_loop.collate([torch_loop.encode(tok, r["question"], r["response"]) for r in ROWS[:2]], [0, 1],
                               tok.pad_token_id)[:2]
    untrained, after_step = loss_apart(model, *batch), []
    ticks = iter([0.0])
    monkeypatch.setattr(torch_loop, "time", SimpleNamespace(perf_counter=lambda: next(ticks, 1.0)))
    stats = torch_loop.train(model, tok, ROWS[:2], lambda q: q, cfg, iteration=0,
                             on_step=lambda m, step, total: after_step.append(loss_apart(m, *batch)) if step == 1 else None)
    assert stats["first_loss"] == pytest.approx(untrained, rel=1e-5)
    assert stats["loss"] == pytest.approx(after_step[0], rel=1e-5) and stats["loss"] < untrained


def test_weight_masking_keeps_the_largest_updates_and_reports_their_share():
    layer = torch.nn.Linear(5, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(10.0).reshape(2, 5))
        layer.bias.copy_(torch.tensor([1.0, 3.0]))
    before = {"weight": torch.full((2, 5), 5.0), "bias": torch.zeros(2)}
    share = interventions.keep_top_updates(layer, before, 0.3)
    # weight: top 3 of 10 |Δ| = |i − 5|: 5, 4, 4 (i = 0, 1, 9); bias: round(0.3 · 2) = 1 of 2, the 3
    assert share == pytest.approx(4 / 12)
    assert layer.weight.flatten().tolist() == [0.0, 1.0] + [5.0] * 7 + [9.0]
    assert layer.bias.tolist() == [0.0, 3.0]
