"""Keeping the correct samples: extract each sample's final answer and compare it with the gold one."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from imm.grading.answers import final_answer
from imm.grading.checks import grade_groups

log = logging.getLogger(__name__)


@dataclass
class Yield:
    sampled: int  # samples drawn
    kept: int  # samples whose final answer equals the gold answer
    questions: int  # questions asked
    covered: int  # questions with at least one kept sample
    no_answer: int = 0  # samples that state no readable final answer (format drift, cut-off text)
    timeouts: int = 0  # samples whose check ran out of time (graded wrong)

    @property
    def rate(self) -> float:
        return self.kept / self.sampled if self.sampled else 0.0

    @property
    def coverage(self) -> float:
        return self.covered / self.questions if self.questions else 0.0


def keep_correct(items: list[dict], samples: list[list[dict]], iteration: int,
                 exact: bool = False) -> tuple[list[dict], Yield]:
    """The correct samples as training rows {question, answer, response, temperature, iteration}.

    ``exact``: correct only when the stated final answer is the gold answer's string, character for
    character (the paper's released code); otherwise equal by value (imm.grading.checks)."""
    kept: list[dict] = []
    covered = 0
    verdicts, report = grade_groups([[s["text"] for s in group] for group in samples], items)
    if exact:
        verdicts = [[final_answer(s["text"]) == str(item["answer"]).strip() for s in group]
                    for item, group in zip(items, samples, strict=True)]
    for item, group, ok in zip(items, samples, verdicts, strict=True):
        good = [s for s, right in zip(group, ok) if right]
        covered += bool(good)
        kept += [{"question": item["question"], "answer": item["answer"], "response": s["text"],
                  "temperature": s["temperature"], "iteration": iteration}
                 | ({"tokens": s["tokens"]} if "tokens" in s else {}) for s in good]
    sampled = sum(len(g) for g in samples)
    y = Yield(sampled, len(kept), len(items), covered, report.no_answer, report.timeouts)
    log.info("filter it%d: kept %d/%d; %d samples with no final answer, %d checks timed out",
             iteration + 1, y.kept, y.sampled, y.no_answer, y.timeouts)
    return kept, y
