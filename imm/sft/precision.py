"""How the SFT loop computes: the loss on the response tokens only, and bf16 with fp32 master weights.

- ``response_loss``: the decoder's hidden states go through the output head only at the positions
  that have a label (the response), so the prompt's tokens cost no vocabulary-sized matmul, softmax or
  logits memory. Same value as ``model(labels=...).loss`` (the mean token cross-entropy over labelled
  positions, computed in float32).
- ``MasterWeights``: the model's own parameters are cast to bfloat16 once, the forward and backward
  run on them with no per-op casting (autocast would cast every weight at every forward and every
  gradient back), and the optimizer holds float32 copies (the master weights) that it updates; the
  bf16 weights are refreshed from them after each step. At lr 2e-5 an update is below half a bf16 ulp
  of most weights: it accumulates in the master copy instead of rounding away. This is DeepSpeed's
  bf16 mode, on one process. ``finish`` writes the master weights back into the model in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def head_apart(model) -> bool:
    """Whether the output head can be applied apart from the decoder (no logit soft-capping or scaling)."""
    c = model.config
    return (model.get_output_embeddings() is not None and hasattr(model, "model")
            and not getattr(c, "final_logit_softcapping", None) and getattr(c, "logit_scale", 1.0) in (None, 1.0))


def response_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions, the head applied to those alone."""
    if not head_apart(model):
        return model(input_ids=ids, attention_mask=mask, labels=labels).loss
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = model.get_output_embeddings()(hidden[keep])
    return F.cross_entropy(logits.float(), target[keep])


class MasterWeights:
    """bf16 compute weights in the model, float32 master weights in the optimizer (see the module)."""

    def __init__(self, model, dtype: torch.dtype = torch.bfloat16):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.master = [p.detach().to(torch.float32).clone().requires_grad_() for p in self.params]
        self.model = model
        for p in self.params:  # parameters only: buffers (RoPE's inverse frequencies) keep their precision
            p.data = p.data.to(dtype)

    def accumulate(self) -> None:
        """Add this micro-batch's bf16 gradients into the float32 masters' (accumulation in fp32)."""
        for p, m in zip(self.params, self.master):
            if p.grad is None:
                continue
            g = p.grad.to(torch.float32)
            m.grad = g if m.grad is None else m.grad.add_(g)
            p.grad = None

    @torch.no_grad()
    def refresh(self) -> None:
        """The compute weights from the just-updated masters."""
        torch._foreach_copy_(self.params, self.master)

    @torch.no_grad()
    def finish(self):
        """The model back in float32 holding the master weights (exactly, not their bf16 rounding)."""
        for p, m in zip(self.params, self.master):
            p.data = m.detach()
        return self.model
