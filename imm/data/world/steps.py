"""Step-level verification of testbed solutions: was a correct answer reasoned out, or reached by luck?

Pass@1 only sees the final answer. Every testbed item knows its arithmetic, so a sampled solution can
also be read step by step and put in one of four classes:

- ``sound``    every equation's arithmetic is right and each one is one of the problem's operations,
               in the problem's order (a product first where there is one): the gold styles "steps",
               "labeled" and "story". The world's "net" style (combine the gain and the loss first,
               then apply the change) is a full route too and counts as sound.
- ``shortcut`` the right answer without the steps: the bare answer, or right equations that each
               apply a run of the problem's operations at once ("23 + 5 - 3 = 25", "3 * 4 + 2 = 14").
- ``flawed``   the right answer through a wrong, missing or irrelevant step: arithmetic that does not
               hold, a number the problem does not have, a wrong sign, a step left out or steps out
               of order ("11 + 5 = 15. 15 - 3 = 13. The answer is 13." when the gold is 13).
- ``wrong``    no final answer, or not the gold one.

    check_steps(sample_text, item)   -> "sound" | "shortcut" | "flawed" | "wrong"
    step_shares(texts, items)        -> {"sound": .., "shortcut": .., "flawed": .., "n_correct": ..}

The arithmetic is read from what an item records (``question``, ``answer``, ``solution``), not from
the generator: the question's numbers in order (the start, or the two factors of a product, then one
number per change) and the signs that make its gold solution sound and reach its answer. Pure
functions, no model.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from imm.grading.answers import ANSWER_RE, cut_at_stop, final_answer

CLASSES = ("sound", "shortcut", "flawed", "wrong")
NUMBER_RE = re.compile(r"\d+")
# "23 + 5 = 28", "3 * 4 + 2 = 14", "5 - 3 = 2": numbers joined by + - * (x and × read as *).
EQUATION_RE = re.compile(r"(\d+(?:\s*[-+*x×]\s*\d+)+)\s*=\s*(-?\d+)")
TOKEN_RE = re.compile(r"\d+|[-+*x×]")


@dataclass(frozen=True)
class Equation:
    """One written equation: its left side as numbers and operators, and the result it claims."""

    terms: tuple[int, ...]
    ops: tuple[str, ...]  # len(terms) - 1 operators in "+-*"
    result: int

    @property
    def holds(self) -> bool:
        """Whether the arithmetic is right (products before sums, as written)."""
        total, prod, sign = 0, self.terms[0], 1
        for op, t in zip(self.ops, self.terms[1:]):
            if op == "*":
                prod *= t
            else:
                total, prod, sign = total + sign * prod, t, (1 if op == "+" else -1)
        return total + sign * prod == self.result


@dataclass(frozen=True)
class Arithmetic:
    """A problem's arithmetic: a start (a number, or two factors) and its changes in order."""

    start: tuple[int, ...]
    changes: tuple[tuple[str, int], ...]  # (sign, value), sign in "+-"

    def atoms(self) -> list[tuple[str, int]]:
        """The problem's operations, one a step: (``*``, b) for a product, then each change."""
        return ([("*", self.start[1])] if len(self.start) == 2 else []) + list(self.changes)

    @property
    def answer(self) -> int:
        v = self.start[0] * self.start[1] if len(self.start) == 2 else self.start[0]
        for sign, x in self.changes:
            v = v + x if sign == "+" else v - x
        return v


def equations(text: str) -> list[Equation]:
    """The equations written in ``text``, in order."""
    out = []
    for lhs, rhs in EQUATION_RE.findall(text):
        tokens = TOKEN_RE.findall(lhs)
        ops = tuple("*" if t in "x×" else t for t in tokens[1::2])
        out.append(Equation(tuple(int(t) for t in tokens[0::2]), ops, int(rhs)))
    return out


def answer_and_reasoning(text: str) -> tuple[int | None, str]:
    """The final answer as an integer (read by the loop's own extractor, ``final_answer``; None when
    there is none or it is no integer) and the reasoning written before the last answer statement."""
    text = cut_at_stop(text)
    answer = final_answer(text)
    found = list(ANSWER_RE.finditer(text))
    reasoning = text[:found[-1].start()] if found else text
    value = answer.replace(",", "").strip("$ ") if answer else ""
    return (int(value) if re.fullmatch(r"-?\d+", value) else None), reasoning


