"""Seeded procedural arithmetic word problems: the testbed's stand-in for GSM8K and the OOD sets.

One in-domain family (``ID_FAMILY``) and several out-of-domain families (``OOD_FAMILIES``):

- ``id_addsub``     two-step add/subtract stories, start 10-39, changes 1-9 (the "GSM8K" of the world).
- ``ood_wording``   the same two-step skill, other wording (boxes, shops, classes) and bigger changes
                    (5-19), so a one-step shortcut often fails.
- ``ood_mult``      one multiplication step (bags x items per bag), then one add/subtract step.
- ``ood_multistep`` three or four add/subtract steps with ID-sized numbers.

A second world (``WORLDS["testbed_v2"]``) trains on ``id_addsub_bal`` instead: the ID stories of
``id_addsub`` where 40 % are *balanced* (the loss equals the gain, so the answer is the start). On
those, copying the start is a shortcut that pays off without any arithmetic; it never pays on the
OOD families, which have no such items. The OOD families are the same three.

Every item is ``{"question", "answer", "solution", "family"}``; ``solution`` is a gold worked
solution in one of several full step-by-step styles (chosen by the seed) ending exactly with
``The answer is N.``

Faithfulness to the paper's mechanism (SPEC "Making the testbed faithful"): a problem can be
rendered in several *full* styles (``FULL_STYLES``: equations, labelled steps, a story, a
net-change route) so that sampled correct solutions are diverse, and in *shortcut* styles
(``SHORTCUT_STYLES``: one merged equation, or the bare answer) that the base model sees only for
the ID family in pretraining. Shortcuts are reachable on ID numbers (changes under 10) but fail on
the OOD families (bigger numbers, a product, more steps), which is how shallow self-improvement on
ID can hurt OOD.

Splits are disjoint by a hash of the question text: ``test`` (20 % of question space), ``train``
(30 %) and ``pretrain`` (50 %) can never share a question, whatever the seeds. ``validation`` is
carved from the training questions' part of question space (its own draw, so it never touches the
test part): choices are made on it, the test split is kept for the tables.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Callable

PROMPT_TEMPLATE = "Question: {question}\nAnswer: Let's think step by step."

ID_FAMILY = "id_addsub"
OOD_FAMILIES = ("ood_wording", "ood_mult", "ood_multistep")
SPLITS = ("train", "test", "pretrain", "validation")  # validation: drawn from the train part of question space

FULL_STYLES = ("steps", "labeled", "story", "net")
SHORTCUT_STYLES = ("merged", "direct")

NAMES = (
    ("Tom", "he"), ("Sam", "he"), ("Ben", "he"), ("Max", "he"), ("Leo", "he"), ("Jack", "he"),
    ("Amy", "she"), ("Lily", "she"), ("Mia", "she"), ("Zoe", "she"), ("Emma", "she"), ("Anna", "she"),
)
OBJECTS = ("apples", "pens", "books", "coins", "cards", "stickers", "marbles", "cookies", "shells",
           "stamps")

# ID verbs (also used by the multi-step family); the wording family uses its own.
GAIN_VERBS = ("buys {x} more", "finds {x} more", "gets {x} more")
LOSS_VERBS = ("gives away {x}", "loses {x}", "eats {x}")


def format_prompt(question: str) -> str:
    """The model's prompt for a question (the training text is prompt + " " + solution + EOS)."""
    return PROMPT_TEMPLATE.format(question=question)


@dataclass
class Problem:
    """A generated problem: the question and the arithmetic it needs, for rendering solutions."""

    question: str
    subject: str            # who/what holds the objects in the story ("Tom", "The box")
    pronoun: str            # "he", "she", "it", "they"
    obj: str
    start: tuple            # (a,) or (a, b) meaning a * b
    ops: list = field(default_factory=list)  # [(sign, value)], sign in "+-"

    @property
    def start_value(self) -> int:
        return self.start[0] * self.start[1] if len(self.start) == 2 else self.start[0]

    @property
    def answer(self) -> int:
        v = self.start_value
        for sign, x in self.ops:
            v = v + x if sign == "+" else v - x
        return v

    def chain(self) -> list[tuple[int, str, int, int]]:
        """The step-by-step equations as (left, sign, right, result)."""
        out, v = [], self.start_value
        for sign, x in self.ops:
            r = v + x if sign == "+" else v - x
            out.append((v, sign, x, r))
            v = r
        return out


def _verb_has(pronoun: str) -> str:
    return "have" if pronoun == "they" else "has"


