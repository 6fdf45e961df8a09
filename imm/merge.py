"""Model merging as pure functions over tensors (paper Eq. 5-7), and the whole-model merge in memory.

IMM:  δᵗ = θ_sftᵗ − θ_prev,  δ̂ = DARE(δᵗ, p),  θ_mᵗ = α·θ + (1−α)·(θ_prev + δ̂)
IIMM: as IMM, with each layer n's δ̂ scaled by N·I_n / Σᵢ Iᵢ (I_n: layer importance, Eq. 3).

Every method in ``MERGE_METHODS`` shares one call signature ``(base, prev, sft, *, alpha, p,
generator, scale)`` and one combination, α·θ + (1−α)·(θ_prev + scale·U(δ)); they differ in the
update rule U (``UPDATE_RULES``):

- ``dare_linear``      U = DARE: drop each entry with probability p, rescale the kept by 1/(1−p).
- ``task_arithmetic``  U = identity (scale = λ·layer scale; α=0, λ=1 gives θ_sft back).
- ``ties``             U = TIES-merging of the single task vector δ = θ_sft − θ_prev, taken relative
                       to θ_prev: keep the top (1−p) share by magnitude, elect the sign, disjoint mean.
                       With one task vector the elected sign is δ's own, so U is the trimmed δ;
                       ``ties_merge`` is the general rule for several task vectors.
- ``layer_adaptive``   U = DARE with a per-layer α: a linear ramp, a list, or derived from Eq. 3
                       importances (the dynamic, layer-adaptive merging the paper leaves to future work).

DARE masks are seeded per (seed, iteration, tensor name), so a merge is bit-reproducible. The mask is
drawn row block by row block in order, which gives the same bits as one draw over the whole tensor,
so the streaming engine (``imm.merge_engine``) and ``merge_state_dicts`` agree exactly.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, List

import torch

LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
ALPHA_SCHEDULES = ("ramp", "list", "importance")
EXCLUDE_SOURCES = ("sft", "base", "prev")
# entries merged at once: small blocks stay in cache and reuse freed heap memory (blocks of MiBs are
# mapped and page-faulted afresh each time, several times slower)
CHUNK_ELEMS = 1 << 16


@dataclass
class MergeConfig:
    name: str = "dare_linear"  # a key of MERGE_METHODS
    alpha: float = 0.5  # weight of the base model θ, in [0, 1]; paper: 0.5 (layer_adaptive: α at layer 0)
    p: float = 0.1  # drop share of the update, in [0, 1): DARE's random drop rate, TIES' trimmed share
    seed: int = 0  # DARE mask seed (combined with iteration and tensor name)
    lam: float = 1.0  # λ >= 0, weight of the update (task arithmetic's scaling); 1 = the whole update
    alpha_schedule: str = "ramp"  # layer_adaptive: ramp | list | importance (1−α_n = (1−α)·N·I_n/ΣI)
    alpha_last: float = 0.5  # layer_adaptive ramp: α at the last layer, in [0, 1]
    alpha_by_layer: List[float] = field(default_factory=list)  # layer_adaptive list: α of each layer
    exclude: List[str] = field(default_factory=list)  # regexes (re.search) of tensor names not merged
    exclude_from: str = "sft"  # model an excluded tensor is copied from: sft | base | prev

    def __post_init__(self) -> None:
        if self.name not in MERGE_METHODS:
            raise ValueError(f"merge.name={self.name!r} is not one of {sorted(MERGE_METHODS)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"merge.alpha={self.alpha} must lie in [0, 1]")
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"merge.p={self.p} must lie in [0, 1)")
        if not (math.isfinite(self.lam) and self.lam >= 0.0):
            raise ValueError(f"merge.lam={self.lam} must be a finite number >= 0")
        if self.alpha_schedule not in ALPHA_SCHEDULES:
            raise ValueError(f"merge.alpha_schedule={self.alpha_schedule!r} is not one of {ALPHA_SCHEDULES}")
        if not 0.0 <= self.alpha_last <= 1.0:
            raise ValueError(f"merge.alpha_last={self.alpha_last} must lie in [0, 1]")
        if any(not 0.0 <= a <= 1.0 for a in self.alpha_by_layer):
            raise ValueError(f"merge.alpha_by_layer={list(self.alpha_by_layer)}: every value must lie in [0, 1]")
        if self.name == "layer_adaptive" and self.alpha_schedule == "list" and not self.alpha_by_layer:
            raise ValueError("merge.alpha_by_layer is empty but merge.alpha_schedule=list needs one α per layer")
        if self.exclude_from not in EXCLUDE_SOURCES:
            raise ValueError(f"merge.exclude_from={self.exclude_from!r} is not one of {EXCLUDE_SOURCES}")
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"merge.exclude: {pattern!r} is not a valid regex ({err})") from None


def tensor_seed(seed: int, iteration: int, name: str) -> int:
    """A stable 63-bit seed for one tensor's DARE mask (Python's hash() is salted per process)."""
    digest = hashlib.sha256(f"{seed}/{iteration}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


# ---- update rules U(δ): what of δ = θ_sft − θ_prev survives --------------------------------------

def dare_(delta: torch.Tensor, p: float, generator: torch.Generator | None = None,
          scratch: torch.Tensor | None = None) -> torch.Tensor:
    """DARE in place on ``delta``; ``scratch`` (δ's shape, float32) receives the uniform draws."""
    if p == 0.0:
        return delta
    draws = torch.rand(delta.shape, generator=generator, out=scratch) if scratch is not None \
        else torch.rand(delta.shape, generator=generator, device=delta.device)
    # δ times keep (1.0 where the draw is >= p, else 0.0): no masked copies
    return delta.mul_(draws.ge_(p)).mul_(1.0 / (1.0 - p))


def dare(delta: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop each entry of ``delta`` with probability p and rescale the kept ones by 1/(1−p)."""
    return dare_(delta.clone(), p, generator)


def keep_all(delta: torch.Tensor, p: float, generator: torch.Generator | None = None,
             scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Task arithmetic's update: δ itself (p is not used)."""
    return delta


def trim_top(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the round(density·numel) entries of largest magnitude, zero the rest (TIES 'trim')."""
    k = int(round(density * delta.numel()))
    flat = delta.reshape(-1)
    out = torch.zeros_like(flat)
    if k > 0:
        idx = flat.abs().topk(k, sorted=False).indices
        out[idx] = flat[idx]
    return out.view_as(delta)


def ties_merge(deltas: torch.Tensor, density: float) -> torch.Tensor:
    """TIES over task vectors stacked on dim 0: trim each, elect the sign of the summed mass,
    average only the entries that agree with it (disjoint mean)."""
    trimmed = torch.stack([trim_top(d, density) for d in deltas])
    elected = torch.sign(trimmed.sum(dim=0))
    agree = (torch.sign(trimmed) == elected) & (trimmed != 0)
    total = torch.where(agree, trimmed, torch.zeros_like(trimmed)).sum(dim=0)
    return total / agree.sum(dim=0).clamp(min=1)


def ties_update(delta: torch.Tensor, p: float, generator: torch.Generator | None = None,
                scratch: torch.Tensor | None = None) -> torch.Tensor:
    """TIES with δ as the single task vector relative to θ_prev; p is the trimmed share."""
    return ties_merge(delta.unsqueeze(0), 1.0 - p)


# (δ, p, generator, scratch) -> U(δ); a rule may overwrite δ and use the float32 scratch buffer
UpdateFn = Callable[..., torch.Tensor]
UPDATE_RULES: dict[str, UpdateFn] = {
    "dare_linear": dare_, "task_arithmetic": keep_all, "ties": ties_update, "layer_adaptive": dare_,
}
# Rules that act entry by entry may run on row blocks; TIES ranks magnitudes over the whole tensor.
ELEMENTWISE = {"dare_linear", "task_arithmetic", "layer_adaptive"}


class Workspace:
    """Two float32 buffers reused by every block of a merge: the engine's blocks then allocate
    (and page-fault) almost nothing, which made the merge several times faster."""

    def __init__(self) -> None:
        self.a = self.b = torch.empty(0)

    def take(self, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
        n = math.prod(shape)
        if self.a.numel() < n:
            self.a, self.b = torch.empty(n), torch.empty(n)
        return self.a[:n].view(shape), self.b[:n].view(shape)


def merge_tensor(method: str, base: torch.Tensor, prev: torch.Tensor, sft: torch.Tensor, *, alpha: float,
                 p: float, generator: torch.Generator | None = None, scale: float = 1.0,
                 work: Workspace | None = None) -> tuple[torch.Tensor, TensorStats]:
    """α·θ + (1−α)·(θ_prev + scale·U(θ_sft − θ_prev)) in float32, returned in θ_sft's dtype,
    with its stats; ``work`` lends reusable buffers (the engine passes one per tensor)."""
    delta, scratch = (work or Workspace()).take(sft.shape)
    # bf16 → float32 is exact, so copy_ then mixed-dtype in-place ops give the float32 result
    delta.copy_(sft).sub_(prev)
    flat = delta.view(-1)
    delta_sq, nonzero = float(torch.dot(flat, flat)), int(torch.count_nonzero(flat))
    update = UPDATE_RULES[method](delta, p, generator, scratch)
    kept = int(torch.count_nonzero(update))
    update.mul_(scale).add_(prev).mul_(1.0 - alpha).add_(base, alpha=alpha)
    merged = update.to(sft.dtype, copy=True)  # copy: the buffers are reused by the next block
    moved = update.copy_(merged).sub_(prev).view(-1)
    return merged, TensorStats(delta_sq=delta_sq, update_sq=float(torch.dot(moved, moved)),
                               nonzero=nonzero, kept=kept)


def dare_linear(base, prev, sft, *, alpha, p, generator=None, scale=1.0) -> torch.Tensor:
    """IMM, Eq. 6 (Eq. 7 with ``scale`` = N·I_n/ΣI):
    α·θ + (1−α)·(θ_prev + scale·DARE(θ_sft − θ_prev))."""
    return merge_tensor("dare_linear", base, prev, sft, alpha=alpha, p=p, generator=generator, scale=scale)[0]


def task_arithmetic(base, prev, sft, *, alpha, p, generator=None, scale=1.0) -> torch.Tensor:
    """α·θ + (1−α)·(θ_prev + scale·δ); p is not used."""
    return merge_tensor("task_arithmetic", base, prev, sft, alpha=alpha, p=p, generator=generator,
                        scale=scale)[0]


def ties(base, prev, sft, *, alpha, p, generator=None, scale=1.0) -> torch.Tensor:
    """α·θ + (1−α)·(θ_prev + scale·TIES(δ)), δ trimmed to its top (1−p) share by magnitude."""
    return merge_tensor("ties", base, prev, sft, alpha=alpha, p=p, generator=generator, scale=scale)[0]


def layer_adaptive(base, prev, sft, *, alpha, p, generator=None, scale=1.0) -> torch.Tensor:
    """IMM with this tensor's layer α (resolved by ``tensor_alpha_scale`` from the config)."""
    return merge_tensor("layer_adaptive", base, prev, sft, alpha=alpha, p=p, generator=generator,
                        scale=scale)[0]


MergeFn = Callable[..., torch.Tensor]
MERGE_METHODS: dict[str, MergeFn] = {
    "dare_linear": dare_linear,
    "task_arithmetic": task_arithmetic,
    "ties": ties,
    "layer_adaptive": layer_adaptive,
}


def get(name: str) -> MergeFn:
    if name not in MERGE_METHODS:
        raise KeyError(f"unknown merge method {name!r}; valid: {sorted(MERGE_METHODS)}")
    return MERGE_METHODS[name]


# ---- what a merge did: update norm and density, per tensor group --------------------------------

GROUP_RULES = (("embeddings", re.compile(r"embed|wte|wpe")), ("lm_head", re.compile(r"lm_head")),
               ("attention", re.compile(r"attn|attention")), ("mlp", re.compile(r"mlp|feed_forward")),
               ("norms", re.compile(r"norm")))


def tensor_group(name: str) -> str:
    """"layers.3.attention", "layers.3.mlp", "embeddings", "norms", "lm_head", ... for a tensor name."""
    kind = next((g for g, rx in GROUP_RULES if rx.search(name)), "other")
    layer = layer_index(name)
    return kind if layer is None else f"layers.{layer}.{kind}"


@dataclass
class TensorStats:
    delta_sq: float = 0.0  # ‖θ_sft − θ_prev‖²
    update_sq: float = 0.0  # ‖θ_m − θ_prev‖²
    nonzero: int = 0  # nonzero entries of δ
    kept: int = 0  # nonzero entries of U(δ)

    def add(self, other: "TensorStats") -> None:
        self.delta_sq += other.delta_sq
        self.update_sq += other.update_sq
        self.nonzero += other.nonzero
        self.kept += other.kept

    def summary(self) -> dict[str, float]:
        return {"update_norm": self.update_sq ** 0.5, "delta_norm": self.delta_sq ** 0.5,
                "density": self.kept / self.nonzero if self.nonzero else 0.0}


@dataclass
class MergeStats:
    update_norm: float  # ‖θ_m − θ_prev‖ over all merged tensors
    delta_norm: float  # ‖θ_sft − θ_prev‖ before DARE
    density: float  # share of nonzero entries in the DARE'd update (nonzero deltas only)
    groups: dict[str, dict[str, float]] = field(default_factory=dict)  # the same, per tensor group


class StatsAccumulator:
    """Sums block stats into totals and per-group figures (so DARE compounding shows per iteration)."""

    def __init__(self) -> None:
        self.total = TensorStats()
        self.groups: dict[str, TensorStats] = {}

    def add(self, name: str, stats: TensorStats) -> None:
        self.total.add(stats)
        self.groups.setdefault(tensor_group(name), TensorStats()).add(stats)

    def result(self) -> MergeStats:
        groups = {g: s.summary() for g, s in sorted(self.groups.items())}
        return MergeStats(**self.total.summary(), groups=groups)


# ---- per-tensor arguments: layer, α, scale, exclusion ---------------------------------------------

def layer_index(name: str) -> int | None:
    """The transformer layer a parameter belongs to ("model.layers.3.mlp..." → 3), else None."""
    m = LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def num_layers(names) -> int:
    layers = [n for n in map(layer_index, names) if n is not None]
    return max(layers) + 1 if layers else 0


def importance_scales(importance: dict[int, float]) -> dict[int, float]:
    """Per-layer update scales N·I_n / Σᵢ Iᵢ of IIMM (Eq. 7); they average to 1."""
    total = sum(importance.values())
    if total <= 0:
        raise ValueError("layer importances sum to zero; cannot normalise")
    n = len(importance)
    return {layer: n * value / total for layer, value in importance.items()}


def layer_alpha(cfg: MergeConfig, layer: int, n_layers: int, importance_scale: float | None) -> float:
    """α of one layer under layer_adaptive's schedule."""
    if cfg.alpha_schedule == "list":
        if len(cfg.alpha_by_layer) != n_layers:
            raise ValueError(f"merge.alpha_by_layer has {len(cfg.alpha_by_layer)} values; "
                             f"the model has {n_layers} layers")
        return float(cfg.alpha_by_layer[layer])
    if cfg.alpha_schedule == "importance":
        if importance_scale is None:
            raise ValueError("merge.alpha_schedule=importance needs layer importances (Eq. 3) as layer_scales")
        # important layers keep more of the update: 1−α_n = (1−α)·N·I_n/ΣI, clipped to [0, 1]
        return min(1.0, max(0.0, 1.0 - (1.0 - cfg.alpha) * importance_scale))
    frac = layer / (n_layers - 1) if n_layers > 1 else 0.0
    return cfg.alpha + (cfg.alpha_last - cfg.alpha) * frac


def tensor_alpha_scale(cfg: MergeConfig, name: str, n_layers: int,
                       layer_scales: dict[int, float] | None) -> tuple[float, float]:
    """(α, update scale) of one tensor: λ times IIMM's layer scale, or the layer_adaptive α."""
    layer = layer_index(name)
    scale = layer_scales.get(layer, 1.0) if layer_scales and layer is not None else None
    if cfg.name == "layer_adaptive" and layer is not None:
        alpha = layer_alpha(cfg, layer, n_layers, scale)
        if cfg.alpha_schedule == "importance":
            return alpha, cfg.lam  # the importances act through α, not through the update scale
        return alpha, cfg.lam * (scale if scale is not None else 1.0)
    return cfg.alpha, cfg.lam * (scale if scale is not None else 1.0)


def is_excluded(cfg: MergeConfig, name: str) -> bool:
    """True for tensors kept unmerged (copied from ``cfg.exclude_from``)."""
    return any(re.search(pattern, name) for pattern in cfg.exclude)


def _shape(t) -> tuple[int, ...]:
    return tuple(t.shape) if hasattr(t, "shape") else tuple(t)


def check_compatible(a: dict, b: dict, what: str) -> None:
    """Refuse to merge checkpoints whose tensor names or shapes differ (architecture, vocabulary).
    Values are tensors or shapes."""
    if a.keys() != b.keys():
        only_a, only_b = sorted(a.keys() - b.keys())[:3], sorted(b.keys() - a.keys())[:3]
        raise ValueError(f"cannot merge {what}: different architectures "
                         f"(tensors only in one: {only_a} / {only_b})")
    for name, t in a.items():
        if _shape(t) != _shape(b[name]):
            raise ValueError(f"cannot merge {what}: {name} has shape {_shape(t)} vs "
                             f"{_shape(b[name])} (different architecture or vocabulary)")


# ---- one tensor, block by block; a whole model in memory ------------------------------------------

def row_ranges(method: str, shape: tuple[int, ...], chunk_elems: int = CHUNK_ELEMS) -> list[slice]:
    """Row blocks one tensor is merged in, in order; one block of everything (``...``) where the
    rule needs the whole tensor (TIES ranks all magnitudes) or there are no rows."""
    if method not in ELEMENTWISE or len(shape) == 0:
        return [...]
    step = max(1, chunk_elems // max(1, math.prod(shape[1:])))
    return [slice(a, min(a + step, shape[0])) for a in range(0, shape[0], step)] or [...]


def merge_blocks(cfg: MergeConfig, name: str, blocks: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                 iteration: int, alpha: float, scale: float) -> Iterator[tuple[torch.Tensor, TensorStats]]:
    """Merge one tensor given as (base, prev, sft) row blocks in ``row_ranges`` order. One generator
    runs through all blocks, so the DARE mask is the one a single draw would give."""
    gen = torch.Generator().manual_seed(tensor_seed(cfg.seed, iteration, name))
    work = Workspace()
    for base, prev, sft in blocks:
        yield merge_tensor(cfg.name, base, prev, sft, alpha=alpha, p=cfg.p, generator=gen, scale=scale, work=work)


def merge_state_dicts(base: dict[str, torch.Tensor], prev: dict[str, torch.Tensor],
                      sft: dict[str, torch.Tensor], cfg: MergeConfig, iteration: int,
                      layer_scales: dict[int, float] | None = None
                      ) -> tuple[dict[str, torch.Tensor], MergeStats]:
    """Merge whole models tensor by tensor; returns the merged state dict and its update stats."""
    check_compatible(base, sft, "base and SFT model")
    check_compatible(prev, sft, "previous and SFT model")
    sources = {"sft": sft, "base": base, "prev": prev}
    n_layers = num_layers(sft)
    merged: dict[str, torch.Tensor] = {}
    acc = StatsAccumulator()
    for name, t_sft in sft.items():
        if is_excluded(cfg, name) or not t_sft.is_floating_point():
            merged[name] = sources[cfg.exclude_from if is_excluded(cfg, name) else "sft"][name].clone()
            continue
        alpha, scale = tensor_alpha_scale(cfg, name, n_layers, layer_scales)
        ranges = row_ranges(cfg.name, tuple(t_sft.shape))
        inputs = ((base[name][r], prev[name][r], t_sft[r]) for r in ranges)
        blocks = []
        for block, stats in merge_blocks(cfg, name, inputs, iteration, alpha, scale):
            blocks.append(block)
            acc.add(name, stats)
        merged[name] = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
    return merged, acc.result()
