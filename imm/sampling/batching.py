"""The schedule of a continuous-batching call: which prompt takes which slot, and when a row ends.

``decode_slots`` is ``imm.sampling.decode.decode``'s contract (new ids per (prompt, sample) row,
prompt-major; each row's ending) over ``imm.sampling.slots``: prompts wait in a queue; whenever enough
slots are free, the next prompts are prefilled together, each prompt's n samples copying its prefill,
and every step decodes one token for all rows. A row that emits EOS, completes a stop string or (with
``at_answer``) its first final-answer statement, or reaches ``max_new_tokens``, frees its slot.
"""

from __future__ import annotations

import weakref

import torch

from imm.sampling.decode import ANSWER_TRIGGERS, _ended, nucleus_logits, stop_triggers
from imm.sampling.slots import Packed, Slots

ADMIT_SHARE = 8  # prompts are admitted once 1/ADMIT_SHARE of the slots are free (a prefill per few rows is slow)
PREFILL_TOKENS = 4096  # most prompt tokens one prefill runs at once (its attention scores grow with the square)
TOP_K = 64  # a sampled row's candidates before the whole vocabulary is read (draw)
TAIL_MASS = 1e-7  # the most probability the tokens outside them may hold (float32's CDF resolves no finer)
SHRINK_BELOW = 2  # with no prompt waiting, the slots shrink to the live rows once fewer than 1/SHRINK_BELOW live

