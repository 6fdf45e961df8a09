"""Layer importance (paper Eq. 3): I_n = Σ_{W in layer n} |∂L(D)/∂W · W|.

The loss gradient over the dataset is accumulated batch by batch (the mean of the batch losses),
then reduced parameter by parameter into one score per transformer layer.
"""

from __future__ import annotations

import torch

from imm.merge import layer_index
from imm.sft import batches, collate, encode


def layer_importance(model, tok, rows: list[dict], prompt_fn, batch_size: int = 32) -> dict[int, float]:
    """Importance of each transformer layer on rows {question, response} (response-only loss)."""
    import random

    examples = [encode(tok, prompt_fn(r["question"]), r["response"]) for r in rows]
    if not examples:
        raise ValueError("layer importance needs at least one example")
    model.zero_grad(set_to_none=True)
    chunks = batches(examples, batch_size, random.Random(0))
    for idx in chunks:
        ids, labels, mask = collate(examples, idx, tok.pad_token_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        (loss / len(chunks)).backward()
    scores: dict[int, float] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            layer = layer_index(name)
            if layer is None or param.grad is None:
                continue
            scores[layer] = scores.get(layer, 0.0) + float((param.grad * param).abs().sum())
    model.zero_grad(set_to_none=True)
    return dict(sorted(scores.items()))
