"""The plan's activation estimate against what a real forward pass keeps for its backward pass: two model
shapes (a Llama with full attention heads and a narrow MLP, a Qwen2 with grouped-query attention, a wide
MLP, q/k/v biases and tied embeddings), each in float32 and under bf16 autocast, measured on the CPU as
the bytes of every distinct tensor the autograd graph saves (imm/plan/memory.py ``activation_bytes``).

    python -m pytest tests/unit/test_plan_activations.py
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from imm.plan.memory import Arch, activation_bytes

# Widths chosen so that no activation has a weight's shape (the bf16 weight copies autocast keeps are
# weights, not activations, and are told apart by shape).
SHAPES = {
    "llama": (LlamaForCausalLM, LlamaConfig(hidden_size=96, intermediate_size=272, num_hidden_layers=3,
                                            num_attention_heads=4, num_key_value_heads=4, vocab_size=700,
                                            attn_implementation="sdpa"), 80, 3),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(hidden_size=128, intermediate_size=688, num_hidden_layers=2,
                                            num_attention_heads=8, num_key_value_heads=2, vocab_size=900,
                                            tie_word_embeddings=True, attn_implementation="sdpa"), 120, 2),
}


def kept_bytes(model, ids: torch.Tensor, autocast: bool) -> int:
    """Bytes of the distinct storages the forward pass saves for backward, parameters and their casts aside."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weight_shapes = {tuple(p.shape) for p in model.parameters()} | {tuple(p.shape[::-1]) for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        is_cast = autocast and t.dtype == torch.bfloat16 and tuple(t.shape) in weight_shapes
        if storage.data_ptr() not in weights and not is_cast:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model(input_ids=ids, labels=ids).loss.item()
    return sum(kept.values())


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("compute", ["float32", "autocast"])
def test_activation_estimate_matches_what_a_forward_pass_keeps(name, compute):
    cls, cfg, seq, batch = SHAPES[name]
    torch.manual_seed(0)
    model = cls(cfg).float().train()
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    measured = kept_bytes(model, ids, compute == "autocast")
    arch = Arch(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                cfg.intermediate_size, cfg.vocab_size, cfg.tie_word_embeddings, qkv_bias=name == "qwen2")
    planned = activation_bytes(arch, seq, batch, compute, peak=False)
    # never low, at most 5% high: the count leaves out per-token scalars (RMSNorm's rsqrt, attention's
    # log-sum-exp, RoPE's cos / sin, the token ids: under 2% at these widths, less at real ones) and
    # counts the output projection's input as a copy of attention's output, which it is only with
    # grouped-query attention (with full heads the kernel's output is already laid out as its input)
    assert measured * 0.99 <= planned <= measured * 1.05, (measured, planned)


def test_the_peak_adds_the_logits_gradient_and_korthikanti_is_low_for_swiglu():
    llama7 = Arch(32, 4096, 32, 32, 11008, 32000, tied=False)
    held, peak = (activation_bytes(llama7, 1, 1, "autocast", peak=p) for p in (False, True))
    assert peak - held == 4 * 32000  # the fp32 gradient of one token's logits
    per_layer = (held - 10 * 4096 - 6 * 32000) / 32
    assert per_layer / (34 * 4096 / 2 * 2) == pytest.approx(51.5 / 34)  # Korthikanti's 34·h in 16 bits