_PACKED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def weights_state(model) -> tuple:
    """What says a model's weights are the ones packed: each parameter's storage and version counter. An
    in-place update (float32 SFT's optimizer) bumps the counter; a swap through ``.data`` (bf16 SFT's
    master weights, imm/sft/precision.py) bumps none, but moves the storage."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


def packed(model, dtype: torch.dtype) -> Packed:
    """``model``'s packed weights in ``dtype``, kept while the model lives and its weights are unchanged
    (``weights_state``: SFT in place, in float32 or through bf16 master weights, repacks)."""
    state = (dtype, weights_state(model))
    held = _PACKED.get(model)
    if held is None or held[0] != state:
        held = (state, Packed(model, dtype))
        _PACKED[model] = held
    return held[1]


def decode_slots(model, tok, prompts: list[list[int]], prefix: list[int], *, n: int, temps: list[float],
                 top_p: float, max_new_tokens: int, stops: tuple[str, ...], at_answer: bool, eos: set[int],
                 generator: torch.Generator, rows: int, dtype: torch.dtype,
                 reasons: list[str] | None = None, progress=None) -> list[list[int]]:
    """New ids for each of ``prompts``' n samples (row i*n + j: prompt i's sample j at temps[j]); each
    prompt's tokens follow the shared ``prefix``. ``rows``: slots decoded at once (a multiple of n).
    ``progress``: called with the number of rows that ended at each step."""
    rows = max(n, rows // n * n)
    p = packed(model, dtype)
    width = max(map(len, prompts)) + max_new_tokens
    slots = Slots(p, prefix, rows, width)
    dev = p.device
    ends = tuple(stops) + (ANSWER_TRIGGERS if at_answer else ())
    triggers = stop_triggers(tok, ends) if ends else set()
    total = len(prompts) * n
    out: list[list[int]] = [[] for _ in range(total)]
    ending = ["length"] * total
    owner = [-1] * rows  # the output row each slot decodes, -1 = free
    nxt = torch.zeros(rows, dtype=torch.long, device=dev)  # each slot's last drawn token, fed at the next step
    slot_temps = torch.zeros(rows, dtype=torch.float32, device=dev)
    queue = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # longest first: prefill groups pad little
    queue.reverse()  # pop() takes from the end

    def take(slot_ids: list[int], logits: torch.Tensor) -> None:
        """Draw each listed slot's next token and end the rows that are done."""
        temps_here = slot_temps[slot_ids]
        hot = sum(temps_of[owner[s]] > 0 for s in slot_ids)
        drawn = draw(logits, temps_here, top_p, generator, hot)
        nxt[slot_ids] = drawn
        ended = 0
        for s, t in zip(slot_ids, drawn.tolist()):
            r = owner[s]
            if t in eos:
                ending[r], owner[s] = "eos", -1
                ended += 1
                continue
            out[r].append(t)
            if t in triggers and _ended(tok, out[r], stops, at_answer):
                ending[r], owner[s] = "stop", -1
            elif len(out[r]) >= max_new_tokens:
                owner[s] = -1
            ended += owner[s] < 0
        if progress is not None and ended:
            progress(ended)

    temps_of = [temps[r % n] for r in range(total)]
    while queue or any(o >= 0 for o in owner):
        free = [s for s in range(slots.rows) if owner[s] < 0]
        live = slots.rows - len(free)
        if queue and len(free) >= n and (len(free) >= max(n, slots.rows // ADMIT_SHARE) or not live):
            group = _next_group(queue, prompts, len(free) // n)
            taken = free[:len(group) * n]
            firsts = taken[::n]  # each prompt's first sample's slot; the other n - 1 copy it
            logits = slots.prefill(torch.tensor(firsts, device=dev), [prompts[i] for i in group])
            for g, i in enumerate(group):
                for j in range(n):
                    owner[taken[g * n + j]] = i * n + j
            if n > 1:
                rest = [s for s in taken if s not in firsts]
                src = [taken[taken.index(s) // n * n] for s in rest]
                slots.copy_slot(torch.tensor(src, device=dev), torch.tensor(rest, device=dev))
                logits = logits.repeat_interleave(n, 0)
            slot_temps[taken] = torch.tensor([temps_of[owner[s]] for s in taken], device=dev)
            take(taken, logits)
            continue
        if not queue and 0 < live < slots.rows // SHRINK_BELOW and slots.rows > n:
            alive = [s for s in range(slots.rows) if owner[s] >= 0]
            idx = torch.tensor(alive, device=dev)
            slots.keep_only(idx)
            nxt, slot_temps = nxt[idx], slot_temps[idx]
            owner = [owner[s] for s in alive]
            continue
        mask = torch.tensor([o >= 0 for o in owner], device=dev)
        logits = slots.step(nxt, mask)
        alive = [s for s in range(slots.rows) if owner[s] >= 0]
        take(alive, logits[alive] if len(alive) < slots.rows else logits)
    if reasons is not None:
        reasons += ending
    return out


def draw(logits: torch.Tensor, temps: torch.Tensor, top_p: float, generator: torch.Generator, hot: int) -> torch.Tensor:
    """One token per row: the argmax where the row's temperature is 0, else a draw from the softmax at
    that temperature (within the top-p nucleus) by its inverse CDF, one uniform per row (torch.multinomial
    takes ~130 ms for 128 rows of a 49k vocabulary on 2 cores; this a few ms). ``hot``: rows above 0."""
    best = logits.max(-1).indices if hot < len(temps) else None  # max's indices: the first maximum, as argmax
    if hot == 0:
        return best
    rows = torch.nonzero(temps > 0).squeeze(-1) if best is not None else None
    sub, t = (logits, temps) if rows is None else (logits[rows], temps[rows])
    u = torch.rand(len(t), generator=generator, device=logits.device)
    if top_p < 1.0:
        picked = _inverse_cdf(nucleus_logits(sub, t, top_p), u)
    else:
        picked = _from_top(sub, t, u)
    if best is None:
        return picked
    best[rows] = picked
    return best


def _inverse_cdf(scaled: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The token where each row's softmax CDF (of its already scaled logits) first exceeds u (in [0, 1))."""
    cdf = scaled.softmax(-1).cumsum_(-1)
    picked = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(-1)
    return picked.clamp_(max=scaled.shape[-1] - 1)


def _from_top(logits: torch.Tensor, temps: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``_inverse_cdf`` of logits / temps, read from each row's TOP_K largest logits where the rest of the
    vocabulary holds less than TAIL_MASS of the probability (at the temperatures sampling uses almost
    every row: a softmax and a CDF over 49k tokens cost more than the model's matmuls at 128 rows);
    the other rows take the whole vocabulary. The top tokens come in the vocabulary's order, as
    in the full CDF: a draw lands on the token the full CDF gives except with probability below TAIL_MASS."""
    top, idx = logits.topk(min(TOP_K, logits.shape[-1]), -1, sorted=True)
    scaled = top / temps[:, None]
    # every token outside the top has at most the K-th's probability: a bound on the tail's share
    tail = (logits.shape[-1] - top.shape[-1]) * (scaled[:, -1:] - scaled[:, :1]).exp().squeeze(-1)
    order = idx.argsort(-1)
    sub_idx = idx.gather(-1, order)  # the top tokens in vocabulary order
    within = _inverse_cdf(scaled.gather(-1, order), u)
    picked = sub_idx.gather(-1, within[:, None]).squeeze(-1)
    wide = torch.nonzero(tail > TAIL_MASS).squeeze(-1)
    if len(wide):
        picked[wide] = _inverse_cdf(logits[wide] / temps[wide, None], u[wide])
    return picked


def _next_group(queue: list[int], prompts: list[list[int]], room: int) -> list[int]:
    """The next prompts to prefill together (the queue pops the longest first): at most ``room`` of them,
    and no more padded tokens than PREFILL_TOKENS (the first one always goes)."""
    group = [queue.pop()]
    longest = len(prompts[group[0]])
    while queue and len(group) < room and (len(group) + 1) * longest <= PREFILL_TOKENS:
        group.append(queue.pop())
    return group
