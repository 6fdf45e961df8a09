"""When the loop merges (``merge.schedule``), and the in-training pull of the ``steps`` schedule.

- ``round``  after every round's SFT, θ_m = α·θ + (1−α)·(θ_prev + U(θ_sft − θ_prev)): the paper's IMM.
- ``final``  the rounds run as vanilla self-improvement (the SFT model samples and is trained on),
             and one merge with θ_prev = θ follows the last round; its rounds share their stages
             with a vanilla job's, and its first round with a ``round`` job's.
- ``steps``  no merge between rounds; inside SFT, every ``merge.every`` optimizer steps the weights
             are pulled toward θ: θ ← β·θ + (1−β)·(θ_a + U(θ_now − θ_a)), θ_a the weights at the
             previous pull (or the round's start). With task arithmetic (U = identity) this is
             θ ← (1−β)·θ_now + β·θ, the pull of "Soup to go" (arXiv 2501.05559). ``merge.beta = 0``
             takes the β whose K pulls of a round weigh θ by α in all: 1 − (1−β)^K = α.

Every pull goes through the same rule registry (``imm.merge.rules``) as a round's merge.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from imm.merge.engine import Checkpoint
from imm.merge.rules import MergeConfig, merge_blocks, num_layers, tensor_alpha_scale

log = logging.getLogger(__name__)


def merges_after(cfg: MergeConfig, t: int, iterations: int) -> bool:
    """Whether round t (0-based) ends with a merge."""
    return cfg.schedule == "round" or (cfg.schedule == "final" and t == iterations - 1)


def pull_weight(cfg: MergeConfig, pulls: int) -> float:
    """β of one pull: merge.beta, or (0) the β whose ``pulls`` pulls weigh θ by α together."""
    if cfg.beta > 0 or pulls == 0:
        return cfg.beta
    return 1.0 - (1.0 - cfg.alpha) ** (1.0 / pulls)


class StepPull:
    """The ``steps`` schedule's hook for the SFT loop, called as ``pull(model, step, total)``: at step 0
    (before training) it notes the starting weights; after optimizer step ``step`` it pulls the
    model's weights toward the base checkpoint's when ``step`` is a multiple of ``cfg.every``.

    The base's weights are held in float32 on the CPU beside a copy of the weights at the last pull
    (two copies of the model: meant for models that train on one device)."""

    def __init__(self, cfg: MergeConfig, base_dir: str | Path, iteration: int) -> None:
        self.cfg, self.iteration = cfg, iteration
        ckpt = Checkpoint(base_dir)
        try:
            self.base = {n: ckpt.read(n).to(torch.float32) for n in ckpt.names}
        finally:
            ckpt.close()
        self.anchor: dict[str, torch.Tensor] | None = None
        self.pulls, self.beta = 0, 0.0

    def __call__(self, model, step: int, total: int) -> None:
        if step == 0:
            self.start(model)
            if total < self.cfg.every:
                log.warning("merge.schedule=steps: round %d has %d optimizer steps, fewer than merge.every=%d: "
                            "no pull toward the base this round (lower merge.every)", self.iteration + 1, total,
                            self.cfg.every)
            return
        if step % self.cfg.every:
            return
        self.beta = pull_weight(self.cfg, total // self.cfg.every)
        names = [n for n, _ in model.named_parameters()]
        n_layers = num_layers(names)
        with torch.no_grad():
            for name, param in model.named_parameters():
                now = param.detach().to("cpu", torch.float32)
                _, scale = tensor_alpha_scale(self.cfg, name, n_layers, None)
                # pull k of round t draws its masks as iteration t·100000 + k: a stream of its own
                (merged, _), = merge_blocks(self.cfg, name, [(self.base[name], self.anchor[name], now)],
                                            self.iteration * 100_000 + self.pulls, self.beta, scale)
                param.copy_(merged.to(param.device, param.dtype))
                self.anchor[name] = merged.clone()
        self.pulls += 1

    def start(self, model) -> None:
        self.anchor = {n: p.detach().to("cpu", torch.float32).clone() for n, p in model.named_parameters()}
        missing = sorted(set(self.anchor) - set(self.base))[:3]
        if missing:
            raise ValueError(f"the base checkpoint lacks the trained model's tensors {missing}")

    def stats(self) -> dict[str, float]:
        return {"pulls": self.pulls, "pull_beta": self.beta}
