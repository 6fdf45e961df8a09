"""How the SFT loop computes: the loss on the response tokens only, and bf16 with fp32 master weights.

- ``response_loss``: the decoder's hidden states go through the output head only at the positions
  that have a label (the response), so the prompt's tokens cost no vocabulary-sized matmul, softmax or
  logits memory. Same value as ``model(labels=...).loss`` (the mean token cross-entropy over labelled
  positions, computed in float32).
- ``MasterWeights``: the model's own parameters are cast to bfloat16 once, the forward and backward
  run on them with no per-op casting (autocast would cast every weight at every forward and every
  gradient back), and the optimizer holds float32 copies (the master weights) that it updates; the
  bf16 weights are refreshed from them after each step, rounded stochastically (``StochasticRounding``).
  At SFT's learning rates most updates are below half a bf16 ulp of the weight: rounded to nearest,
  the forward would not see them (autocast has the same blind spot: it rounds the float32 weights at
  every matmul). On SmolLM2-135M at lr 5e-5 that kept the loss near its start while float32 training
  halved it (bench/RESULTS.md); rounded stochastically, the bf16 weights equal the masters in
  expectation and the loss follows float32's. ``finish`` writes the master weights back into the model
  in float32.
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


class StochasticRounding:
    """float32 tensors rounded to bfloat16 stochastically: a uniform 16-bit integer added to the bits
    bf16 drops, then those bits cut, so a value between two bf16 neighbours goes to the upper one with
    probability proportional to its distance from the lower one (unbiased; exact where bf16 holds the
    value). The integers come from one pool drawn once, read at a fresh random offset for every tensor
    and call: each element's noise is uniform, which is all the expectation needs, and a call costs one
    add and one mask instead of a draw of every element. For finite values (master weights are: a
    non-finite loss stops SFT before its step)."""

    SPREAD = 1 << 20  # offsets a tensor's window can start at

    def __init__(self, largest: int, device, seed: int = 0):
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.pool = torch.randint(0, 1 << 16, (largest + self.SPREAD,), dtype=torch.int32, device=device,
                                  generator=self.generator)

    def __call__(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """``out`` (bf16, x's shape) := x stochastically rounded."""
        off = int(torch.randint(0, self.SPREAD + 1, (1,), generator=self.generator))
        bits = x.view(torch.int32) + self.pool[off:off + x.numel()].view(x.shape)
        out.copy_(bits.bitwise_and_(-65536).view(torch.float32))  # 0xFFFF0000: the conversion is then exact


class MasterWeights:
    """bf16 compute weights in the model, float32 master weights in the optimizer (see the module)."""

    def __init__(self, model, dtype: torch.dtype = torch.bfloat16, stochastic: bool = True, seed: int = 0):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.rounding = (StochasticRounding(max(p.numel() for p in self.params), self.params[0].device, seed)
                         if stochastic and dtype == torch.bfloat16 else None)
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
        """The compute weights from the just-updated masters, stochastically rounded to bf16 when
        built with ``stochastic`` (the default): a master weight x between two bf16 neighbours goes to the upper one
        with probability proportional to its distance from the lower one, so the bf16 weight equals x in
        expectation and an update smaller than half an ulp still moves the forward on average."""
        if self.rounding is None:
            torch._foreach_copy_(self.params, self.master)
            return
        for p, m in zip(self.params, self.master):
            self.rounding(m.detach(), p.data)

    @torch.no_grad()
    def finish(self):
        """The model back in float32 holding the master weights (exactly, not their bf16 rounding)."""
        for p, m in zip(self.params, self.master):
            p.data = m.detach()
        return self.model
