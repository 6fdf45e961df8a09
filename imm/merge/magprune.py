"""DELLA's MAGPRUNE (arXiv 2406.11617, Sec. 3): DARE whose drop chance falls with magnitude.

Within each row of δ (a 1-D tensor is one row) the entries are ranked by |δ|, r = 0 for the
smallest and n−1 for the largest, and entry i is kept with chance

    k_i = (1 − p) − ε/2 + ε·r_i/(n − 1)

(keep chances spread evenly over a window of width ε around 1 − p, so p stays the mean drop rate),
and a kept entry is divided by its own k_i, so E[U(δ)] = δ as with DARE. mergekit's
``della_magprune`` spreads the chances over ±ε and rescales by the L1 norm instead; this follows
the paper's expectation-preserving 1/k_i. With one task vector, DELLA's sign election and disjoint
merge leave the pruned δ as it is.

Ties in |δ| are ranked in index order (a stable sort), so a merge is reproducible.
"""

from __future__ import annotations

import torch


def keep_chances(delta: torch.Tensor, p: float, eps: float) -> torch.Tensor:
    """k_i of every entry of ``delta`` (float32, its shape), ranked by magnitude within each row."""
    rows = delta.reshape(-1, delta.shape[-1]) if delta.dim() > 1 else delta.reshape(1, -1)
    n = rows.shape[1]
    ranks = rows.abs().argsort(dim=1, stable=True).argsort(dim=1).to(torch.float32)
    frac = ranks / (n - 1) if n > 1 else torch.full_like(ranks, 0.5)
    return ((1.0 - p) - eps / 2 + eps * frac).view(delta.shape)


def della_update(delta: torch.Tensor, p: float, draws: torch.Tensor | None = None, eps: float = 0.0) -> torch.Tensor:
    """MAGPRUNE in place on ``delta``, given one uniform draw in (0, 1) per entry (``DareMask.uniforms``):
    entry i is kept when its draw is below k_i, and then divided by k_i."""
    if p == 0.0:
        return delta
    if draws is None:
        raise ValueError("DELLA with p > 0 needs one uniform draw per entry")
    keep = keep_chances(delta, p, eps)
    kept = draws.view(delta.shape) < keep
    return delta.mul_(torch.where(kept, keep.reciprocal(), torch.zeros_like(keep)))
