"""Supervised fine-tuning on kept samples: maximise log p(rationale, answer | question).

The loss covers the response tokens only (prompt and padding are labelled -100). Batches are
grouped by length (sorted chunks, shuffled order), so little compute goes into padding.

Mixed precision as the paper trains: the caller hands an fp32 model (the master weights) and
``amp=torch.bfloat16`` (or float16). bf16 computes on bf16 copies of the weights while AdamW updates
fp32 masters (imm.sft.precision.MasterWeights; under the ``steps`` merge schedule, whose hook edits
the model's weights between steps, and for float16, the forward and backward run under autocast
instead). Updating bf16 weights directly would lose most small steps: at lr 2e-5 an update is below
half a bf16 ulp of most weights and rounds away. The loss's output head runs on the response tokens
only (imm.sft.precision.response_loss), and AdamW is torch's fused kernel (on the CPU too: ~4x its
per-tensor loop on SmolLM2's 135M parameters).
"""

from __future__ import annotations

import math
import random
import time

import torch
from tqdm.auto import tqdm

import imm.sft.interventions as interventions
from imm.sft.config import SFTConfig
from imm.sft.precision import IGNORE, MasterWeights, response_loss


def encode(tok, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Token ids of prompt + response + EOS and labels that mask the prompt.

    The prompt is tokenized as sampling and evaluation tokenize it (with the tokenizer's special tokens:
    a Llama-style BOS) and the response follows it as the model wrote it (kept samples keep their
    leading whitespace): its tokens are those of prompt + response after the prompt's, so a SentencePiece
    tokenizer does not put a word-start "▁" before a response that begins with a newline. Where joining
    changes the prompt's own last tokens, the response is tokenized apart."""
    p = tok(prompt, add_special_tokens=True)["input_ids"]
    joined = tok(prompt + response, add_special_tokens=True)["input_ids"]
    r = joined[len(p):] if joined[:len(p)] == p else tok(response, add_special_tokens=False)["input_ids"]
    r = r + [tok.eos_token_id]
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


def train(model, tok, rows: list[dict], prompt_fn, cfg: SFTConfig, iteration: int,
          amp: torch.dtype | None = None, on_step=None) -> dict:
    """Fine-tune ``model`` in place on rows {question, response}; returns loss and throughput stats.

    ``amp``: compute dtype under autocast (bf16 / fp16) while the model's own weights stay as they are.
    ``on_step(model, step, total)``: called with step 0 before training and after every optimizer
    step (the ``steps`` merge schedule pulls the weights there: imm.merge.schedule)."""
    examples = [encode(tok, prompt_fn(r["question"]), r["response"]) for r in rows]
    rng = random.Random(cfg.seed * 1_000_003 + iteration)
    torch.manual_seed(cfg.seed * 1_000_003 + iteration)
    accum = cfg.accumulation(1)  # one process
    steps_per_epoch = math.ceil(math.ceil(len(examples) / cfg.batch_size) / accum)
    total = steps_per_epoch * cfg.epochs
    device = model.device
    # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    how, val = cfg.intervention, interventions.value(cfg.intervention, cfg.intervention_value)
    before = {n: p.detach().clone() for n, p in model.named_parameters()} if how == "weight_mask" else None
    masters = MasterWeights(model, amp) if amp == torch.bfloat16 and on_step is None else None
    autocast = amp is not None and masters is None
    params = masters.master if masters else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=device.type in ("cuda", "cpu"))
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    decay = get_cosine_schedule_with_warmup if cfg.scheduler == "cosine" else get_linear_schedule_with_warmup
    sched = decay(opt, int(cfg.warmup_ratio * total), total)
    max_norm = interventions.clip_norm(how, val, cfg.max_grad_norm)
    model.train()
    if on_step:
        on_step(model, 0, total)
    losses, lrs, tokens, padded, start = [], [], 0, 0, time.perf_counter()
    bar = tqdm(total=total, desc=f"sft it{iteration}", unit="step", leave=False, mininterval=2)
    for epoch in range(cfg.epochs):
        chunks = batches(examples, cfg.batch_size, rng)
        for b, idx in enumerate(chunks):
            ids, labels, mask = (t.to(device) for t in collate(examples, idx, tok.pad_token_id))
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=autocast):
                loss = response_loss(model, ids, mask, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"SFT loss became {loss.item()} at iteration {iteration}, "
                                         f"epoch {epoch}, batch {b}: lower sft.lr or check the data")
            scaler.scale(loss / accum).backward()
            if masters:
                masters.accumulate()
            losses.append(loss.item())
            tokens += int(mask.sum())
            padded += mask.numel()
            if (b + 1) % accum == 0 or b + 1 == len(chunks):
                scaler.unscale_(opt)
                if max_norm:
                    torch.nn.utils.clip_grad_norm_(params, max_norm)
                interventions.decay_step_size(opt, sched.get_last_lr(), how, val, epoch)  # this step's epoch
                lrs.append(opt.param_groups[0]["lr"])
                scaler.step(opt)
                scaler.update()
                sched.step()
                opt.zero_grad(set_to_none=True)
                if masters:
                    masters.refresh()
                if on_step:
                    on_step(model, len(lrs), total)
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
    bar.close()
    if masters:
        masters.finish()
    kept = interventions.keep_top_updates(model, before, val) if before is not None else 1.0
    model.eval()
    last = losses[-max(1, len(losses) // cfg.epochs):]
    return {"loss": sum(last) / len(last), "first_loss": losses[0], "steps": total,
            "tokens_per_s": tokens / (time.perf_counter() - start), "pad_share": 1 - tokens / max(padded, 1),
            "kept_share": kept, "global_batch": cfg.batch_size * accum, "device": str(device),
            "lrs": lrs, "losses": losses}  # the learning rate of each optimizer step, the loss of each micro-batch
