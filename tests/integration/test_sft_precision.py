"""The SFT loop's arithmetic: the response-only loss equals transformers' loss, and bf16 training keeps
float32 master weights whose small updates accumulate instead of rounding away."""

import torch

from imm import sft
from imm.data.world import problems
from imm.models import ModelConfig, load_model, load_tokenizer
from imm.sft.precision import MasterWeights, response_loss


def batch(tok, n=4):
    rows = problems.make_split(problems.ID_FAMILY, "train", n, 0)
    examples = [sft.encode(tok, problems.format_prompt(r["question"]), r["solution"]) for r in rows]
    return sft.collate(examples, list(range(n)), tok.pad_token_id)


def test_response_loss_equals_the_models_own_loss(tiny_model):
    tok, model = load_tokenizer(str(tiny_model)), load_model(ModelConfig(path=str(tiny_model)))
    ids, labels, mask = batch(tok)
    ours = response_loss(model, ids, mask, labels)
    theirs = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    ours.backward()
    assert model.get_output_embeddings().weight.grad is not None


def test_master_weights_keep_updates_below_half_a_bf16_ulp(tiny_model):
    model = load_model(ModelConfig(path=str(tiny_model)))
    weight = model.get_output_embeddings().weight
    weight.data = weight.data.to(torch.bfloat16).float()  # bf16-exact, as a prepared bf16 checkpoint is
    start = weight.detach().clone()
    masters = MasterWeights(model, stochastic=False)  # round to nearest
    assert weight.dtype == torch.bfloat16 and masters.master[0].dtype == torch.float32
    assert all(b.dtype == torch.float32 for b in model.buffers() if b.is_floating_point())  # RoPE untouched
    tiny = 1e-4 * start.abs()  # far below half a bf16 ulp (~2e-3 relative)
    for m, p in zip(masters.master, masters.params):
        if p is weight:
            for _ in range(5):
                m.data += tiny
                masters.refresh()
    assert torch.equal(weight.float(), start)  # each update rounds away in bf16 ...
    model = masters.finish()
    assert weight.dtype == torch.float32
    assert torch.allclose(weight - start, 5 * tiny, rtol=1e-2, atol=1e-9)  # ... and all five are in the master


def test_bf16_training_lowers_the_loss_and_returns_float32(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    rows = [{"question": i["question"], "response": i["solution"]} for i in problems.make_split(problems.ID_FAMILY, "train", 32, 0)]
    model = load_model(ModelConfig(path=str(tiny_model)))
    stats = sft.train(model, tok, rows, problems.format_prompt, sft.SFTConfig(epochs=2, batch_size=8, lr=1e-2), 0,
                      amp="bfloat16")
    assert stats["loss"] < stats["first_loss"] - 0.1
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_stochastic_refresh_moves_the_bf16_weights_by_the_update_on_average(tiny_model):
    model = load_model(ModelConfig(path=str(tiny_model)))
    weight = model.get_output_embeddings().weight
    weight.data = weight.data.to(torch.bfloat16).float()
    start = weight.detach().clone()
    masters = MasterWeights(model)  # stochastic rounding, the default
    m = next(m for m, p in zip(masters.master, masters.params) if p is weight)
    up = torch.nextafter(start.to(torch.bfloat16), torch.full_like(start, float("inf")).to(torch.bfloat16)).float()
    m.data += 0.25 * (up - start)  # a quarter of the way to each weight's upper bf16 neighbour
    masters.refresh()
    moved = weight.float()
    assert bool(((moved == start) | (moved == up)).all())  # one of the two neighbours, nothing else
    share = float((moved == up).float().mean())
    assert abs(share - 0.25) < 4 * (0.25 * 0.75 / start.numel()) ** 0.5  # up with probability 1/4
