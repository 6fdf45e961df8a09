"""The KL to the base on a real (tiny) transformer: running the prompts' shared few-shot prefix once
and copying its KV cache gives the KL of the whole sequences run through both models."""

import torch

from imm.analysis import divergence
from imm.data.world import problems
from imm.models import ModelConfig, load_model, load_tokenizer


def test_shared_prefix_kl_equals_the_full_sequences(tiny_model, monkeypatch):
    base, tok = load_model(ModelConfig(path=str(tiny_model))), load_tokenizer(str(tiny_model))
    tuned = load_model(ModelConfig(path=str(tiny_model)))
    torch.manual_seed(1)
    with torch.no_grad():
        for w in tuned.parameters():
            w.add_(0.05 * torch.randn_like(w))
    items = problems.make_split(problems.ID_FAMILY, "test", 6, 0)
    header = " ".join(problems.format_prompt(i["question"]) + " " + i["solution"] for i in items[:2]) + " "
    prompts = [header + problems.format_prompt(i["question"]) for i in items[2:]]
    responses = [" " + i["solution"] for i in items[2:]]

    used = []
    real = divergence.shared_prefix
    monkeypatch.setattr(divergence, "shared_prefix", lambda enc: used.append(real(enc)) or used[-1])
    shared = divergence.response_kl(base, tuned, tok, prompts, responses, batch_size=3)
    monkeypatch.setattr(divergence, "shared_prefix", lambda enc: 0)
    full = divergence.response_kl(base, tuned, tok, prompts, responses, batch_size=3)

    assert used[0] >= 32  # the header did run once
    assert shared["tokens"] == full["tokens"] > 0
    assert full["forward"] > 1e-4  # the perturbed model did move
    for key in ("forward", "reverse"):
        assert abs(shared[key] - full[key]) <= 1e-4 * full[key]