def render(p: Problem, style: str) -> str:
    """A worked solution of ``p`` in ``style`` (full or shortcut), ending with "The answer is N."."""
    ans = p.answer
    parts: list[str] = []
    prod = f"{p.start[0]} * {p.start[1]} = {p.start_value}." if len(p.start) == 2 else None
    has = _verb_has(p.pronoun)
    if style == "steps":
        if prod:
            parts.append(prod)
        parts += [f"{a} {s} {b} = {r}." for a, s, b, r in p.chain()]
    elif style == "labeled":
        eqs = ([prod] if prod else []) + [f"{a} {s} {b} = {r}." for a, s, b, r in p.chain()]
        parts += [f"Step {i + 1}: {e}" for i, e in enumerate(eqs)]
    elif style == "story":
        if prod:
            parts.append(f"{p.subject} gets {prod[:-1]} {p.obj}.")
        else:
            parts.append(f"{p.subject} starts with {p.start[0]} {p.obj}.")
        for a, s, b, r in p.chain():
            parts.append(f"Then {p.pronoun} {has} {a} {s} {b} = {r} {p.obj}.")
    elif style == "net":
        if len(p.ops) != 2 or {s for s, _ in p.ops} != {"+", "-"}:
            return render(p, "steps")
        g = next(x for s, x in p.ops if s == "+")
        l = next(x for s, x in p.ops if s == "-")
        if prod:
            parts.append(prod)
        v = p.start_value
        if g >= l:
            parts.append(f"{p.subject} gains {g} and loses {l}, so the change is {g} - {l} = {g - l}.")
            parts.append(f"{v} + {g - l} = {ans}.")
        else:
            parts.append(f"{p.subject} gains {g} and loses {l}, so the loss is {l} - {g} = {l - g}.")
            parts.append(f"{v} - {l - g} = {ans}.")
    elif style == "merged":
        lhs = f"{p.start[0]} * {p.start[1]}" if prod else f"{p.start[0]}"
        lhs += "".join(f" {s} {x}" for s, x in p.ops)
        parts.append(f"{lhs} = {ans}.")
    elif style == "direct":
        pass
    else:
        raise ValueError(f"unknown style {style!r}")
    parts.append(f"The answer is {ans}.")
    return " ".join(parts)


# ----------------------------------------------------------------------------- family generators

def _person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(NAMES)


def _two_ops(rng: random.Random, start: int, lo: int, hi: int) -> list[tuple[str, int]]:
    """One gain and one loss in random order, never going below zero."""
    while True:
        g, l = rng.randint(lo, hi), rng.randint(lo, hi)
        ops = [("+", g), ("-", l)] if rng.random() < 0.5 else [("-", l), ("+", g)]
        v, ok = start, True
        for s, x in ops:
            v = v + x if s == "+" else v - x
            ok &= v >= 0
        if ok:
            return ops


def _verb(sign: str, x: int, rng: random.Random) -> str:
    return rng.choice(GAIN_VERBS if sign == "+" else LOSS_VERBS).format(x=x)


def gen_id_addsub(rng: random.Random, balanced_share: float = 0.0) -> Problem:
    name, pron = _person(rng)
    obj = rng.choice(OBJECTS)
    a = rng.randint(10, 39)
    ops = _two_ops(rng, a, 1, 9)
    if balanced_share and rng.random() < balanced_share:  # no draw at 0: the shipped world's stream
        g = next(x for s, x in ops if s == "+")
        ops = [(s, g) for s, _ in ops]  # start >= 10 > g, so the balanced story never goes below 0
    v1, v2 = (_verb(s, x, rng) for s, x in ops)
    if rng.random() < 0.5:
        q = (f"{name} has {a} {obj}. {pron.capitalize()} {v1} and then {v2}. "
             f"How many {obj} does {pron} have now?")
    else:
        q = f"{name} has {a} {obj}. First {pron} {v1}. Then {pron} {v2}. How many {obj} are left?"
    return Problem(q, name, pron, obj, (a,), ops)


BALANCED_SHARE = 0.4  # id_addsub_bal: share of stories drawn balanced (loss = gain)


def gen_id_addsub_bal(rng: random.Random) -> Problem:
    """``id_addsub`` with a spurious regularity: ``BALANCED_SHARE`` of the stories give and take
    the same number, so their answer is the start (the shortcut "copy the start" pays on them)."""
    return gen_id_addsub(rng, BALANCED_SHARE)


