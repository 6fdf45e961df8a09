"""The steps schedule inside the real SFT loop: the hook sees every optimizer step, and its pulls
keep the trained model near the base (a tiny model, a few steps)."""

import pytest
import torch

from imm import sft
from imm.data.world import problems
from imm.merge.rules import MergeConfig
from imm.merge.schedule import StepPull
from imm.models import ModelConfig, load_model, load_tokenizer


def distance(model, base) -> float:
    return sum(float((p.detach() - base[n]).norm() ** 2) for n, p in model.named_parameters()) ** 0.5


def test_pulls_run_every_step_and_hold_the_model_near_the_base(tiny_model):
    tok = load_tokenizer(str(tiny_model))
    rows = [{"question": i["question"], "response": i["solution"]}
            for i in problems.make_split(problems.ID_FAMILY, "train", 32, 0)]
    cfg = sft.SFTConfig(epochs=1, batch_size=8, lr=1e-2, warmup_ratio=0.0)
    prompt = problems.format_prompt
    free = load_model(ModelConfig(path=str(tiny_model)))
    base = {n: p.detach().clone() for n, p in free.named_parameters()}
    sft.train(free, tok, rows, prompt, cfg, 0)
    pulled = load_model(ModelConfig(path=str(tiny_model)))
    pull = StepPull(MergeConfig(name="task_arithmetic", schedule="steps", every=1, beta=0.9), tiny_model, 0)
    seen = []
    stats = sft.train(pulled, tok, rows, prompt, cfg, 0, on_step=lambda m, s, t: seen.append(s) or pull(m, s, t))
    assert seen == list(range(stats["steps"] + 1))  # step 0 before training, then every optimizer step
    assert pull.stats()["pulls"] == stats["steps"] == 4
    assert distance(pulled, base) < 0.2 * distance(free, base)
    assert not torch.equal(pulled.model.embed_tokens.weight, base["model.embed_tokens.weight"])  # it still learns


def test_cosine_decay_of_the_released_code(tiny_model):
    """sft.scheduler=cosine: no warm-up, lr_t = lr·(1 + cos(π·t/T))/2 at optimizer step t of T."""
    import math

    tok = load_tokenizer(str(tiny_model))
    rows = [{"question": i["question"], "response": i["solution"]}
            for i in problems.make_split(problems.ID_FAMILY, "train", 16, 0)]
    cfg = sft.SFTConfig(epochs=1, batch_size=2, grad_accum=2, lr=1e-3, warmup_ratio=0.0, scheduler="cosine")
    stats = sft.train(load_model(ModelConfig(path=str(tiny_model))), tok, rows, problems.format_prompt, cfg, 0)
    total = stats["steps"]
    assert total == 4
    assert stats["lrs"] == [pytest.approx(1e-3 * (1 + math.cos(math.pi * t / total)) / 2) for t in range(total)]
