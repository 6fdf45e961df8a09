"""What a merge did: update norm, delta norm and density, in total and per tensor group.

Recorded for every merge (``merge.json`` and MLflow ``merge/groups/...``), so DARE's compounding over
iterations (the same deltas thinned again and again) is visible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")

GROUP_RULES = (("embeddings", re.compile(r"embed|wte|wpe")), ("lm_head", re.compile(r"lm_head")),
               ("attention", re.compile(r"attn|attention")), ("mlp", re.compile(r"mlp|feed_forward")),
               ("norms", re.compile(r"norm")))


def tensor_group(name: str) -> str:
    """"layers.3.attention", "layers.3.mlp", "embeddings", "norms", "lm_head", ... for a tensor name."""
    kind = next((g for g, rx in GROUP_RULES if rx.search(name)), "other")
    m = LAYER_RE.search(name)
    layer = int(m.group(1)) if m else None
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
