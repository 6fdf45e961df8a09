"""Per-item forgetting with a chance correction, and Verified pass@1, from evaluation records.

**Forgetting** ("Mapping Post-Training Forgetting", arXiv 2510.17776) counts items that went right →
wrong (forgotten) and wrong → right (newly solved) between two models; ``imm.analysis.reasoning.transitions``
logs these raw shares. Part of them is luck: an item a model does not know can still come out right
by chance g. The paper subtracts what guessing explains; here that is done under the model "an item
is known (always right) or unknown (right with chance g, independently per evaluation)", where the
share of items wrong in both evaluations, WW = u·(1−g)², identifies u, the items unknown to both,
and the chance-corrected shares are

    forgotten_adj    = max(0, F − WW·g/(1−g)) / (1−g)     (known before, unknown after)
    newly_solved_adj = max(0, B − WW·g/(1−g)) / (1−g)     (unknown before, known after)

with F, B the raw shares; g = 0 gives the raw shares back. For free-form answers g is the chance of
hitting the gold answer by guessing from the set's answer distribution, Σ_a q_a² (q_a: the share of
items whose gold answer is a), so a set with a few frequent answers gets a real correction.

**Verified pass@1** ("Curing Miracle Steps", arXiv 2510.07774): an item counts when its first answer
is right *and* the step checker reads its reasoning as sound (``imm.data.world.steps``, through the
step classes each evaluation record carries; testbed items only).
"""

from __future__ import annotations

from collections import Counter

SOUND = "sound"  # the step checker's class of a right answer reached by right steps


def chance_level(golds: list[str]) -> float:
    """Σ_a q_a²: the chance that an answer drawn from the gold answers' distribution is right."""
    counts = Counter(golds)
    n = len(golds)
    return sum((c / n) ** 2 for c in counts.values()) if n else 0.0


def corrected(forgotten: float, newly_solved: float, both_wrong: float, g: float) -> tuple[float, float]:
    """(forgotten_adj, newly_solved_adj) of raw shares given the share wrong in both and chance g."""
    if g >= 1.0:
        return 0.0, 0.0
    luck = both_wrong * g / (1.0 - g)
    return max(0.0, forgotten - luck) / (1.0 - g), max(0.0, newly_solved - luck) / (1.0 - g)


def chance_corrected(before: list[dict], after: list[dict], chance: dict[str, float],
                     groups: dict[str, list[str]]) -> dict[str, float]:
    """``<set>/forgotten_adj`` and ``<set>/newly_solved_adj`` for sets with a chance level, and per
    group the means over its sets (as ``transitions`` averages the raw shares)."""
    was = {(r["set"], r["index"]): r["right"] for r in before}
    cells: dict[str, Counter] = {}
    for r in after:
        cells.setdefault(r["set"], Counter())[(was[(r["set"], r["index"])], r["right"])] += 1
    out: dict[str, float] = {}
    for name, c in cells.items():
        if name not in chance:
            continue
        n = sum(c.values())
        f, b = corrected(c[(True, False)] / n, c[(False, True)] / n, c[(False, False)] / n, chance[name])
        out[f"{name}/forgotten_adj"], out[f"{name}/newly_solved_adj"] = f, b
    return out | group_means(out, groups, ("forgotten_adj", "newly_solved_adj"))


def verified_pass1(records: list[dict], groups: dict[str, list[str]]) -> dict[str, float]:
    """``<set>/verified``: the share of a set's items whose first answer is right with sound steps,
    for sets whose records carry step classes; per group the mean over its sets."""
    hits: dict[str, list[bool]] = {}
    for r in records:
        if "steps" in r:
            hits.setdefault(r["set"], []).append(bool(r["right"]) and r["steps"][0] == SOUND)
    out = {f"{name}/verified": sum(h) / len(h) for name, h in hits.items()}
    return out | group_means(out, groups, ("verified",))


def group_means(per_set: dict[str, float], groups: dict[str, list[str]], measures) -> dict[str, float]:
    """``<group>/<measure>``: the mean of ``<set>/<measure>`` over the group's sets that have it."""
    out = {}
    for group, sets in groups.items():
        for m in measures:
            values = [per_set[f"{s}/{m}"] for s in sets if f"{s}/{m}" in per_set]
            if values:
                out[f"{group}/{m}"] = sum(values) / len(values)
    return out