def gen_ood_wording(rng: random.Random) -> Problem:
    obj = rng.choice(OBJECTS)
    a = rng.randint(20, 59)
    ops = _two_ops(rng, a, 5, 19)
    g = next(x for s, x in ops if s == "+")
    l = next(x for s, x in ops if s == "-")
    gain_first = ops[0][0] == "+"
    kind = rng.randrange(3)
    if kind == 0:
        name, _ = _person(rng)
        acts = [f"puts in {g}", f"takes out {l}"]
        if not gain_first:
            acts.reverse()
        q = (f"There are {a} {obj} in a box. {name} {acts[0]} and {acts[1]}. "
             f"How many {obj} are in the box now?")
        return Problem(q, "The box", "it", obj, (a,), ops)
    if kind == 1:
        acts = [f"got {g} new ones", f"sold {l}"]
        if not gain_first:
            acts.reverse()
        q = f"A shop had {a} {obj}. It {acts[0]} and {acts[1]}. How many {obj} does the shop have?"
        return Problem(q, "The shop", "it", obj, (a,), ops)
    acts = [f"{g} {obj} were added", f"{l} {obj} were used"]
    if not gain_first:
        acts.reverse()
    q = (f"A class had {a} {obj}. On Monday {acts[0]}. On Tuesday {acts[1]}. "
         f"What is the number of {obj} in the class?")
    return Problem(q, "The class", "it", obj, (a,), ops)


def gen_ood_mult(rng: random.Random) -> Problem:
    name, pron = _person(rng)
    obj = rng.choice(OBJECTS)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    x = rng.randint(1, 9)
    sign = "-" if (rng.random() < 0.5 and a * b - x >= 0) else "+"
    P = pron.capitalize()
    if rng.random() < 0.5:
        q = (f"{name} buys {a} bags of {obj} with {b} {obj} in each bag. {P} {_verb(sign, x, rng)}. "
             f"How many {obj} does {pron} have now?")
    else:
        q = (f"{name} has {a} boxes with {b} {obj} in each box. Then {pron} {_verb(sign, x, rng)}. "
             f"How many {obj} are left?")
    return Problem(q, name, pron, obj, (a, b), [(sign, x)])


def _mixed_steps(rng: random.Random, start: int, n_ops: int) -> list[tuple[str, int]]:
    """``n_ops`` changes of 1-9, gains and losses both present, never going below zero."""
    while True:
        ops = [(rng.choice("+-"), rng.randint(1, 9)) for _ in range(n_ops)]
        v, ok = start, {s for s, _ in ops} == {"+", "-"}
        for s, x in ops:
            v = v + x if s == "+" else v - x
            ok &= v >= 0
        if ok:
            return ops


def _many_steps_question(name: str, pron: str, a: int, obj: str, verbs: list[str]) -> str:
    acts = ", ".join(verbs[:-1]) + f", and then {verbs[-1]}"
    return f"{name} has {a} {obj}. {pron.capitalize()} {acts}. How many {obj} does {pron} have now?"


def gen_ood_multistep(rng: random.Random) -> Problem:
    name, pron = _person(rng)
    obj = rng.choice(OBJECTS)
    a = rng.randint(10, 39)
    ops = _mixed_steps(rng, a, rng.choice((3, 4)))
    verbs = [_verb(s, x, rng) for s, x in ops]
    return Problem(_many_steps_question(name, pron, a, obj, verbs), name, pron, obj, (a,), ops)


def gen_id_wide(rng: random.Random) -> Problem:
    """The coverage control: the ID family's wording and operations (add/subtract with the ID verbs)
    with the OOD families' step counts and starts (2-4 steps, start 10-59; changes 1-9). It covers
    ``ood_multistep`` whole and ``ood_wording``'s starts; not ``ood_wording``'s wording or two-digit
    changes (the base model reads few two-digit changes in ID wording: with changes up to 19 its
    right samples were mostly lucky), and not ``ood_mult``'s product."""
    name, pron = _person(rng)
    obj = rng.choice(OBJECTS)
    a = rng.randint(10, 59)
    n_ops = rng.choice((2, 3, 4))
    ops = _mixed_steps(rng, a, n_ops)
    verbs = [_verb(s, x, rng) for s, x in ops]
    if n_ops > 2:
        return Problem(_many_steps_question(name, pron, a, obj, verbs), name, pron, obj, (a,), ops)
    q = (f"{name} has {a} {obj}. {pron.capitalize()} {verbs[0]} and then {verbs[1]}. "
         f"How many {obj} does {pron} have now?")
    return Problem(q, name, pron, obj, (a,), ops)