def _coarsens(eqs: list[Equation], arith: Arithmetic) -> bool:
    """Whether ``eqs`` apply the problem's operations in order, each equation a run of them,
    each starting from the start (or the product's first factor) or the previous result."""
    atoms, i, value = arith.atoms(), 0, arith.start[0]
    for eq in eqs:
        terms = eq.terms
        if i == 0 and len(arith.start) == 2 and eq.ops[0] == "*" and terms[:2] == arith.start[::-1]:
            terms = arith.start + terms[2:]  # "4 * 3" for "3 * 4" is the same product
        run = list(zip(eq.ops, terms[1:]))
        if terms[0] != value or not eq.holds or run != atoms[i:i + len(run)]:
            return False
        i, value = i + len(run), eq.result
    return i == len(atoms) and value == arith.answer


def _net_route(eqs: list[Equation], arith: Arithmetic) -> bool:
    """The "net" style: "g - l = d. v + d = answer" (or "l - g = d. v - d = answer")."""
    if len(arith.changes) != 2 or {s for s, _ in arith.changes} != {"+", "-"}:
        return False
    product = len(arith.start) == 2
    if len(eqs) != 2 + product or (product and not _coarsens(eqs[:1], Arithmetic(arith.start, ()))):
        return False
    g = next(x for s, x in arith.changes if s == "+")
    lost = next(x for s, x in arith.changes if s == "-")
    net, apply = eqs[-2:]
    v = Arithmetic(arith.start, ()).answer
    sign = "+" if g >= lost else "-"
    first, second = (g, lost) if g >= lost else (lost, g)
    return (net.terms == (first, second) and net.ops == ("-",) and net.holds
            and apply.terms == (v, net.result) and apply.ops == (sign,) and apply.holds)


def _classify(eqs: list[Equation], arith: Arithmetic) -> str:
    if not eqs:
        return "shortcut"  # the bare answer
    if _coarsens(eqs, arith):
        return "sound" if all(len(e.ops) == 1 for e in eqs) else "shortcut"
    return "sound" if _net_route(eqs, arith) else "flawed"


def arithmetic(item: dict) -> list[Arithmetic]:
    """The arithmetic an item's gold solution reasons through (several if the item cannot tell
    them apart, e.g. "puts in 7 and takes out 7" in the net style, where the order is not written).

    Raises ValueError when no reading of the question makes the gold solution sound.
    """
    nums = [int(n) for n in NUMBER_RE.findall(item["question"])]
    gold_eqs = equations(answer_and_reasoning(item["solution"])[1])
    answer = int(item["answer"])
    product = bool(gold_eqs) and gold_eqs[0].ops == ("*",)
    start, values = (tuple(nums[:2]), nums[2:]) if product else (tuple(nums[:1]), nums[1:])
    found = []
    for signs in itertools.product("+-", repeat=len(values)):
        arith = Arithmetic(start, tuple(zip(signs, values)))
        if arith.answer == answer and _classify(gold_eqs, arith) == "sound":
            found.append(arith)
    if not found:
        raise ValueError(f"cannot read the arithmetic of {item['question']!r} from its gold solution")
    return found


def check_steps(text: str, item: dict) -> str:
    """Classify a sampled solution of ``item``: "sound", "shortcut", "flawed" or "wrong"."""
    answer, reasoning = answer_and_reasoning(text)
    if answer is None or answer != int(item["answer"]):
        return "wrong"
    eqs = equations(reasoning)
    return min((_classify(eqs, a) for a in arithmetic(item)), key=CLASSES.index)


def step_shares(texts: list[str], items: list[dict]) -> dict[str, float]:
    """Shares of sound, shortcut and flawed solutions among the correct ones (``texts[i]`` solves
    ``items[i]``), and how many were correct; the shares are 0 when none was."""
    if len(texts) != len(items):
        raise ValueError(f"{len(texts)} texts for {len(items)} items")
    counts = dict.fromkeys(CLASSES, 0)
    for text, item in zip(texts, items):
        counts[check_steps(text, item)] += 1
    n = len(texts) - counts["wrong"]
    return {c: (counts[c] / n if n else 0.0) for c in CLASSES[:3]} | {"n_correct": n}
