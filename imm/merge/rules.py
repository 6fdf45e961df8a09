"""Model merging as pure functions over tensors (paper Eq. 5-7), and the registry of merge rules.

IMM:  δᵗ = θ_sftᵗ − θ_prev,  δ̂ = DARE(δᵗ, p),  θ_mᵗ = α·θ + (1−α)·(θ_prev + δ̂)
IIMM: as IMM, with each layer n's δ̂ scaled by N·I_n / Σᵢ Iᵢ (I_n: layer importance, Eq. 3).

Every rule in ``MERGE_RULES`` shares one combination, α·θ + (1−α)·(θ_prev + scale·U(δ)), and
differs in its update rule U and in the traits the engine plans by (``MergeRule``):

- ``dare_linear``      U = DARE: drop each entry with probability p, rescale the kept by 1/(1−p).
- ``task_arithmetic``  U = identity (scale = λ·layer scale; α=0, λ=1 gives θ_sft back).
- ``ties``             U = TIES-merging of the single task vector δ = θ_sft − θ_prev, taken relative
                       to θ_prev: keep the top (1−p) share by magnitude, elect the sign, disjoint mean.
                       With one task vector the elected sign is δ's own, so U is the trimmed δ;
                       ``ties_merge`` is the general rule for several task vectors.
- ``layer_adaptive``   U = DARE with a per-layer α: a linear ramp, a list, or derived from Eq. 3
                       importances (the dynamic, layer-adaptive merging the paper leaves to future work).
- ``della``            U = DELLA's MAGPRUNE (arXiv 2406.11617): DARE with drop chances ranked by
                       magnitude within each row (``imm.merge.magprune``).
- ``lines``            U = identity, scaled per layer with depth as LiNeS (arXiv 2410.17146):
                       λ_ℓ = λ_first + (λ − λ_first)·ℓ/(L−1); shallow layers keep the base's features.
- ``expo``             U = identity, and α may be negative (with ``merge.extrapolate=true`` only):
                       α = −γ gives θ_new + γ·(θ_new − θ_base), θ_new = θ_prev + λ·δ, ExPO's
                       extrapolation past the tuned model (arXiv 2404.16792).

A new method is one update function and one ``MERGE_RULES`` entry. DARE masks come from
``imm.merge.mask``; the streaming engine (``imm.merge.engine``) runs these rules block by block.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterable, Iterator, List

import torch

from imm.merge.magprune import della_update
from imm.merge.mask import DareMask, tensor_seed
from imm.merge.stats import LAYER_RE, TensorStats, tensor_group

ALPHA_SCHEDULES = ("ramp", "list", "importance")
# when the loop merges: after every round (the paper's IMM), every ``every`` optimizer steps inside
# SFT (Soup to go, arXiv 2501.05559), or once after the last round; imm.merge.schedule
SCHEDULES = ("round", "steps", "final")
EXCLUDE_SOURCES = ("sft", "base", "prev")
# entries merged at once: 2^18 was fastest (2^16: 4x the per-op Python overhead; 2^20: float32
# buffers of 4 MiB fall out of cache); memory per block is a few MiB
CHUNK_ELEMS = 1 << 18


@dataclass
class MergeConfig:
    name: str = "dare_linear"  # a key of MERGE_RULES
    alpha: float = 0.5  # weight of the base model θ, in [0, 1]; paper: 0.5 (layer_adaptive: α at layer 0); expo: < 0 too
    p: float = 0.1  # drop share of the update, in [0, 1): DARE's random drop rate, TIES' trimmed share
    seed: int = 0  # DARE mask seed (combined with iteration and tensor name)
    lam: float = 1.0  # λ >= 0, weight of the update (task arithmetic's scaling); 1 = the whole update
    alpha_schedule: str = "ramp"  # layer_adaptive: ramp | list | importance (1−α_n = (1−α)·N·I_n/ΣI)
    alpha_last: float = 0.5  # layer_adaptive ramp: α at the last layer, in [0, 1]
    alpha_by_layer: List[float] = field(default_factory=list)  # layer_adaptive list: α of each layer
    exclude: List[str] = field(default_factory=list)  # regexes (re.search) of tensor names not merged
    exclude_from: str = "sft"  # model an excluded tensor is copied from: sft | base | prev
    epsilon: float = 0.1  # della: width of the window of keep chances around 1−p, 0 <= ε/2 <= min(p, 1−p)
    lam_first: float = 0.0  # lines: λ at the first layer and the embeddings (λ = lam at the last), >= 0
    extrapolate: bool = False  # expo: allow α < 0 (θ moves past the tuned model, away from θ_base)
    schedule: str = "round"  # round | steps | final (SCHEDULES)
    every: int = 8  # steps: optimizer steps between pulls toward θ_base, >= 1
    beta: float = 0.0  # steps: weight of θ_base per pull, [0, 1); 0 = the β whose pulls weigh θ_base by α per round

    def __post_init__(self) -> None:
        if self.name not in MERGE_RULES:
            raise ValueError(f"merge.name={self.name!r} is not one of {sorted(MERGE_RULES)}")
        self._check_alpha()
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
        if MERGE_RULES[self.name].per_layer_alpha and self.alpha_schedule == "list" and not self.alpha_by_layer:
            raise ValueError("merge.alpha_by_layer is empty but merge.alpha_schedule=list needs one α per layer")
        if self.exclude_from not in EXCLUDE_SOURCES:
            raise ValueError(f"merge.exclude_from={self.exclude_from!r} is not one of {EXCLUDE_SOURCES}")
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"merge.exclude: {pattern!r} is not a valid regex ({err})") from None
        if self.name == "della" and self.p > 0 and not 0.0 <= self.epsilon / 2 <= min(self.p, 1.0 - self.p):
            raise ValueError(f"merge.epsilon={self.epsilon}: della needs 0 <= ε/2 <= min(p, 1−p) (p={self.p})")
        if not (math.isfinite(self.lam_first) and self.lam_first >= 0.0):
            raise ValueError(f"merge.lam_first={self.lam_first} must be a finite number >= 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"merge.schedule={self.schedule!r} is not one of {SCHEDULES}")
        if self.every < 1:
            raise ValueError(f"merge.every={self.every} must be >= 1")
        if not 0.0 <= self.beta < 1.0:
            raise ValueError(f"merge.beta={self.beta} must lie in [0, 1)")

    def _check_alpha(self) -> None:
        """α in [0, 1]; below 0 only for a rule that extrapolates and only when asked for by name."""
        if not math.isfinite(self.alpha) or self.alpha > 1.0:
            raise ValueError(f"merge.alpha={self.alpha} must lie in [0, 1]")
        if self.alpha < 0.0 and not (self.extrapolate and MERGE_RULES[self.name].extrapolates):
            raise ValueError(f"merge.alpha={self.alpha} must lie in [0, 1]; α < 0 extrapolates past the tuned "
                             f"model: it needs merge.name=expo and merge.extrapolate=true")
        if self.alpha < 0.0 and self.schedule == "steps":
            raise ValueError("merge.alpha < 0 (extrapolation) needs merge.schedule=round or final")

    def key_fields(self) -> dict:
        """The settings that change a merge's output, for its stage key: the schedule decides when a
        merge runs, not what it gives, and a rule's own setting counts for that rule only (so the
        keys of every rule older than these settings stay as they were)."""
        d = asdict(self)
        for name in ("schedule", "every", "beta", "extrapolate"):
            d.pop(name)
        if self.name != "della":
            d.pop("epsilon")
        if self.name != "lines":
            d.pop("lam_first")
        return d


# ---- update rules U(δ): what of δ = θ_sft − θ_prev survives --------------------------------------

def dare_(delta: torch.Tensor, p: float, keep: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """DARE in place on ``delta``, given its multipliers ``keep`` (``DareMask.multipliers``)."""
    if p == 0.0:
        return delta
    if keep is None:
        raise ValueError("DARE with p > 0 needs the mask's multipliers")
    return delta.mul_(keep.view(delta.shape))  # no masked copies


def keep_all(delta: torch.Tensor, p: float, keep: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
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


def ties_update(delta: torch.Tensor, p: float, keep: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """TIES with δ as the single task vector relative to θ_prev; p is the trimmed share."""
    return ties_merge(delta.unsqueeze(0), 1.0 - p)


# ---- the registry: one entry per merge method --------------------------------------------------

# (δ, p, the rule's random draws or None, DELLA's ε) -> U(δ); a rule may overwrite δ
UpdateFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class MergeRule:
    """One merge method: its update rule U and the traits the engine plans by."""
    update: UpdateFn
    elementwise: bool  # U acts entry by entry, so a tensor may be merged in row blocks
    draws_mask: bool = False  # U takes DARE multipliers (none are drawn at p = 0)
    draws_uniform: bool = False  # U takes uniform draws in (0, 1), one per entry (none at p = 0)
    per_layer_alpha: bool = False  # α follows merge.alpha_schedule per layer instead of merge.alpha
    depth_scaled: bool = False  # the update is scaled with depth, λ_first → λ (LiNeS)
    extrapolates: bool = False  # α < 0 is allowed (with merge.extrapolate=true)


MERGE_RULES: dict[str, MergeRule] = {
    "dare_linear": MergeRule(dare_, elementwise=True, draws_mask=True),
    "task_arithmetic": MergeRule(keep_all, elementwise=True),
    # TIES ranks magnitudes over the whole tensor, so it gets the tensor in one block
    "ties": MergeRule(ties_update, elementwise=False),
    "layer_adaptive": MergeRule(dare_, elementwise=True, draws_mask=True, per_layer_alpha=True),
    # DELLA ranks magnitudes within each row; a 1-D tensor is one row, so whole tensors again
    "della": MergeRule(della_update, elementwise=False, draws_uniform=True),
    "lines": MergeRule(keep_all, elementwise=True, depth_scaled=True),
    "expo": MergeRule(keep_all, elementwise=True, extrapolates=True),
}


def get(name: str) -> MergeRule:
    """The rule registered as ``name``; an unknown name fails with the valid ones."""
    if name not in MERGE_RULES:
        raise ValueError(f"unknown merge method {name!r}; valid: {sorted(MERGE_RULES)}")
    return MERGE_RULES[name]


def dare_mask(cfg: MergeConfig, name: str, iteration: int) -> DareMask | None:
    """The mask stream of one tensor, seeded per (seed, iteration, name); None where none is drawn."""
    rule = get(cfg.name)
    if not (rule.draws_mask or rule.draws_uniform) or cfg.p == 0.0:
        return None
    return DareMask(tensor_seed(cfg.seed, iteration, name))


class Workspace:
    """Buffers reused by every block of a merge: float32 ones for δ, θ_prev widened, the DARE
    multipliers and a counting scratch (at most ``CHUNK_ELEMS``, ``count_nonzero`` goes in pieces),
    and with ``reuse_output`` the merged block itself (the engine writes each block before the next).
    Blocks then allocate nothing: fresh MiB-sized buffers are page-faulted afresh each time, which
    cost the engine about a third of its time."""

    def __init__(self, reuse_output: bool = False) -> None:
        self.reuse_output = reuse_output
        self.bufs: dict[object, torch.Tensor] = {}

    def take(self, key: object, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A flat buffer of n entries, the same memory every time for one key (contents undefined)."""
        buf = self.bufs.get(key)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self.bufs[key] = torch.empty(n, dtype=dtype)
        return buf[:n]

    def output(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        if not self.reuse_output:
            return torch.empty(shape, dtype=dtype)
        return self.take("out", math.prod(shape), dtype).view(shape)


def count_nonzero(x: torch.Tensor, scratch: torch.Tensor) -> int:
    """Nonzero entries of ``x``, without a branch per entry: ``torch.count_nonzero`` branches, and
    δ's zeros (DARE's drops) fall at random, which made it 10x slower than this compare-and-sum.
    ``scratch``: float32, counted in pieces of its size (a float32 sum of 0s and 1s is exact below
    2²⁴ entries)."""
    flat, step = x.reshape(-1), min(scratch.numel(), 1 << 24)
    total = 0
    for start in range(0, flat.numel(), step):
        piece = flat[start:start + step]
        total += int(torch.ne(piece, 0, out=scratch[:piece.numel()]).sum())
    return total


def merge_tensor(method: str, base: torch.Tensor, prev: torch.Tensor, sft: torch.Tensor, *, alpha: float,
                 p: float, keep: torch.Tensor | None = None, scale: float = 1.0,
                 work: Workspace | None = None, eps: float = 0.0) -> tuple[torch.Tensor, TensorStats]:
    """α·θ + (1−α)·(θ_prev + scale·U(θ_sft − θ_prev)) in float32, returned in θ_sft's dtype,
    with its stats; ``keep``: the rule's draws for these entries (DARE multipliers, DELLA uniforms);
    ``work`` lends reusable buffers (the engine passes one for the whole merge); ``eps``: DELLA's ε."""
    work = work or Workspace()
    n = sft.numel()
    delta, prev32 = work.take("delta", n).view(sft.shape), work.take("prev", n).view(sft.shape)
    scratch = work.take("count", min(n, CHUNK_ELEMS))
    # bf16 → float32 is exact, so each op below gives the float32 result; θ_prev, used three
    # times, is widened once (a mixed-dtype op costs twice a float32 one)
    prev32.copy_(prev)
    delta.copy_(sft).sub_(prev32)
    flat = delta.view(-1)
    delta_sq, nonzero = float(torch.dot(flat, flat)), count_nonzero(delta, scratch)
    update = get(method).update(delta, p, keep, eps)
    kept = count_nonzero(update, scratch)
    if scale != 1.0:  # x·1 = x: skipping it changes no bit
        update.mul_(scale)
    update.add_(prev32).mul_(1.0 - alpha).add_(base, alpha=alpha)
    merged = work.output(sft.shape, sft.dtype).copy_(update)  # rounds once, as .to(dtype) would
    moved = update.copy_(merged).sub_(prev32).view(-1)
    return merged, TensorStats(delta_sq=delta_sq, update_sq=float(torch.dot(moved, moved)),
                               nonzero=nonzero, kept=kept)


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


def depth_lam(cfg: MergeConfig, name: str, n_layers: int) -> float:
    """LiNeS' λ of one tensor: λ_first at layer 0 and the embeddings, λ at the last layer and every
    other tensor outside the layers (final norm, head), linear in between."""
    layer = layer_index(name)
    if layer is None:
        return cfg.lam_first if tensor_group(name) == "embeddings" else cfg.lam
    frac = layer / (n_layers - 1) if n_layers > 1 else 1.0
    return cfg.lam_first + (cfg.lam - cfg.lam_first) * frac


def tensor_alpha_scale(cfg: MergeConfig, name: str, n_layers: int,
                       layer_scales: dict[int, float] | None) -> tuple[float, float]:
    """(α, update scale) of one tensor: λ (LiNeS: λ by depth) times IIMM's layer scale, or the
    layer_adaptive α."""
    layer = layer_index(name)
    if get(cfg.name).depth_scaled:
        cfg = replace(cfg, lam=depth_lam(cfg, name, n_layers))
    scale = layer_scales.get(layer, 1.0) if layer_scales and layer is not None else None
    if get(cfg.name).per_layer_alpha and layer is not None:
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


# ---- one tensor, block by block ------------------------------------------------------------------

def row_ranges(method: str, shape: tuple[int, ...], chunk_elems: int = CHUNK_ELEMS) -> list[slice]:
    """Row blocks one tensor is merged in, in order; one block of everything (``...``) where the
    rule needs the whole tensor (TIES ranks all magnitudes) or there are no rows."""
    if not get(method).elementwise or len(shape) == 0:
        return [...]
    step = max(1, chunk_elems // max(1, math.prod(shape[1:])))
    return [slice(a, min(a + step, shape[0])) for a in range(0, shape[0], step)] or [...]


def merge_blocks(cfg: MergeConfig, name: str, blocks: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                 iteration: int, alpha: float, scale: float, work: Workspace | None = None
                 ) -> Iterator[tuple[torch.Tensor, TensorStats]]:
    """Merge one tensor given as (base, prev, sft) row blocks in ``row_ranges`` order. One mask
    stream runs through all blocks, so the DARE mask is the one a single draw would give. ``work``:
    buffers to reuse (with ``reuse_output``, each block is overwritten by the next)."""
    mask = dare_mask(cfg, name, iteration)
    uniform = get(cfg.name).draws_uniform
    work = work or Workspace()
    for base, prev, sft in blocks:
        keep = None
        if mask:
            out = work.take("keep", sft.numel())
            keep = mask.uniforms(sft.numel(), out=out) if uniform else mask.multipliers(sft.numel(), cfg.p, out=out)
        yield merge_tensor(cfg.name, base, prev, sft, alpha=alpha, p=cfg.p, keep=keep, scale=scale, work=work,
                           eps=cfg.epsilon)
