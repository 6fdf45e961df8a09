"""Step-level verification of testbed solutions: was a right answer reasoned out, or reached by luck?

Pass@1 only sees the final answer. Every testbed item knows its arithmetic, so a solution can also be
read for what it derives. The class of a solution depends on the problem and the text only, never on
how the item's gold solution was rendered:

- ``wrong``    exactly when the grader (``imm.grading.checks.grade``) says wrong.
- ``sound``    every equation written is arithmetically true, every number an equation uses is a
               quantity of the problem or the result of an earlier equation, and the equation that
               gives the answer derives it with exactly the operations the problem needs, in any order,
               grouping or equivalent form: commuted operands ("5 + 23"), changes netted before they
               are applied ("5 - 3 = 2. 23 + 2 = 25"), one equation for several steps ("23 + 5 - 3 =
               25"), a product as repeated addition ("4 + 4 + 4 = 12"), chained equalities ("3 * 4 =
               12 - 2 = 10"); numbering, labels and sentences around the equations do not matter.
- ``shortcut`` the right answer, every equation true and every number accounted for, but some
               operation the problem needs is not written: the bare answer, a value used without its
               equation (the product, a net change or a partial result worked out in the head), the
               last step left out, or operations skipped because they cancel.
- ``flawed``   the right answer anyway, through an equation that is false, a number from nowhere (not
               a quantity, not an earlier result, not a value the problem's operations produce), or an
               equation that is no part of the problem's arithmetic (an operation it does not have).

Text after the final answer statement (a new exemplar, trailing words) is not read; an equation in
the answer line is. ``form`` names a solution's surface style apart from its class (``FORMS``), and
``procedure`` whether its operations are the problem's with the arithmetic aside (``imm.analysis.mechanism``).

    check_steps(sample_text, item)   -> "sound" | "shortcut" | "flawed" | "wrong"
    step_shares(texts, items)        -> {"sound": .., "shortcut": .., "flawed": .., "n_correct": ..}

Hand labels and this checker's agreement with them: ``python -m imm.data.world.agreement``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from imm.data.world.arithmetic import Arithmetic, Term, arithmetic
from imm.data.world.equations import Equation, equations, reasoning_text
from imm.grading.checks import grade

CLASSES = ("sound", "shortcut", "flawed", "wrong")
# Surface styles, one per solution: the gold "steps" route, and each alternative form.
FORMS = ("canonical", "commuted", "net", "merged", "chained", "repeated_addition", "direct", "other")
MAX_READINGS = 512  # readings of one equation's numbers tried (a bound, never reached on the testbed)

Expansion = tuple[Term, ...]  # a multiset of signed products of the problem's numbers, sorted


@dataclass(frozen=True)
class Reading:
    """One way to read an equation's left side: what it expands to and whether it leans on a value
    the text never derives."""

    expansion: Expansion
    implicit: bool
    fit: str  # "full": the whole problem; "part": some of its operations


def _negate(e: Expansion) -> Expansion:
    return tuple(sorted((-s, f) for s, f in e))


def fit(e: Expansion, arith: Arithmetic) -> str | None:
    """"full" when ``e`` is the problem's arithmetic, "part" when it (or its negation, a net loss) is
    part of it, else None. A product may be written as repeated addition of either factor."""
    best = _fit_signed(e, arith)
    if best != "full" and _fit_signed(_negate(e), arith) == "part":
        best = "part"
    return best


def _fit_signed(e: Expansion, arith: Arithmetic) -> str | None:
    wanted = list(arith.terms())
    product = next((t for t in wanted if len(t[1]) == 2), None)
    covers = [((), False)]  # (terms of e standing for the product, product fully covered)
    if product:
        wanted.remove(product)
        a, b = product[1]
        covers = [((), False), ((product,), True)]
        for factor, times in ((a, b), (b, a)):
            covers += [(((1, (factor,)),) * c, c == times) for c in range(1, times + 1)]
    best = None
    for used, whole in covers:
        rest = list(e)
        try:
            for t in used:
                rest.remove(t)
        except ValueError:
            continue
        left = list(wanted)
        try:
            for t in rest:
                left.remove(t)
        except ValueError:
            continue
        if not left and (whole or not product):
            return "full"
        best = "part"
    return best


def _implicit_values(arith: Arithmetic) -> dict[int, list[Expansion]]:
    """Values the problem's operations produce that a text may use without deriving them: the product
    and every sum of two or more of its terms (a net change, a partial result), either sign."""
    terms = arith.terms()
    out: dict[int, list[Expansion]] = {}
    for size in range(1, len(terms) + 1):
        for sub in itertools.combinations(terms, size):
            if size == 1 and len(sub[0][1]) == 1:
                continue  # a single quantity is read as a quantity
            value = sum(s * _prod(f) for s, f in sub)
            e = tuple(sorted(sub))
            out.setdefault(value, []).append(e)
            out.setdefault(-value, []).append(_negate(e))
    return out


def _prod(factors: tuple[int, ...]) -> int:
    out = 1
    for f in factors:
        out *= f
    return out


def _readings(eq: Equation, earlier: list[tuple[Equation, set[Reading]]], arith: Arithmetic,
              implicit: dict[int, list[Expansion]]) -> set[Reading]:
    """Every reading of ``eq`` whose expansion is part (or all) of the problem's arithmetic."""
    quantities = arith.quantities()
    options = []
    for v in eq.numbers:
        opts = [(((1, (v,)),), False)] if v in quantities else []
        for prev, readings in earlier:
            if prev.result == v:
                opts += [(r.expansion, r.implicit) for r in readings]
        opts += [(e, True) for e in implicit.get(v, [])] if v == int(v) else []
        if not opts:
            return set()  # a number from nowhere
        options.append(list(dict.fromkeys(opts)))
    out = set()
    for combo in itertools.islice(itertools.product(*options), MAX_READINGS):
        e = eq.expand([c[0] for c in combo])
        f = fit(e, arith)
        if f:
            out.add(Reading(e, any(c[1] for c in combo), f))
    return out


