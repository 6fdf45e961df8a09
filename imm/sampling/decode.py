"""Batched autoregressive decoding that drops finished sequences from the batch as it goes.

``transformers``' ``generate`` keeps every row of a batch until the slowest one ends; here a row
leaves the batch (and the KV cache) as soon as it emits EOS or a stop string, so the cost of a
batch follows its sequences' real lengths. The prompt is prefilled once and its KV cache is
repeated for its n samples; each row may have its own temperature (0 = greedy), so all k samples
of a prompt, over all temperatures, come from one call.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache


def nucleus_logits(logits: torch.Tensor, temps: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits at each row's temperature (> 0) with the tokens outside the top-p nucleus at -inf:
    sampling from their softmax is temperature-then-nucleus sampling."""
    scaled = logits.float() / temps[:, None]
    if top_p < 1.0:
        sorted_logits, order = scaled.sort(-1, descending=True)
        sorted_p = sorted_logits.softmax(-1)
        outside = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set with mass >= top_p
        scaled = scaled.scatter(-1, order, sorted_logits.masked_fill(outside, float("-inf")))
    return scaled


def sample_next(logits: torch.Tensor, temps: torch.Tensor, top_p: float, generator: torch.Generator | None,
                hot_rows: int | None = None) -> torch.Tensor:
    """One token per row: argmax where temperature is 0, else nucleus sampling at that temperature.

    ``hot_rows``: how many rows have a temperature above 0, where the caller knows; then the all-greedy
    and all-sampled batches cost no wait on the device (the draws are the same either way)."""
    if hot_rows == 0:
        return logits.argmax(-1)
    if hot_rows == logits.shape[0]:
        probs = nucleus_logits(logits, temps, top_p).softmax(-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    greedy = logits.argmax(-1)
    hot = temps > 0
    if not hot.any():
        return greedy
    probs = nucleus_logits(logits[hot], temps[hot], top_p).softmax(-1)
    drawn = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    out = greedy.clone()
    out[hot] = drawn
    return out


_TRIGGERS: dict[tuple[int, tuple[str, ...]], set[int]] = {}


def stop_triggers(tok, stops: tuple[str, ...]) -> set[int]:
    """Token ids that can complete a stop string (their text holds a stop string's last character);
    only after one of these is the tail decoded and searched."""
    key = (id(tok), stops)
    if key not in _TRIGGERS:
        last = {s[-1] for s in stops}
        vocab = tok.convert_ids_to_tokens(list(range(len(tok))))
        _TRIGGERS[key] = {i for i, piece in enumerate(vocab) if piece and any(c in piece for c in last)}
    return _TRIGGERS[key]


def _hits_stop(tok, ids: list[int], stops: tuple[str, ...], tail: int = 8) -> bool:
    text = tok.decode(ids[-tail:], skip_special_tokens=True)
    return any(s in text for s in stops)


def _cache_kwarg(model) -> str:
    """Newer transformers name the KV-cache argument ``cache``; older ones ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _last_logits_only(model) -> dict:
    """Ask the prefill for the last position's logits alone where the model can (a 150k-token vocabulary
    times every prompt position would be the largest tensor of the call)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


@torch.no_grad()
def decode(model, tok, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, n: int, temps: list[float],
           top_p: float = 1.0, max_new_tokens: int = 96, stops: tuple[str, ...] = (),
           generator: torch.Generator | None = None) -> list[list[int]]:
    """New token ids for each (prompt, sample) row, prompt-major: row i*n + j is prompt i's sample j.

    ``temps`` gives each of a prompt's n samples its temperature. Left-padded inputs."""
    device = input_ids.device
    cache = DynamicCache()
    kv = {_cache_kwarg(model): cache, "use_cache": True}
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                   **kv, **_last_logits_only(model)).logits[:, -1]
    if n > 1:  # one prefill per prompt, then n copies of its cache
        cache.batch_repeat_interleave(n)
        logits = logits.repeat_interleave(n, 0)
        attention_mask = attention_mask.repeat_interleave(n, 0)
        positions = positions.repeat_interleave(n, 0)
    rows = logits.shape[0]
    temps_of = temps * (rows // n)  # row i*n + j: temps[j]
    active = list(range(rows))  # the rows still in the batch, kept on the host: no device wait to track them
    row_temps = torch.tensor(temps_of, dtype=torch.float32, device=device)
    hot_rows = sum(t > 0 for t in temps_of)
    last_pos = positions[:, -1]
    out: list[list[int]] = [[] for _ in range(rows)]
    triggers = stop_triggers(tok, stops) if stops else set()
    eos = tok.eos_token_id
    for step in range(max_new_tokens):
        nxt = sample_next(logits, row_temps, top_p, generator, hot_rows)
        finished = []
        for r, t in zip(active, nxt.tolist()):  # the step's one wait on the device
            if t == eos:
                finished.append(True)
                continue
            out[r].append(t)
            finished.append(t in triggers and _hits_stop(tok, out[r], stops))
        if step == max_new_tokens - 1 or all(finished):
            break
        if any(finished):
            keep = [i for i, done in enumerate(finished) if not done]
            idx = torch.tensor(keep, device=device)
            cache.batch_select_indices(idx)
            active = [active[i] for i in keep]
            hot_rows = sum(temps_of[r] > 0 for r in active)
            nxt, attention_mask, last_pos, row_temps = nxt[idx], attention_mask[idx], last_pos[idx], row_temps[idx]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(active), 1)], dim=1)
        last_pos = last_pos + 1
        logits = model(input_ids=nxt[:, None], attention_mask=attention_mask, position_ids=last_pos[:, None],
                       **kv).logits[:, -1]
    return out
