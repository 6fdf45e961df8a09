"""A testbed problem's arithmetic, read from its question: the start (a number, or the two factors of
a product) and the signed changes, each from the verb that carries it.

    arithmetic(item) -> [Arithmetic(start=(23,), changes=(("+", 5), ("-", 3)))]

Only the question and the answer are read, never the gold solution, so a solution's class cannot
depend on how the gold was rendered. The verbs are the world's (``imm.data.world.problems``); a
question in other words falls back to every sign reading of its numbers that reaches the answer.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

Term = tuple[int, tuple[int, ...]]  # (sign, factors): +23 is (1, (23,)), 3 * 4 is (1, (3, 4))

NUMBER_RE = re.compile(r"\d+")
PRODUCT_RE = re.compile(r"(\d+) (?:bags|boxes) (?:of \w+ )?with (\d+) \w+ in each")
GAIN = r"buys|finds|gets|puts in|got"
LOSS = r"gives away|loses|eats|takes out|sold"
CHANGE_RE = re.compile(rf"\b(?:(?P<gain>{GAIN})|(?P<loss>{LOSS})) (?P<x>\d+)\b"
                       r"|\b(?P<y>\d+) \w+ were (?P<how>added|used)\b")


@dataclass(frozen=True)
class Arithmetic:
    """A problem's arithmetic: a start (a number, or two factors) and its changes in order."""

    start: tuple[int, ...]
    changes: tuple[tuple[str, int], ...]  # (sign, value), sign in "+-"

    def product(self) -> tuple[int, int] | None:
        return (self.start[0], self.start[1]) if len(self.start) == 2 else None

    def atoms(self) -> list[tuple[str, int]]:
        """The problem's operations, one a step: (``*``, b) for a product, then each change."""
        return ([("*", self.start[1])] if self.product() else []) + list(self.changes)

    def terms(self) -> tuple[Term, ...]:
        """The answer as a sum of signed terms: the start (or the product), then each change."""
        start = (1, tuple(sorted(self.start)))
        return (start, *((1 if s == "+" else -1, (x,)) for s, x in self.changes))

    def quantities(self) -> set[int]:
        return set(self.start) | {x for _, x in self.changes}

    @property
    def answer(self) -> int:
        v = self.start[0] * self.start[1] if self.product() else self.start[0]
        for sign, x in self.changes:
            v = v + x if sign == "+" else v - x
        return v


def arithmetic(item: dict) -> list[Arithmetic]:
    """The readings of an item's arithmetic that reach its answer (one for every world question).

    Raises ValueError when no reading of the question reaches the answer."""
    question, answer = item["question"], int(item["answer"])
    nums = [int(n) for n in NUMBER_RE.findall(question)]
    m = PRODUCT_RE.search(question)
    start = (int(m[1]), int(m[2])) if m else tuple(nums[:1])
    rest = question[m.end():] if m else question[NUMBER_RE.search(question).end():] if nums else ""
    changes = tuple(("+", int(c["x"] or c["y"])) if c["gain"] or c["how"] == "added"
                    else ("-", int(c["x"] or c["y"])) for c in CHANGE_RE.finditer(rest))
    read = Arithmetic(start, changes)
    if len(start) + len(changes) == len(nums) and read.answer == answer:
        return [read]
    values = nums[len(start):]
    found = [a for signs in itertools.product("+-", repeat=len(values))
             if (a := Arithmetic(start, tuple(zip(signs, values)))).answer == answer]
    if not found:
        raise ValueError(f"cannot read the arithmetic of {question!r}")
    return found