# One-step rungs of the same stories, for real pretrained LLMs (a 135M instruct model solves few two-step
# items; imm/data/world/benchmark_files.py writes these as benchmark files).

def _one_change(rng: random.Random, name: str, pron: str, obj: str, a: int, sign: str, x: int) -> Problem:
    """"<name> has <a> <obj>. <Pron> <verb x>. How many ...?" (draws the verb)."""
    return Problem(f"{name} has {a} {obj}. {pron.capitalize()} {_verb(sign, x, rng)}. How many {obj} does {pron} "
                   f"have now?", name, pron, obj, (a,), [(sign, x)])


def _box(rng: random.Random, obj: str, a: int, x: int, sign: str) -> Problem:
    """"There are <a> <obj> in a box. <Name> puts in / takes out <x>. ..." (draws the wording and the name)."""
    act = {"+": rng.choice([f"puts in {x}", f"adds {x}"]), "-": rng.choice([f"takes out {x}", f"removes {x}"])}[sign]
    name, _ = _person(rng)
    return Problem(f"There are {a} {obj} in a box. {name} {act}. How many {obj} are in the box now?",
                   "The box", "it", obj, (a,), [(sign, x)])


def _bags(name: str, pron: str, obj: str, a: int, b: int) -> Problem:
    return Problem(f"{name} buys {a} bags of {obj} with {b} {obj} in each bag. How many {obj} does {pron} have?",
                   name, pron, obj, (a, b), [])


def gen_id_onestep(rng: random.Random) -> Problem:
    name, pron = _person(rng)
    obj = rng.choice(OBJECTS)
    a, x = rng.randint(10, 39), rng.randint(1, 9)
    return _one_change(rng, name, pron, obj, a, rng.choice("+-"), x)


def gen_ood_wording_onestep(rng: random.Random) -> Problem:
    obj = rng.choice(OBJECTS)
    a, x = rng.randint(20, 59), rng.randint(5, 19)
    return _box(rng, obj, a, x, rng.choice("+-"))


def gen_ood_product(rng: random.Random) -> Problem:
    name, pron = _person(rng)
    obj = rng.choice(OBJECTS)
    return _bags(name, pron, obj, rng.randint(2, 9), rng.randint(2, 9))


# Families with room for a 135M instruct model (chosen on the validation split, docs/real-llm.md): its
# greedy pass@1 with the world's four exemplars lies between 20 % and 70 % on each. ID is one small step;
# the OOD sets step away from it in wording, in the size of the numbers and in the operation.

def gen_id_small(rng: random.Random) -> Problem:
    """One add/subtract step with small numbers: start 2-20, change 1-9 (a loss never exceeds the start)."""
    name, pron = _person(rng)
    obj = rng.choice(OBJECTS)
    a, sign = rng.randint(2, 20), rng.choice("+-")
    return _one_change(rng, name, pron, obj, a, sign, rng.randint(1, 9 if sign == "+" else min(9, a)))


def gen_ood_box_small(rng: random.Random) -> Problem:
    """Another wording (a box someone puts into or takes from), one step: start 10-29, change 1-5."""
    obj = rng.choice(OBJECTS)
    a, x = rng.randint(10, 29), rng.randint(1, 5)
    return _box(rng, obj, a, x, rng.choice("+-"))


def gen_ood_tens(rng: random.Random) -> Problem:
    """Other numbers: the ID wording and one step, but a two-digit change (10-19); a gain starts at 2-12,
    a loss at change + 1 to change + 11 (so the story never goes below one)."""
    name, pron = _person(rng)
    obj = rng.choice(OBJECTS)
    x, sign = rng.randint(10, 19), rng.choice("+-")
    return _one_change(rng, name, pron, obj, rng.randint(2, 12) if sign == "+" else rng.randint(x + 1, x + 11), sign, x)


def gen_ood_product_wide(rng: random.Random) -> Problem:
    """Another operation: one multiplication, 4-12 x 4-12."""
    name, pron = _person(rng)
    obj = rng.choice(OBJECTS)
    return _bags(name, pron, obj, rng.randint(4, 12), rng.randint(4, 12))


@dataclass(frozen=True)
class Family:
    """A problem family: its generator and which solution styles its texts use."""

    name: str
    generate: Callable[[random.Random], Problem]
    full_styles: tuple[str, ...]
    description: str


