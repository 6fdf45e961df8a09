"""Layer weight change (paper Eq. 4): ΔW_n = Σ_k ‖W_A^{k,n} − W_B^{k,n}‖, per transformer layer.

Tensors are streamed from the two safetensors checkpoints in row blocks, so any model size fits.
Commands (see ``imm.analysis.cli``):

    python -m imm.analysis weight-change A B --out DIR   # one pair of checkpoints (paper Fig. 4)
    python -m imm.analysis weight-change-run RUN_DIR      # each iteration's SFT step (paper Fig. 12)
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from imm.merge.rules import check_compatible, layer_index, row_ranges
from imm.merge.engine import Checkpoint

STEP_RE = re.compile(r"^(sft|merge)(\d+)$")


def weight_change(a_dir, b_dir) -> dict[int, float]:
    """ΔW_n for every layer n: the sum over the layer's tensors of the Frobenius norm of A − B."""
    a, b = Checkpoint(a_dir), Checkpoint(b_dir)
    try:
        check_compatible({n: a.shape(n) for n in a.names}, {n: b.shape(n) for n in b.names},
                         f"{a_dir} and {b_dir}")
        change: dict[int, float] = {}
        for name in a.names:
            layer = layer_index(name)
            if layer is None:
                continue
            sq = 0.0
            for rows in row_ranges("dare_linear", a.shape(name)):
                diff = a.read(name, rows).float() - b.read(name, rows).float()
                sq += float(torch.dot(diff.view(-1), diff.view(-1)))
            change[layer] = change.get(layer, 0.0) + sq ** 0.5
        return dict(sorted(change.items()))
    finally:
        a.close()
        b.close()


def shares(change: dict[int, float]) -> dict[int, float]:
    """Each layer's share of the total change (the percentages of Fig. 12)."""
    total = sum(change.values())
    return {n: v / total if total else 0.0 for n, v in change.items()}


def sft_steps(run_dir, base_dir) -> list[tuple[int, Path, Path]]:
    """(iteration, start model, SFT model) for each ``sft<t>`` folder of a run: iteration t starts
    from the base model (t = 1), else from ``merge<t-1>`` where the method merges, else ``sft<t-1>``."""
    run = Path(run_dir)
    found = {(m.group(1), int(m.group(2))): p for p in run.iterdir() if p.is_dir() and (m := STEP_RE.match(p.name))}
    steps = []
    for t in sorted(i for kind, i in found if kind == "sft"):
        start = Path(base_dir) if t == 1 else found.get(("merge", t - 1), found.get(("sft", t - 1)))
        if start is None:
            raise FileNotFoundError(f"{run}: sft{t} has no merge{t - 1} or sft{t - 1} to start from")
        steps.append((t, start, found[("sft", t)]))
    if not steps:
        raise FileNotFoundError(f"{run}: no sft<t> checkpoint folders")
    return steps


def run_weight_change(run_dir, base_dir) -> dict[int, dict[int, float]]:
    """ΔW_n of every iteration's SFT step: {iteration: {layer: change}}."""
    return {t: weight_change(start, sft) for t, start, sft in sft_steps(run_dir, base_dir)}
