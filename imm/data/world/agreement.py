"""How often a step checker agrees with hand labels: per class, overall, and the confusion matrix.

    python -m imm.data.world.agreement                       # the checker in this checkout
    python -m imm.data.world.agreement --ref 58baf9d         # ... and steps.py as it was at a commit

The labels are ``tests/fixtures/steps/hand_labelled.json``: hand-written testbed solutions of every
form (canonical, commuted, netted, repeated addition, chained, merged, numbered, restated), slips
that cancel, lucky copies, truncated texts and trailing text, each labelled by hand with the class
``imm.data.world.steps`` defines. ``--ref`` loads ``imm/data/world/steps.py`` of that commit from git
(the canonical-form checker this one replaced is 58baf9d) so both are measured on the same texts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from imm.data.world.steps import CLASSES, check_steps

FIXTURE = Path(__file__).resolve().parents[3] / "tests" / "fixtures" / "steps" / "hand_labelled.json"
ERROR = "error"  # the checker raised on the item


@dataclass(frozen=True)
class Labelled:
    item: dict
    form: str
    label: str
    text: str


@dataclass(frozen=True)
class Agreement:
    confusion: Counter  # (hand label, checker's class) -> count

    @property
    def n(self) -> int:
        return sum(self.confusion.values())

    @property
    def overall(self) -> float:
        return sum(v for (a, b), v in self.confusion.items() if a == b) / self.n

    def recall(self, label: str) -> float:
        """Share of the solutions labelled ``label`` that the checker puts in that class."""
        row = sum(v for (a, _), v in self.confusion.items() if a == label)
        return self.confusion[(label, label)] / row if row else float("nan")

    @property
    def sound_called_flawed(self) -> int:
        return self.confusion[("sound", "flawed")]


def load(path: Path = FIXTURE) -> list[Labelled]:
    data = json.loads(path.read_text())
    return [Labelled(data["items"][item], form, label, text) for item, form, label, text in data["solutions"]]


def agreement(checker: Callable[[str, dict], str], rows: list[Labelled]) -> Agreement:
    def run(row: Labelled) -> str:
        try:
            return checker(row.text, row.item)
        except ValueError:
            return ERROR
    return Agreement(Counter((r.label, run(r)) for r in rows))


def checker_at(ref: str) -> Callable[[str, dict], str]:
    """``check_steps`` of ``imm/data/world/steps.py`` as committed at ``ref`` (run from the repository)."""
    source = subprocess.run(["git", "show", f"{ref}:imm/data/world/steps.py"], check=True,
                            capture_output=True, text=True, cwd=FIXTURE.parents[3]).stdout
    module = types.ModuleType(f"steps_at_{ref}")
    sys.modules[module.__name__] = module  # dataclasses look their module up while the class is built
    exec(compile(source, f"steps.py@{ref}", "exec"), module.__dict__)
    return module.check_steps


def table(name: str, a: Agreement) -> str:
    """The agreement of one checker as text: per class, overall, the confusion matrix."""
    cols = [*CLASSES, ERROR] if any(p == ERROR for _, p in a.confusion) else list(CLASSES)
    lines = [f"{name}: {a.overall:.1%} of {a.n} agree; valid derivations called flawed: "
             f"{a.sound_called_flawed}",
             "hand label   n     agree   " + " ".join(f"{c:>9}" for c in cols)]
    for label in CLASSES:
        row = [a.confusion[(label, c)] for c in cols]
        lines.append(f"{label:<10} {sum(row):>4}   {a.recall(label):>6.1%}   "
                     + " ".join(f"{v:>9}" for v in row))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    parser.add_argument("--ref", action="append", default=[], help="also measure steps.py at this commit")
    args = parser.parse_args(argv)
    rows = load(args.fixture)
    for ref in args.ref:
        print(table(f"steps.py at {ref}", agreement(checker_at(ref), rows)), end="\n\n")
    print(table("steps.py (this checkout)", agreement(check_steps, rows)))


if __name__ == "__main__":
    main()
