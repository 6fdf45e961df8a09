"""Batched autoregressive decoding that drops finished sequences from the batch as it goes.

``transformers``' ``generate`` keeps every row of a batch until the slowest one ends; here a row
leaves the batch (and the KV cache) as soon as it emits EOS or a stop string, so the cost of a
batch follows its sequences' real lengths. The prompt is prefilled once and its KV cache is
repeated for its n samples; each row may have its own temperature (0 = greedy), so all k samples
of a prompt, over all temperatures, come from one call.
"""

from __future__ import annotations

import copy
import inspect
from typing import TYPE_CHECKING

import torch

from imm.grading.answers import has_ended

if TYPE_CHECKING:  # transformers loads with the first cache a call makes
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
ANSWER_TRIGGERS = ("\n", ".", " ")  # characters that can complete a final-answer statement's terminator
TAIL_TOKENS = 24  # tokens decoded to test whether a sample has ended (a stop string or an answer statement)


def stop_triggers(tok, stops: tuple[str, ...]) -> set[int]:
    """Token ids that can complete a stop string (their text holds a stop string's last character);
    only after one of these is the tail decoded and searched."""
    key = (id(tok), stops)
    if key not in _TRIGGERS:
        last = {s[-1] for s in stops}
        texts = tok.batch_decode([[i] for i in range(len(tok))])  # as text: byte-level pieces spell "\n" "Ċ"
        _TRIGGERS[key] = {i for i, piece in enumerate(texts) if piece and any(c in piece for c in last)}
    return _TRIGGERS[key]


def eos_ids(model, tok) -> set[int]:
    """Every end-of-sequence id the model defines: the tokenizer's and each of ``generation_config.json``'s
    (an instruct model may list several: Qwen2.5-Instruct <|im_end|> and <|endoftext|>)."""
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    gen = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(gen) if isinstance(gen, (list, tuple)) else ({gen} if gen is not None else set())
    return ids


def _ended(tok, ids: list[int], stops: tuple[str, ...], at_answer: bool) -> bool:
    return has_ended(tok.decode(ids[-TAIL_TOKENS:], skip_special_tokens=True), stops, at_answer)


def cache_kwarg(model) -> str:
    """Newer transformers name the KV-cache argument ``cache``; older ones ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _last_logits_only(model) -> dict:
    """Ask the prefill for the last position's logits alone where the model can (a 150k-token vocabulary
    times every prompt position would be the largest tensor of the call)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


@torch.no_grad()
def decode(model, tok, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, n: int, temps: list[float],
           top_p: float = 1.0, max_new_tokens: int = 96, stops: tuple[str, ...] = (),
           generator: torch.Generator | None = None, at_answer: bool = False, eos: set[int] | None = None,
           prefix: "Prefix | None" = None, reasons: list[str] | None = None) -> list[list[int]]:
    """New token ids for each (prompt, sample) row, prompt-major: row i*n + j is prompt i's sample j.

    ``temps`` gives each of a prompt's n samples its temperature. Left-padded inputs. A row ends at any
    id of ``eos`` (default: the tokenizer's), at a stop string, or (``at_answer``) once its first
    final-answer statement is complete. ``prefix``: the prompts' shared first tokens, already run
    (``input_ids`` then hold each prompt's remaining tokens). ``reasons``: receives each row's ending,
    eos | stop | length."""
    device = input_ids.device
    from transformers import DynamicCache

    cache, offset = (prefix.cache_for(input_ids.shape[0]), prefix.length) if prefix else (DynamicCache(), 0)
    kv = {cache_kwarg(model): cache, "use_cache": True}
    positions = offset + (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    if prefix:  # the shared prefix's positions come first, all attended
        attention_mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], offset), attention_mask], 1)
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
    ending = ["length"] * rows
    ends = tuple(stops) + (ANSWER_TRIGGERS if at_answer else ())
    triggers = stop_triggers(tok, ends) if ends else set()
    eos = eos if eos is not None else {tok.eos_token_id}
    for step in range(max_new_tokens):
        nxt = sample_next(logits, row_temps, top_p, generator, hot_rows)
        finished = []
        for r, t in zip(active, nxt.tolist()):  # the step's one wait on the device
            if t in eos:
                finished.append(True)
                ending[r] = "eos"
                continue
            out[r].append(t)
            finished.append(t in triggers and _ended(tok, out[r], stops, at_answer))
            if finished[-1]:
                ending[r] = "stop"
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
    if reasons is not None:
        reasons += ending
    return out


class Prefix:
    """The first tokens every prompt of a call shares (the few-shot header and exemplars), run once: its
    KV cache is copied into each batch, so a batch's prefill covers only what differs between prompts."""

    @torch.no_grad()
    def __init__(self, model, ids: list[int]):
        self.length = len(ids)
        from transformers import DynamicCache

        self.cache = DynamicCache()
        x = torch.tensor([ids], device=model.device)
        model(input_ids=x, attention_mask=torch.ones_like(x), **{cache_kwarg(model): self.cache, "use_cache": True},
              **_last_logits_only(model))

    def cache_for(self, rows: int) -> DynamicCache:
        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache


def shared_prefix(encoded: list[list[int]], least: int = 32) -> int:
    """Length of the token prefix all ``encoded`` prompts share, leaving each at least one own token;
    0 when it is shorter than ``least`` (too little to be worth a separate pass)."""
    if len(encoded) < 2:
        return 0
    first, n = encoded[0], min(map(len, encoded)) - 1
    for ids in encoded[1:]:
        n = next((i for i in range(n) if ids[i] != first[i]), n)
    return n if n >= least else 0
