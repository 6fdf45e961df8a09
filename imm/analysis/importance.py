"""Layer importance (paper Eq. 3): I_n = Σ_{W in layer n} |∂L(D)/∂W · W|.

The loss gradient over the dataset is accumulated batch by batch (the mean of the batch losses),
then reduced parameter by parameter into one score per transformer layer. Reasoning data
(prompt + worked solution, loss on the solution only) and plain text (loss on every token) are
two encodings of the same computation. Run it on a checkpoint with
``python -m imm.analysis importance --model DIR --data reasoning --out DIR`` (see ``imm.analysis.cli``).
"""

from __future__ import annotations

import random

import torch

from imm.merge.rules import layer_index
from imm.sft.torch_loop import batches, collate, encode

Example = tuple[list[int], list[int]]  # token ids, labels (-100 where there is no loss)


def reasoning_examples(tok, rows: list[dict], prompt_fn) -> list[Example]:
    """Rows {question, response}: the loss covers the response tokens only, as in SFT."""
    return [encode(tok, prompt_fn(r["question"]), r["response"]) for r in rows]


def plain_examples(tok, texts: list[str]) -> list[Example]:
    """Plain language-model data: the loss covers every token after the first."""
    out = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append((ids, list(ids)))
    return out


def importance_per_layer(model, examples: list[Example], pad_id: int, batch_size: int = 32) -> dict[int, float]:
    """Eq. 3 per transformer layer on encoded examples; parameter gradients are left cleared."""
    if not examples:
        raise ValueError("layer importance needs at least one example")
    model.zero_grad(set_to_none=True)
    chunks = batches(examples, batch_size, random.Random(0))
    for idx in chunks:
        ids, labels, mask = (t.to(model.device) for t in collate(examples, idx, pad_id))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        (loss / len(chunks)).backward()  # the gradient of the dataset loss, one batch at a time
    scores: dict[int, float] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            layer = layer_index(name)
            if layer is None or param.grad is None:
                continue
            scores[layer] = scores.get(layer, 0.0) + float((param.grad * param).abs().sum())
    model.zero_grad(set_to_none=True)
    return dict(sorted(scores.items()))


def layer_importance(model, tok, rows: list[dict], prompt_fn, batch_size: int = 32) -> dict[int, float]:
    """Importance of each transformer layer on rows {question, response} (response-only loss)."""
    return importance_per_layer(model, reasoning_examples(tok, rows, prompt_fn), tok.pad_token_id, batch_size)
