"""Sampling chain-of-thought solutions (the ``hf`` backend: transformers models, our decoding loop).

``synthesize`` draws k samples per question spread over the configured temperatures (sample i
uses temperatures[i % len]), all k in one decoding call per batch; ``complete`` is the batched
primitive that evaluation reuses. Prompts are sorted by length and left-padded; finished
sequences leave the batch (imm/decoding.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List

import torch
from tqdm.auto import tqdm

from imm.grading.answers import STOP_STRINGS, cut_at_stop
from imm.sampling.decode import decode
from imm.sampling.decode_compiled import decode_static

BACKENDS = ("hf", "vllm")
MAX_ROWS = 512  # sequences decoded at once on CPU; more gives no speed, only memory
WIDTH_STEP = 64  # compile=true: prompts are left-padded to a multiple of this many tokens


@dataclass
class GenerateConfig:
    backend: str = "hf"  # hf: transformers model + imm's batched decoding | vllm: one engine per stage (GPU)
    k: int = 4  # samples per training question (paper: 3 for GSM8K, 6 for MATH)
    temperatures: List[float] = field(default_factory=lambda: [0.2, 0.4, 0.6])  # spread of the k samples
    top_p: float = 1.0  # nucleus sampling mass, (0, 1]
    max_new_tokens: int = 96  # longest sample, in tokens
    batch_size: int = 0  # prompts per decoding call; 0 = chosen from the model's KV-cache size and memory
    seed: int = 0  # sampling seed (combined with the iteration)
    tensor_parallel_size: int = 1  # vllm only: GPUs one engine spans
    compile: bool = False  # hf only: static KV cache + compiled step (CUDA graphs on a GPU), rows stay in the batch

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"generate.backend={self.backend!r} is not one of {BACKENDS}")
        if self.k < 1:
            raise ValueError(f"generate.k={self.k} must be >= 1")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError(f"generate.temperatures={self.temperatures} must be a non-empty list of values >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"generate.top_p={self.top_p} must lie in (0, 1]")
        if self.compile and self.backend != "hf":
            raise ValueError("generate.compile applies to the hf backend (vllm captures its own CUDA graphs)")
        if self.max_new_tokens < 1 or self.batch_size < 0:
            raise ValueError("generate.max_new_tokens must be >= 1 and generate.batch_size >= 0")


def auto_batch_size(model, n: int, max_len: int) -> int:
    """Prompts per call so that n samples each fit a quarter of free memory as KV cache."""
    c = model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    per_row = 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * max_len * model.dtype.itemsize
    if model.device.type == "cuda":
        free = torch.cuda.mem_get_info(model.device)[0]
        cap = 4096
    else:
        import psutil

        free, cap = psutil.virtual_memory().available, MAX_ROWS
    rows = max(1, min(cap, int(free * 0.25 // per_row)))
    return max(1, rows // n)


def complete(model, tok, prompts: list[str], *, n: int = 1, temperatures: list[float] | float = 0.0,
             top_p: float = 1.0, max_new_tokens: int = 96, batch_size: int = 0, seed: int = 0,
             desc: str = "generate", stops: tuple[str, ...] = STOP_STRINGS, compile: bool = False
             ) -> list[list[str]]:
    """n completions per prompt (sample j at temperatures[j % len]; 0 = greedy), cut at the stop strings.

    ``compile``: static KV cache and a compiled step (imm/decoding_static.py) instead of imm's
    row-dropping loop; every batch is padded to one prompt length and row count, so it compiles once."""
    temps = [temperatures] * n if isinstance(temperatures, (int, float)) else \
        [temperatures[j % len(temperatures)] for j in range(n)]
    tok.padding_side = "left"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    width = None
    if compile:  # prompt length rounded up, so test sets of similar prompts share one compiled shape
        width = -(-max(map(len, tok(prompts, add_special_tokens=True)["input_ids"])) // WIDTH_STEP) * WIDTH_STEP
    size = batch_size or auto_batch_size(model, n, max_new_tokens + (width or max(len(p) for p in prompts)))
    gen = torch.Generator(device=model.device).manual_seed(seed)
    out: list[list[str]] = [[] for _ in prompts]
    new_tokens, start = 0, time.perf_counter()
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", leave=False, mininterval=2)
    for b in range(0, len(order), size):
        idx = order[b:b + size]
        batch = [prompts[i] for i in idx]
        if compile:  # same shape as every other batch: pad the last one with copies of its last prompt
            batch += batch[-1:] * (min(size, len(order)) - len(batch))
        enc = tok(batch, return_tensors="pt", padding="max_length" if compile else True, max_length=width,
                  return_token_type_ids=False)
        args = (model, tok, enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device))
        kw = dict(n=n, temps=temps, top_p=top_p, max_new_tokens=max_new_tokens, stops=stops)
        ids = decode_static(*args, **kw, seed=seed * 1_000_003 + b)[:len(idx) * n] if compile else \
            decode(*args, **kw, generator=gen)
        new_tokens += sum(map(len, ids))
        texts = tok.batch_decode(ids, skip_special_tokens=True)
        for j, i in enumerate(idx):
            out[i] = [cut_at_stop(t, stops).strip() for t in texts[j * n:(j + 1) * n]]
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{new_tokens / (time.perf_counter() - start):.0f}")
    bar.close()
    return out


def synthesize(model, tok, prompts: list[str], cfg: GenerateConfig, iteration: int) -> list[list[dict]]:
    """k samples per prompt as [{"text", "temperature"}], sample i at temperatures[i % len]."""
    temps = [cfg.temperatures[i % len(cfg.temperatures)] for i in range(cfg.k)]
    texts = complete(model, tok, prompts, n=cfg.k, temperatures=temps, top_p=cfg.top_p,
                     max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                     seed=cfg.seed * 1_000_003 + iteration, desc=f"sample it{iteration + 1}", compile=cfg.compile)
    return [[{"text": t, "temperature": temp} for t, temp in zip(group, temps)] for group in texts]
