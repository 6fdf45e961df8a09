"""How far a tuned model's next-token distributions moved from the base model's, from their logits.

"RL's Razor" (arXiv 2509.04259) finds forgetting predicted by the forward KL between the start model
and the tuned one. Here both directions are measured token by token on fixed sequences: a prompt
and a response (the base model's own answer, so the forward direction is on-policy for the base),
teacher-forced through both models; at every response position t (the EOS included)

    forward  KL(π_base ‖ π) = Σ_v π_base(v | x_<t) · (log π_base(v | x_<t) − log π(v | x_<t))
    reverse  KL(π ‖ π_base)

over the whole vocabulary, averaged over all response tokens of all sequences (pooled, so a long
answer weighs by its length). Computed in float64 from the logits.
"""

from __future__ import annotations

import torch

from imm.sampling.decode import Prefix, cache_kwarg, shared_prefix
from imm.sft.torch_loop import IGNORE, collate, encode


def token_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(P‖Q), KL(Q‖P)) per position for logits of shape (..., vocab), in float64."""
    log_p = torch.log_softmax(p_logits.double(), dim=-1)
    log_q = torch.log_softmax(q_logits.double(), dim=-1)
    diff = log_p - log_q
    return (log_p.exp() * diff).sum(-1), (log_q.exp() * -diff).sum(-1)


def response_kl(base, model, tok, prompts: list[str], responses: list[str], batch_size: int = 16) -> dict[str, float]:
    """``forward`` KL(π_base‖π) and ``reverse`` KL(π‖π_base) per response token, and ``tokens``: how
    many positions the means are over. ``base`` and ``model`` share the tokenizer ``tok``.

    The prompts' shared first tokens (a few-shot prefix: most of each sequence) run once per model and
    their KV cache is copied into each batch, as in sampling (imm.sampling.decode.Prefix)."""
    examples = [encode(tok, p, r) for p, r in zip(prompts, responses, strict=True)]
    # shared by the prompt parts only, so the first token after it is still a prompt token: the
    # prediction made at the prefix's last position, which the batches do not recompute, is never a target
    common = shared_prefix([[t for t, y in zip(*ex) if y == IGNORE] for ex in examples])
    prefixes = {id(m): Prefix(m, examples[0][0][:common]) for m in (base, model)} if common else {}
    fwd = rev = 0.0
    n = 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            idx = list(range(start, min(start + batch_size, len(examples))))
            ids, labels, mask = collate(examples, idx, tok.pad_token_id)
            ids, labels, mask = ids[:, common:], labels[:, common:], mask[:, common:]
            # the logits at position t predict token t+1: keep the positions whose next token is a response token
            target = labels[:, 1:] != IGNORE
            logits_b = _logits(base, ids, mask, prefixes.get(id(base)))[:, :-1]
            logits_m = _logits(model, ids, mask, prefixes.get(id(model)))[:, :-1]
            f, r = token_kl(logits_b[target.to(base.device)].cpu(), logits_m[target.to(model.device)].cpu())
            fwd, rev, n = fwd + float(f.sum()), rev + float(r.sum()), n + int(target.sum())
    return {"forward": fwd / n if n else 0.0, "reverse": rev / n if n else 0.0, "tokens": n}


def _logits(net, ids: torch.Tensor, mask: torch.Tensor, prefix: Prefix | None) -> torch.Tensor:
    """``net``'s logits at every position of ``ids`` (after ``prefix``'s tokens, when given)."""
    if prefix is None:
        return net(input_ids=ids.to(net.device), attention_mask=mask.to(net.device)).logits
    mask = torch.cat([torch.ones(len(ids), prefix.length, dtype=mask.dtype), mask], dim=1)
    return net(input_ids=ids.to(net.device), attention_mask=mask.to(net.device),
               **{cache_kwarg(net): prefix.cache_for(len(ids)), "use_cache": True}).logits


def held_out(items_by_set: dict[str, list[dict]], base_records: list[dict], sets: list[str], n: int,
             prompt_fn) -> tuple[list[str], list[str]]:
    """The fixed sequences: the first ``n`` items of each of ``sets``, with the base model's answer
    to each (its evaluation record's text) as the response."""
    text = {(r["set"], r["index"]): r["text"] for r in base_records}
    prompts, responses = [], []
    for name in sets:
        for i, item in enumerate(items_by_set[name][:n]):
            prompts.append(prompt_fn(item))
            responses.append(text[(name, i)])
    return prompts, responses
