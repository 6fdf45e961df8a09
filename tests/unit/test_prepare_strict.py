"""A converted model gets every weight it declares and no other (imm/prepare.py ``load_exactly``): only a
tied model's lm_head may be absent or extra.

    python -m pytest tests/unit/test_prepare_strict.py
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from imm.prepare import load_exactly


def tiny(tied: bool):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        num_key_value_heads=2, vocab_size=50, tie_word_embeddings=tied))


@pytest.mark.parametrize("tied", [True, False])
def test_a_complete_state_dict_loads_every_weight(tied):
    source, target = tiny(tied), tiny(tied)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    load_exactly(target, source.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_a_tied_model_may_lack_its_lm_head_an_untied_one_may_not():
    state = tiny(True).state_dict()
    state.pop("lm_head.weight", None)
    load_exactly(tiny(True), state)
    with pytest.raises(ValueError, match=r"missing \['lm_head.weight'\]"):
        load_exactly(tiny(False), state)


def test_a_missing_or_renamed_weight_is_refused():
    state = tiny(True).state_dict()
    state["model.layers.0.mlp.gate.weight"] = state.pop("model.layers.0.mlp.gate_proj.weight")
    with pytest.raises(ValueError, match="missing.*gate_proj.*unexpected.*mlp.gate.weight"):
        load_exactly(tiny(True), state)
