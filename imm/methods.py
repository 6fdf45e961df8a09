"""The self-improvement methods: which samples each iteration trains on, and whether it merges.

- vanilla: this iteration's kept samples, fine-tuning the previous SFT model further.
- star: as vanilla, but each iteration fine-tunes the *base* model afresh (STaR's restart); the
  previous SFT model still samples the iteration's training data.
- mixture: this iteration's samples plus ``history_share`` of the earlier iterations' kept samples.
- accumulation: all kept samples of all iterations so far.
- imm: as vanilla, then DARE-merge with the base model (Eq. 6).
- iimm: as imm, with each layer's update scaled by its importance (Eq. 7).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

METHODS = {
    # name: (training data, merges, importance-scaled merge, SFT restarts from the base model)
    "vanilla": ("current", False, False, False),
    "star": ("current", False, False, True),
    "mixture": ("mixture", False, False, False),
    "accumulation": ("all", False, False, False),
    "imm": ("current", True, False, False),
    "iimm": ("current", True, True, False),
}


@dataclass
class MethodConfig:
    name: str = "imm"  # vanilla | star | mixture | accumulation | imm | iimm
    history_share: float = 0.5  # mixture only: share of earlier iterations' kept samples added, [0, 1]
    keep: str = "equivalent"  # a sample is correct when its answer equals the gold: equivalent (by value) | exact (as strings)

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"method.name={self.name!r} is not one of {sorted(METHODS)}")
        if self.keep not in ("equivalent", "exact"):
            raise ValueError(f"method.keep={self.keep!r} is not one of ('equivalent', 'exact')")
        if not 0.0 <= self.history_share <= 1.0:
            raise ValueError(f"method.history_share={self.history_share} must lie in [0, 1]")

    @property
    def merges(self) -> bool:
        return METHODS[self.name][1]

    @property
    def importance_scaled(self) -> bool:
        return METHODS[self.name][2]

    @property
    def restarts(self) -> bool:
        """Whether each iteration's SFT starts from the base model rather than the model that sampled."""
        return METHODS[self.name][3]


def build_trainset(cfg: MethodConfig, history: list[list[dict]], seed: int) -> list[dict]:
    """Training rows for the newest iteration, given every iteration's kept samples (oldest first)."""
    current, earlier = history[-1], [row for rows in history[:-1] for row in rows]
    data = METHODS[cfg.name][0]
    if data == "current":
        return list(current)
    if data == "all":
        return earlier + current
    n = int(round(cfg.history_share * len(earlier)))
    return random.Random(seed * 7919 + len(history)).sample(earlier, n) + current


def gold_fallback(items: list[dict], kept: list[dict], iteration: int) -> list[dict]:
    """For rehearsals only (``run.rehearsal_gold``): a training row with the gold solution for every
    question that kept no sample. A random-weight model answers almost nothing correctly, so without
    these rows a rehearsal would skip SFT and merging, the stages it exists to exercise."""
    covered = {row["question"] for row in kept}
    rows = []
    for item in items:
        if item["question"] in covered or not item.get("solution"):
            continue
        rationale = re.sub(r"<<[^>]*>>", "", item["solution"])  # GSM8K's calculator annotations
        rationale = re.sub(r"\n?####.*$", "", rationale, flags=re.S).strip()  # GSM8K's final "#### 18"
        rows.append({"question": item["question"], "answer": item["answer"], "gold": True, "temperature": 0.0,
                     "response": f" {rationale}\nThe answer is {item['answer']}.", "iteration": iteration})
    return rows
