"""Keeping the correct samples: extract each sample's final answer and compare it with the gold one."""

from __future__ import annotations

from dataclasses import dataclass

from imm.answers import extract_answer, is_correct


@dataclass
class Yield:
    sampled: int  # samples drawn
    kept: int  # samples whose final answer equals the gold answer
    questions: int  # questions asked
    covered: int  # questions with at least one kept sample

    @property
    def rate(self) -> float:
        return self.kept / self.sampled if self.sampled else 0.0

    @property
    def coverage(self) -> float:
        return self.covered / self.questions if self.questions else 0.0


def keep_correct(items: list[dict], samples: list[list[dict]], iteration: int) -> tuple[list[dict], Yield]:
    """The correct samples as training rows {question, answer, response, temperature, iteration}."""
    kept: list[dict] = []
    covered = 0
    for item, group in zip(items, samples, strict=True):
        good = [s for s in group if is_correct(extract_answer(s["text"]), item["answer"])]
        covered += bool(good)
        kept += [{"question": item["question"], "answer": item["answer"], "response": s["text"],
                  "temperature": s["temperature"], "iteration": iteration} for s in good]
    sampled = sum(len(g) for g in samples)
    return kept, Yield(sampled, len(kept), len(items), covered)