FAMILIES: dict[str, Family] = {
    "id_addsub": Family("id_addsub", gen_id_addsub, FULL_STYLES,
                        "two-step add/subtract stories, start 10-39, changes 1-9"),
    "ood_wording": Family("ood_wording", gen_ood_wording, FULL_STYLES,
                          "two-step add/subtract, other wording, changes 5-19"),
    "ood_mult": Family("ood_mult", gen_ood_mult, ("steps", "labeled", "story"),
                       "one multiplication (2-9 x 2-9) then one add/subtract step"),
    "ood_multistep": Family("ood_multistep", gen_ood_multistep, ("steps", "labeled", "story"),
                            "three or four add/subtract steps, changes 1-9"),
    "id_addsub_bal": Family("id_addsub_bal", gen_id_addsub_bal, FULL_STYLES,
                            "id_addsub, 40% balanced (loss = gain, the answer is the start)"),
    "id_wide": Family("id_wide", gen_id_wide, ("steps", "labeled", "story"),
                      "ID wording, add/subtract, start 10-59, changes 1-9, 2-4 steps (the coverage control)"),
    "id_onestep": Family("id_onestep", gen_id_onestep, ("steps", "labeled", "story"),
                         "one add/subtract step, start 10-39, change 1-9 (a 135M model: 13-20% greedy)"),
    "ood_wording_onestep": Family("ood_wording_onestep", gen_ood_wording_onestep, ("steps", "labeled", "story"),
                                  "one add/subtract step, box wording, start 20-59, change 5-19"),
    "ood_product": Family("ood_product", gen_ood_product, ("steps", "labeled", "story"),
                          "one multiplication, 2-9 x 2-9"),
    "id_small": Family("id_small", gen_id_small, ("steps", "labeled", "story"),
                       "one add/subtract step, start 2-20, change 1-9 (a real LLM's ID with room)"),
    "ood_box_small": Family("ood_box_small", gen_ood_box_small, ("steps", "labeled", "story"),
                            "one add/subtract step, box wording, start 10-29, change 1-5"),
    "ood_tens": Family("ood_tens", gen_ood_tens, ("steps", "labeled", "story"),
                       "one add/subtract step, ID wording, change 10-19"),
    "ood_product_wide": Family("ood_product_wide", gen_ood_product_wide, ("steps", "labeled", "story"),
                               "one multiplication, 4-12 x 4-12"),
}
assert ID_FAMILY in FAMILIES and all(f in FAMILIES for f in OOD_FAMILIES)

# A world: its ID (training) family and its OOD families. "testbed" is the shipped default.
WORLDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "testbed": (ID_FAMILY, OOD_FAMILIES),
    "testbed_v2": ("id_addsub_bal", OOD_FAMILIES),
}
# The families the shipped tokenizer was built from (its token ids follow their word counts).
TOKENIZER_FAMILIES = (ID_FAMILY, *OOD_FAMILIES)


# ----------------------------------------------------------------------------- splits

_BUCKETS = {"test": range(0, 2), "train": range(2, 5), "pretrain": range(5, 10)}


def split_of(question: str) -> str:
    """Which split a question belongs to, by a stable hash of its text (splits never overlap)."""
    h = int(hashlib.sha256(question.encode()).hexdigest(), 16) % 10
    return next(s for s, r in _BUCKETS.items() if h in r)


def _rng(*parts) -> random.Random:
    return random.Random("|".join(str(p) for p in parts))


def sample_problems(family: str, split: str, n: int, seed: int) -> list[Problem]:
    """``n`` distinct problems of ``family`` whose questions hash into ``split`` (deterministic)."""
    if family not in FAMILIES:
        raise KeyError(f"unknown family {family!r}; known: {sorted(FAMILIES)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    gen = FAMILIES[family].generate
    rng = _rng("problems", family, split, seed)
    seen: set[str] = set()
    out: list[Problem] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise RuntimeError(f"could not draw {n} distinct {family}/{split} problems")
        p = gen(rng)
        if p.question in seen or split_of(p.question) != ("train" if split == "validation" else split):
            continue
        seen.add(p.question)
        out.append(p)
    return out


def make_split(family: str, split: str, n: int, seed: int) -> list[dict]:
    """``n`` items of ``family`` in ``split`` ("train", "test", "pretrain"), deterministic in ``seed``.

    Items are ``{"question", "answer", "solution", "family"}`` with a gold full-style solution.
    """
    style_rng = _rng("styles", family, split, seed)
    styles = FAMILIES[family].full_styles
    return [
        {"question": p.question, "answer": str(p.answer),
         "solution": render(p, style_rng.choice(styles)), "family": family}
        for p in sample_problems(family, split, n, seed)
    ]
