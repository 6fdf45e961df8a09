"""Supervised fine-tuning on kept samples: maximise log p(rationale, answer | question).

The loss covers the response tokens only (prompt and padding are labelled -100). Batches are
grouped by length (sorted chunks, shuffled order), so little compute goes into padding.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Optional

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from imm import interventions
from imm.interventions import PAPER_VALUES

IGNORE = -100


@dataclass
class SFTConfig:
    epochs: int = 6  # passes over the iteration's training set (paper: 3 at LLM scale)
    lr: float = 1e-3  # peak learning rate (paper: 2e-5 at LLM scale)
    batch_size: int = 16  # sequences per optimizer micro-batch (paper: 4 per device)
    grad_accum: int = 1  # micro-batches per optimizer step (paper: 4)
    warmup_ratio: float = 0.03  # share of steps with linear warm-up (paper: 0.03)
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # gradient clipping; 0 disables
    seed: int = 0  # batch order seed (combined with the iteration)
    backend: str = "torch"  # torch: the loop below, one process | trl: TRL SFTTrainer (bf16, DeepSpeed, multi-GPU)
    intervention: str = "none"  # none | grad_decay | grad_clip | weight_mask (paper Table 5; imm/interventions.py)
    intervention_value: float = 0.0  # γ, max norm or top-p of the intervention; 0 = the paper's (0.9, 2.0, 0.3)
    deepspeed: Optional[str] = None  # trl only: a DeepSpeed JSON (conf/deepspeed/zero3.json); None = no DeepSpeed

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("sft.epochs, sft.batch_size and sft.grad_accum must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"sft.lr={self.lr} must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"sft.warmup_ratio={self.warmup_ratio} must lie in [0, 1)")
        if self.backend not in ("torch", "trl"):
            raise ValueError(f"sft.backend={self.backend!r} is not one of ('torch', 'trl')")
        if self.intervention not in PAPER_VALUES:
            raise ValueError(f"sft.intervention={self.intervention!r} is not one of {sorted(PAPER_VALUES)}")
        if self.intervention != "none" and self.backend != "torch":
            raise ValueError("sft.intervention needs sft.backend=torch")
        if self.intervention == "weight_mask" and not 0 <= self.intervention_value < 1:
            raise ValueError(f"sft.intervention_value={self.intervention_value} must lie in [0, 1) for weight_mask")
        if self.deepspeed and self.backend != "trl":
            raise ValueError("sft.deepspeed needs sft.backend=trl")


def encode(tok, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt + response + EOS and labels that mask the prompt."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(" " + response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return p + r, [IGNORE] * len(p) + r


def batches(examples: list[tuple[list[int], list[int]]], size: int, rng: random.Random):
    """Length-grouped batches in a shuffled order."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))
    chunks = [order[i:i + size] for i in range(0, len(order), size)]
    rng.shuffle(chunks)
    return chunks


def collate(examples, idx, pad_id: int):
    width = max(len(examples[i][0]) for i in idx)
    ids = torch.full((len(idx), width), pad_id)
    labels = torch.full((len(idx), width), IGNORE)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        x, y = examples[i]
        ids[row, :len(x)], labels[row, :len(y)], mask[row, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids, labels, mask


def train(model, tok, rows: list[dict], prompt_fn, cfg: SFTConfig, iteration: int) -> dict:
    """Fine-tune ``model`` in place on rows {question, response}; returns loss and throughput stats."""
    if cfg.backend == "trl":
        from imm.sft_trainer import train_trl

        return train_trl(model, tok, rows, prompt_fn, cfg, iteration, deepspeed=cfg.deepspeed,
                         bf16=next(model.parameters()).dtype == torch.bfloat16)
    examples = [encode(tok, prompt_fn(r["question"]), r["response"]) for r in rows]
    rng = random.Random(cfg.seed * 1_000_003 + iteration)
    torch.manual_seed(cfg.seed * 1_000_003 + iteration)
    steps_per_epoch = math.ceil(math.ceil(len(examples) / cfg.batch_size) / cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}  # one kernel per step on a GPU
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)
    how, val = cfg.intervention, interventions.value(cfg.intervention, cfg.intervention_value)
    max_norm = interventions.clip_norm(how, val, cfg.max_grad_norm)
    before = {n: p.detach().clone() for n, p in model.named_parameters()} if how == "weight_mask" else None
    model.train()
    losses, tokens, padded, start = [], 0, 0, time.perf_counter()
    bar = tqdm(total=total, desc=f"sft it{iteration}", unit="step", leave=False, mininterval=2)
    for epoch in range(cfg.epochs):
        chunks = batches(examples, cfg.batch_size, rng)
        for b, idx in enumerate(chunks):
            ids, labels, mask = (t.to(model.device) for t in collate(examples, idx, tok.pad_token_id))
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"SFT loss became {loss.item()} at iteration {iteration}, "
                                         f"epoch {epoch}, batch {b}: lower sft.lr or check the data")
            (loss / cfg.grad_accum).backward()
            losses.append(loss.item())
            tokens += int(mask.sum())
            padded += mask.numel()
            if (b + 1) % cfg.grad_accum == 0 or b + 1 == len(chunks):
                if max_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                opt.step()
                sched.step()
                interventions.decay_step_size(opt, how, val, epoch)
                opt.zero_grad(set_to_none=True)
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
    bar.close()
    kept = interventions.keep_top_updates(model, before, val) if before is not None else 1.0
    model.eval()
    last = losses[-max(1, len(losses) // cfg.epochs):]
    return {"loss": sum(last) / len(last), "first_loss": losses[0], "steps": total,
            "tokens_per_s": tokens / (time.perf_counter() - start), "pad_share": 1 - tokens / max(padded, 1), "kept_share": kept}
