"""The equations a solution writes, read as expressions: "23 + 5 = 28", "3 * 4 - 2 = 10",
"26 - (9 - 4) = 21", and chains "3 * 4 = 12 - 2 = 10" (each link either an equality of values or a
running computation that goes on from the last result). Expressions are parsed with ``ast`` and
walked, never evaluated. Step labels ("Step 2:", "1)") are dropped first, "x" and "×" between
numbers read as "*".
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from fractions import Fraction

from imm.grading.answers import ANSWER_RE, BOX_RE, cut_at_stop

NUM = r"\d+(?:\.\d+)?"
EXPR = rf"\(*\s*{NUM}\s*\)*(?:\s*[-+*]\s*\(*\s*{NUM}\s*\)*)*"
CHAIN_RE = re.compile(rf"{EXPR}(?:\s*=\s*{EXPR})+")
LABEL_RE = re.compile(r"(?i)\bstep\s*\d+\s*[:.)\-]?|^\s*\(?\d+[.)](?=\s)", re.M)
TIMES_RE = re.compile(r"(?<=\d)\s*[x×]\s*(?=\d)")

Tree = tuple  # ("n", value) | (op, left, right) with op in "+-*" | ("neg", x)


def reasoning_text(text: str) -> str:
    """The text the equations are read from: up to the end of the last final-answer statement (an
    equation in the answer line counts; what follows it does not), after any new exemplar is cut."""
    text = cut_at_stop(text)
    found = list(ANSWER_RE.finditer(text))
    boxes = list(BOX_RE.finditer(text))
    if found and not (boxes and boxes[-1].start() > found[-1].start()):
        return text[:found[-1].end()]
    return text


@dataclass(frozen=True)
class Equation:
    """One derived value: an expression, the result the text gives it, whether that is true."""

    tree: Tree
    result: Fraction
    chained: bool = False  # part of a chain of three or more expressions

    @property
    def numbers(self) -> tuple[Fraction, ...]:
        return tuple(_leaves(self.tree))

    @property
    def holds(self) -> bool:
        return _value(self.tree) == self.result

    @property
    def ops(self) -> set[str]:
        return set(_ops(self.tree))

    @property
    def n_ops(self) -> int:
        return len(self.numbers) - 1

    @property
    def first_op(self) -> str | None:
        t = self.tree
        while t[0] != "n" and t[0] != "neg" and t[1][0] != "n":
            t = t[1]
        return t[0] if t[0] in "+-*" else None

    def expand(self, leaves: list[tuple]) -> tuple:
        """The left side as a sorted multiset of (sign, factors), each leaf replaced by its expansion."""
        it = iter(leaves)
        return tuple(sorted(_expand(self.tree, it)))


def _parse(expr: str) -> Tree | None:
    s = expr.strip()
    s = s[s.count("(") - s.count(")"):] if s.count("(") > s.count(")") else s
    s = s[:len(s) - (s.count(")") - s.count("("))] if s.count(")") > s.count("(") else s
    try:
        return _tree(ast.parse(s.strip(), mode="eval").body)
    except (SyntaxError, ValueError):
        return None


OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*"}


def _tree(node: ast.AST) -> Tree:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return ("n", Fraction(str(node.value)))
    if isinstance(node, ast.BinOp) and type(node.op) in OPS:
        return (OPS[type(node.op)], _tree(node.left), _tree(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return ("neg", _tree(node.operand))
    raise ValueError(f"not arithmetic: {ast.dump(node)}")


def _value(t: Tree) -> Fraction:
    if t[0] == "n":
        return t[1]
    if t[0] == "neg":
        return -_value(t[1])
    a, b = _value(t[1]), _value(t[2])
    return a + b if t[0] == "+" else a - b if t[0] == "-" else a * b


def _leaves(t: Tree):
    if t[0] == "n":
        yield t[1]
    else:
        for sub in t[1:]:
            yield from _leaves(sub)


def _ops(t: Tree):
    if t[0] != "n":
        if t[0] != "neg":
            yield t[0]
        for sub in t[1:]:
            yield from _ops(sub)


def _expand(t: Tree, leaves) -> list:
    if t[0] == "n":
        return list(next(leaves))
    if t[0] == "neg":
        return [(-s, f) for s, f in _expand(t[1], leaves)]
    left, right = _expand(t[1], leaves), _expand(t[2], leaves)
    if t[0] == "+":
        return left + right
    if t[0] == "-":
        return left + [(-s, f) for s, f in right]
    return [(s1 * s2, tuple(sorted(f1 + f2))) for s1, f1 in left for s2, f2 in right]


def _lead(t: Tree) -> Fraction:
    while t[0] != "n":
        t = t[1]
    return t[1]


def equations(text: str) -> list[Equation]:
    """The equations written in ``text``, in order; a chain gives one equation per derived value."""
    text = TIMES_RE.sub(" * ", LABEL_RE.sub(" ", text.replace("\u2212", "-")))
    out = []
    for m in CHAIN_RE.finditer(text):
        trees = [_parse(p) for p in m.group().split("=")]
        if any(t is None for t in trees):
            continue
        chained = len(trees) > 2
        source = trees[0]
        for nxt in trees[1:]:
            if nxt[0] == "n":
                out.append(Equation(source, nxt[1], chained))
                source = nxt
            elif _value(nxt) == _value(source):
                continue  # "23 + 5 - 3 = 28 - 3": the same value rewritten; derive from the first
            else:  # "3 * 4 = 12 - 2": 12 is the result, and the chain goes on from it
                out.append(Equation(source, _lead(nxt), chained))
                source = nxt
    return out