def classify(eqs: list[Equation], answer: int, arith: Arithmetic, arithmetic_checked: bool = True) -> str:
    """The class of a right answer ``answer`` reached through ``eqs`` on a problem of ``arith``.

    With ``arithmetic_checked=False`` false equations are read as written (for ``procedure``)."""
    if not eqs:
        return "shortcut"
    if arithmetic_checked and not all(e.holds for e in eqs):
        return "flawed"
    implicit = _implicit_values(arith)
    done: list[tuple[Equation, set[Reading]]] = []
    for eq in eqs:
        readings = _readings(eq, done, arith, implicit)
        if not readings:
            return "flawed"
        done.append((eq, readings))
    final = [r for eq, r in done if eq.result == answer]
    if final and any(r.fit == "full" and not r.implicit for r in final[-1]):
        return "sound"
    return "shortcut"


def check_steps(text: str, item: dict) -> str:
    """Classify a solution of ``item``: "sound", "shortcut", "flawed" or "wrong"."""
    if not grade(text, item):
        return "wrong"
    eqs = equations(reasoning_text(text))
    answer = int(item["answer"])
    return min((classify(eqs, answer, a) for a in arithmetic(item)), key=CLASSES.index)


def procedure(text: str, item: dict) -> bool:
    """Whether the text's last equation applies the problem's operations to its numbers, every number
    an equation uses being a quantity or an earlier (written) result, arithmetic aside."""
    eqs = equations(reasoning_text(text))
    if not eqs:
        return False
    return any(classify(eqs, eqs[-1].result, a, arithmetic_checked=False) == "sound" for a in arithmetic(item))


def form(text: str, item: dict) -> str:
    """The surface style of a solution (``FORMS``), whatever its arithmetic: ``canonical`` is the
    gold "steps" route (one operation an equation, in the problem's order, each from the last result);
    ``commuted`` the problem's operations one an equation in another order; ``other`` a route that is
    not the problem's (a step missing, an operation it does not have)."""
    eqs = equations(reasoning_text(text))
    arith = arithmetic(item)[0]
    if not eqs:
        return "direct"
    if any(e.chained for e in eqs):
        return "chained"
    if _canonical(eqs, arith):
        return "canonical"
    if arith.product() and _repeats_a_factor(eqs, arith.product()):
        return "repeated_addition"
    if any(e.n_ops > 1 for e in eqs):
        return "merged"
    values = {x for _, x in arith.changes}
    if any(set(e.numbers) <= values and e.numbers[0] not in arith.start for e in eqs):
        return "net"
    return "commuted" if procedure(text, item) else "other"


def _canonical(eqs: list[Equation], arith: Arithmetic) -> bool:
    atoms = arith.atoms()
    if len(eqs) != len(atoms) or any(e.n_ops != 1 for e in eqs):
        return False
    value = arith.start[0]
    for eq, (op, x) in zip(eqs, atoms):
        if eq.numbers != (value, x) or eq.first_op != op:
            return False
        value = eq.result
    return True


def _repeats_a_factor(eqs: list[Equation], factors: tuple[int, int]) -> bool:
    return any(e.first_op == "+" and e.numbers.count(f) >= 2 for e in eqs for f in factors)


def step_shares(texts: list[str], items: list[dict]) -> dict[str, float]:
    """Shares of sound, shortcut and flawed solutions among the right ones (``texts[i]`` solves
    ``items[i]``), and how many were right; the shares are 0 when none was."""
    if len(texts) != len(items):
        raise ValueError(f"{len(texts)} texts for {len(items)} items")
    counts = dict.fromkeys(CLASSES, 0)
    for text, item in zip(texts, items):
        counts[check_steps(text, item)] += 1
    n = len(texts) - counts["wrong"]
    return {c: (counts[c] / n if n else 0.0) for c in CLASSES[:3]} | {"n_correct": n}


__all__ = ["CLASSES", "FORMS", "Arithmetic", "arithmetic", "check_steps", "classify", "equations", "fit",
           "form", "procedure", "step_shares"]
