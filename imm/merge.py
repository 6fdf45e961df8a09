"""Model merging as pure functions over tensors (paper Eq. 5-7).

IMM:  δᵗ = θ_sftᵗ − θ_prev,  δ̂ = DARE(δᵗ, p),  θ_mᵗ = α·θ + (1−α)·(θ_prev + δ̂)
IIMM: as IMM, with each layer n's δ̂ scaled by N·I_n / Σᵢ Iᵢ (I_n: layer importance, Eq. 3).

Every method is a function in ``MERGE_METHODS``; ``merge_state_dicts`` applies one to whole models.
DARE masks are seeded per (seed, iteration, tensor name), so a merge is bit-reproducible.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable

import torch

LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass
class MergeConfig:
    name: str = "dare_linear"  # a key of MERGE_METHODS
    alpha: float = 0.5  # weight of the base model θ, in [0, 1]; paper: 0.5
    p: float = 0.1  # DARE drop rate, in [0, 1); 0 keeps the whole update
    seed: int = 0  # DARE mask seed (combined with iteration and tensor name)

    def __post_init__(self) -> None:
        if self.name not in MERGE_METHODS:
            raise ValueError(f"merge.name={self.name!r} is not one of {sorted(MERGE_METHODS)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"merge.alpha={self.alpha} must lie in [0, 1]")
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"merge.p={self.p} must lie in [0, 1)")


def tensor_seed(seed: int, iteration: int, name: str) -> int:
    """A stable 63-bit seed for one tensor's DARE mask (Python's hash() is salted per process)."""
    digest = hashlib.sha256(f"{seed}/{iteration}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def dare(delta: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop each entry of ``delta`` with probability p and rescale the kept ones by 1/(1−p)."""
    if p == 0.0:
        return delta.clone()
    keep = torch.rand(delta.shape, generator=generator, device=delta.device) >= p
    return torch.where(keep, delta / (1.0 - p), torch.zeros_like(delta))


def dare_linear(base: torch.Tensor, prev: torch.Tensor, sft: torch.Tensor, *, alpha: float, p: float,
                generator: torch.Generator | None = None, scale: float = 1.0) -> torch.Tensor:
    """Eq. 6 (Eq. 7 with ``scale`` = N·I_n/ΣI): α·θ + (1−α)·(θ_prev + scale·DARE(θ_sft − θ_prev))."""
    delta = sft.float() - prev.float()
    update = scale * dare(delta, p, generator)
    merged = alpha * base.float() + (1.0 - alpha) * (prev.float() + update)
    return merged.to(sft.dtype)


MergeFn = Callable[..., torch.Tensor]
MERGE_METHODS: dict[str, MergeFn] = {
    "dare_linear": dare_linear,
}


def get(name: str) -> MergeFn:
    if name not in MERGE_METHODS:
        raise KeyError(f"unknown merge method {name!r}; valid: {sorted(MERGE_METHODS)}")
    return MERGE_METHODS[name]


def layer_index(name: str) -> int | None:
    """The transformer layer a parameter belongs to ("model.layers.3.mlp..." → 3), else None."""
    m = LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def importance_scales(importance: dict[int, float]) -> dict[int, float]:
    """Per-layer update scales N·I_n / Σᵢ Iᵢ of IIMM (Eq. 7); they average to 1."""
    total = sum(importance.values())
    if total <= 0:
        raise ValueError("layer importances sum to zero; cannot normalise")
    n = len(importance)
    return {layer: n * value / total for layer, value in importance.items()}


def check_compatible(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    """Refuse to merge checkpoints whose tensor names or shapes differ (architecture, vocabulary)."""
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys())[:3], sorted(b.keys() - a.keys())[:3]
        raise ValueError(f"cannot merge {what}: different architectures "
                         f"(tensors only in one: {only_a} / {only_b})")
    for name, t in a.items():
        if t.shape != b[name].shape:
            raise ValueError(f"cannot merge {what}: {name} has shape {tuple(t.shape)} vs "
                             f"{tuple(b[name].shape)} (different architecture or vocabulary)")


@dataclass
class MergeStats:
    update_norm: float  # ‖θ_m − θ_prev‖ over all tensors
    delta_norm: float  # ‖θ_sft − θ_prev‖ before DARE
    density: float  # share of nonzero entries in the DARE'd update (nonzero deltas only)


def merge_state_dicts(base: dict[str, torch.Tensor], prev: dict[str, torch.Tensor],
                      sft: dict[str, torch.Tensor], cfg: MergeConfig, iteration: int,
                      layer_scales: dict[int, float] | None = None
                      ) -> tuple[dict[str, torch.Tensor], MergeStats]:
    """Merge whole models tensor by tensor; returns the merged state dict and its update stats."""
    check_compatible(base, sft, "base and SFT model")
    check_compatible(prev, sft, "previous and SFT model")
    fn = get(cfg.name)
    merged: dict[str, torch.Tensor] = {}
    upd_sq = delta_sq = 0.0
    kept = nonzero = 0
    for name, t_sft in sft.items():
        gen = torch.Generator().manual_seed(tensor_seed(cfg.seed, iteration, name))
        layer = layer_index(name)
        scale = layer_scales.get(layer, 1.0) if layer_scales and layer is not None else 1.0
        out = fn(base[name], prev[name], t_sft, alpha=cfg.alpha, p=cfg.p, generator=gen, scale=scale)
        merged[name] = out
        delta = t_sft.float() - prev[name].float()
        delta_sq += float(delta.pow(2).sum())
        upd_sq += float((out.float() - prev[name].float()).pow(2).sum())
        # density: how much of the nonzero update survives DARE (same mask, regenerated)
        gen = torch.Generator().manual_seed(tensor_seed(cfg.seed, iteration, name))
        dropped = dare(delta, cfg.p, gen)
        nonzero += int((delta != 0).sum())
        kept += int((dropped != 0).sum())
    return merged, MergeStats(upd_sq ** 0.5, delta_sq ** 0.5, kept / nonzero if nonzero else 0.0)
