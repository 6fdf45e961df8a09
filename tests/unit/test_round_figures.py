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


def test_ending_shares():
    assert ending_shares(["length", "stop", "eos", "stop", "length", "length", "eos", "eos"]) == \
        {"ran_to_limit": 3 / 8, "stopped": 2 / 8}
    assert ending_shares([]) == {}


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


def test_sft_losses_steps_padding_throughput_and_learning_rates(monkeypatch):
    """4 rows of 4 lengths, 2 a batch, 2 epochs: batches {the two shortest}, {the two longest} each epoch in
    a seeded order, 4 optimizer steps. lr 1e-12 leaves the weights as they are, so every batch's loss is
    the untrained model's; warm-up 2 of 4 steps (linear), grad_decay γ 0.5 from epoch 1 on."""
    rows = [{"question": q, "response": r} for q, r in (("ab", "c"), ("abc", "de"), ("abcd", "efg"), ("abcde", "fghi"))]
    cfg = SFTConfig(epochs=2, lr=1e-12, batch_size=2, warmup_ratio=0.5, max_grad_norm=0.0,
                    intervention="grad_decay", intervention_value=0.5)
    model, tok = tiny_model(), Tok()
    examples = [torch_loop.encode(tok, r["question"], r["response"]) for r in rows]  # lengths 4, 6, 8, 10
    chunks = [[0, 1], [2, 3]]
    random.Random(cfg.seed * 1_000_003 + 1).shuffle(chunks)  # the first epoch's order (iteration 1)
    losses = {tuple(c): loss_apart(model, *torch_loop.collate(examples, c, tok.pad_token_id)[:2]) for c in chunks}
    ticks = iter([0.0])
    monkeypatch.setattr(torch_loop, "time", SimpleNamespace(perf_counter=lambda: next(ticks, 10.0)))
    stats = torch_loop.train(model, tok, rows, lambda q: q, cfg, iteration=1)
    assert stats["first_loss"] == pytest.approx(losses[tuple(chunks[0])], rel=1e-5)
    assert stats["loss"] == pytest.approx(sum(losses.values()) / 2, rel=1e-5)  # the last epoch's mean
    assert (stats["steps"], stats["global_batch"], stats["kept_share"]) == (4, 2, 1.0)
    tokens, padded = 2 * (4 + 6 + 8 + 10), 2 * (2 * 6 + 2 * 10)  # each batch padded to its longest row
    assert stats["pad_share"] == pytest.approx(1 - tokens / padded)
    assert stats["tokens_per_s"] == pytest.approx(tokens / 10.0)  # 10 s on the stubbed clock
    # linear warm-up over 2 steps, then down to 0 at step 4: 0, 1/2, 1, 1/2 of the peak; epoch 1 at γ¹
    assert stats["lrs"] == pytest.approx([0.0, 0.5e-12, 0.5 * 1e-12, 0.5 * 0.5e-12], rel=1e-9, abs=1e-20)


def test_weight_masking_keeps_the_largest_updates_and_reports_their_share():
    layer = torch.nn.Linear(5, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.arange(10.0).reshape(2, 5))
    before = {"weight": torch.zeros(2, 5)}
    share = interventions.keep_top_updates(layer, before, 0.3)  # top 3 of 10 |Δ|: 7, 8, 9
    assert share == pytest.approx(0.3)
    assert layer.weight.flatten().tolist() == [0.0] * 7 + [7.0, 8.0, 9.0]
