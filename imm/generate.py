"""Sampling chain-of-thought solutions with transformers (the ``hf`` backend).

``synthesize`` draws k samples per question spread over the configured temperatures (sample i
uses temperatures[i % len]); ``complete`` is the batched primitive that evaluation reuses.
Prompts are sorted by length and left-padded so a batch wastes little compute on padding.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List

import torch
from tqdm.auto import tqdm

from imm.answers import STOP_STRINGS, cut_at_stop

BACKENDS = ("hf",)


@dataclass
class GenerateConfig:
    backend: str = "hf"  # generation engine; hf = transformers generate
    k: int = 4  # samples per training question (paper: 3 for GSM8K, 6 for MATH)
    temperatures: List[float] = field(default_factory=lambda: [0.2, 0.4, 0.6])  # spread of the k samples
    top_p: float = 1.0  # nucleus sampling mass, (0, 1]
    max_new_tokens: int = 96  # longest sample, in tokens
    batch_size: int = 64  # prompts per generate call (each expands to its share of k sequences)
    seed: int = 0  # sampling seed (combined with the iteration)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"generate.backend={self.backend!r} is not one of {BACKENDS}")
        if self.k < 1:
            raise ValueError(f"generate.k={self.k} must be >= 1")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError(f"generate.temperatures={self.temperatures} must be a non-empty list of values >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"generate.top_p={self.top_p} must lie in (0, 1]")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("generate.max_new_tokens and generate.batch_size must be >= 1")


@torch.no_grad()
def complete(model, tok, prompts: list[str], *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
             max_new_tokens: int = 96, batch_size: int = 64, desc: str = "generate",
             stops: tuple[str, ...] = STOP_STRINGS) -> list[list[str]]:
    """n completions per prompt (greedy when temperature == 0), cut at the stop strings."""
    tok.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[str]] = [[] for _ in prompts]
    new_tokens, start = 0, time.perf_counter()
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", leave=False, mininterval=2)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, return_token_type_ids=False)
        enc = {k: v.to(model.device) for k, v in enc.items()}
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else \
            dict(do_sample=False)
        gen = model.generate(**enc, **sampling, num_return_sequences=n, max_new_tokens=max_new_tokens,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        gen = gen[:, enc["input_ids"].shape[1]:]
        new_tokens += int((gen != tok.pad_token_id).sum())
        texts = tok.batch_decode(gen, skip_special_tokens=True)
        for j, i in enumerate(idx):
            out[i] = [cut_at_stop(t).strip() for t in texts[j * n:(j + 1) * n]]
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{new_tokens / (time.perf_counter() - start):.0f}")
    bar.close()
    return out


def synthesize(model, tok, prompts: list[str], cfg: GenerateConfig, iteration: int) -> list[list[dict]]:
    """k samples per prompt as [{"text", "temperature"}], sample i at temperatures[i % len]."""
    counts: dict[float, int] = {}
    for i in range(cfg.k):
        t = cfg.temperatures[i % len(cfg.temperatures)]
        counts[t] = counts.get(t, 0) + 1
    samples: list[list[dict]] = [[] for _ in prompts]
    for j, (temp, n) in enumerate(counts.items()):
        torch.manual_seed(cfg.seed * 1_000_003 + iteration * 1009 + j)
        texts = complete(model, tok, prompts, n=n, temperature=temp, top_p=cfg.top_p,
                         max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                         desc=f"sample T={temp}")
        for i, group in enumerate(texts):
            samples[i].extend({"text": t, "temperature": temp} for t in group)
    return samples
