"""SFT interventions the paper compares IMM with (its Table 5), as alternatives to merging.

- ``grad_decay``  (γ, paper 0.9): the updates of epoch e are scaled by γ^e, so later passes over the
  same self-generated samples move the weights less (applied to the step size: with Adam, scaling
  the gradient itself would cancel out).
- ``grad_clip``   (max norm, paper 2.0): the gradient's global norm is clipped to this value.
- ``weight_mask`` (top-p, paper 0.3): after SFT only the top-p share of each tensor's update (by
  magnitude) is kept; the rest of the weights go back to their values before SFT.

Selected with ``sft.intervention=<name>`` and ``sft.intervention_value`` (0 = the paper's value).
"""

from __future__ import annotations

import torch

PAPER_VALUES = {"none": 0.0, "grad_decay": 0.9, "grad_clip": 2.0, "weight_mask": 0.3}


def value(name: str, given: float) -> float:
    return given or PAPER_VALUES[name]


def decay_step_size(opt, scheduled: list[float], name: str, val: float, epoch: int) -> None:
    """Before an optimizer step of epoch ``epoch`` (0-based): its learning rate is the schedule's
    (``scheduled``, one per parameter group) times γ^epoch (grad_decay only), so the factor of epoch e
    is in place from epoch e's first step on."""
    if name == "grad_decay":
        for group, lr in zip(opt.param_groups, scheduled, strict=True):
            group["lr"] = lr * val ** epoch


def clip_norm(name: str, val: float, default: float) -> float:
    return val if name == "grad_clip" else default


@torch.no_grad()
def keep_top_updates(model, before: dict[str, torch.Tensor], top_p: float) -> float:
    """Weight masking: keep each tensor's top-p share of |θ_sft − θ_before| entries; returns the kept share."""
    kept = total = 0
    for name, param in model.named_parameters():
        delta = param.detach().float() - before[name].float()
        k = max(1, int(round(top_p * delta.numel())))
        threshold = delta.abs().flatten().kthvalue(delta.numel() - k + 1).values
        mask = delta.abs() >= threshold
        param.copy_(torch.where(mask, param.detach(), before[name].to(param.dtype)))
        kept += int(mask.sum())
        total += mask.numel()
    return kept / total
