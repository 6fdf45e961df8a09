"""How a model's right answers were reached, and which items a later model lost or gained.

Pass@1 says how many answers are right. Two finer readings, both pure functions over graded samples:

- **step classes** (testbed items only: they know their arithmetic, ``imm.data.world.steps``): the
  shares of *sound*, *shortcut* and *flawed* reasoning among the right answers, for the kept
  samples of an iteration and for every model's test answers. Benchmark items have no step
  structure and get no classes.
- **transitions** between two models on the same test items: ``forgotten`` is the share of items
  the earlier model answered right and the later one wrong, ``newly_solved`` the share that went
  from wrong to right (the per-item measure of studies of forgetting in post-training: two models
  of equal accuracy can differ in which items they solve). At ``eval.n > 1`` an item counts as
  right when its first sample is (greedy pass@1, ``eval.n = 1``, is the intended reading).

An evaluation's per-item rows (``item_records``) are what its stage keeps beside its metrics.
"""

from __future__ import annotations

from collections import Counter

from imm.analysis import mechanism
from imm.data.world.steps import CLASSES, check_steps
from imm.grading.answers import final_answer

SHARES = CLASSES[:3]  # sound, shortcut, flawed: the classes of a right answer


def has_steps(item: dict) -> bool:
    """Testbed items carry their family (and a worked solution); benchmark items do not."""
    return "family" in item and "solution" in item


def item_records(set_name: str, outs: list[list[str]], items: list[dict],
                 verdicts: list[list[bool]], at_limit: list[list[bool]] | None = None) -> list[dict]:
    """One row per test item: set, index, samples n, how many were right, whether the first was, its
    text, whether it states a final answer (``answered``) and ended before the token limit (``ended``,
    where the decoder reported it), and for testbed items the step class of each sample ("wrong" where the grade says wrong)
    and its mechanism readings (``imm.analysis.mechanism.reading``; ``at_limit``: which samples used every
    new token allowed, when the decoder reported it)."""
    rows = []
    for i, (texts, item, ok) in enumerate(zip(outs, items, verdicts, strict=True)):
        row = {"set": set_name, "index": i, "n": len(texts), "correct": sum(ok), "right": bool(ok[0]),
               "text": texts[0], "answered": final_answer(texts[0]) is not None}
        if at_limit is not None:
            row["ended"] = not at_limit[i][0]  # ended before the token limit (its answer, a stop, EOS)
        if has_steps(item):
            row["steps"] = [check_steps(t, item) if good else "wrong" for t, good in zip(texts, ok)]
            limits = at_limit[i] if at_limit is not None else [None] * len(texts)
            row["mechanism"] = [mechanism.reading(t, item, hit) for t, hit in zip(texts, limits)]
        rows.append(row)
    return rows


def shares(counts: Counter) -> dict[str, float]:
    """Shares of sound / shortcut / flawed among the right answers counted (0 each when none)."""
    n = sum(counts[c] for c in SHARES)
    return {f"{c}_share": (counts[c] / n if n else 0.0) for c in SHARES}


def step_metrics(records: list[dict], groups: dict[str, list[str]]) -> dict[str, float]:
    """``<set>/sound_share`` etc. for each set whose rows carry step classes, and per group (id, ood)
    the shares pooled over its sets' right answers. A right answer the checker cannot read as right
    (its final answer is not an integer, e.g. "1000.0") is left out of the shares."""
    counts: dict[str, Counter] = {}
    for r in records:
        if "steps" in r:
            counts.setdefault(r["set"], Counter()).update(s for s in r["steps"] if s != "wrong")
    out: dict[str, float] = {}
    for name, c in counts.items():
        out |= {f"{name}/{k}": v for k, v in shares(c).items()}
    for group, sets in groups.items():
        if any(s in counts for s in sets):
            pooled = sum((counts.get(s, Counter()) for s in sets), Counter())
            out |= {f"{group}/{k}": v for k, v in shares(pooled).items()}
    return out


def kept_step_classes(kept: list[dict], items: list[dict]) -> list[str | None]:
    """The step class of each kept sample (a row {question, response}); None for a benchmark item."""
    by_question = {it["question"]: it for it in items}
    return [check_steps(r["response"], by_question[r["question"]]) if has_steps(by_question[r["question"]])
            else None for r in kept]


def kept_shares(classes: list[str | None]) -> dict[str, float]:
    """Shares of the kept samples' step classes, as ``sound_share`` etc.; {} when none has classes."""
    known = [c for c in classes if c is not None]
    return shares(Counter(known)) if known else {}


def transitions(before: list[dict], after: list[dict], groups: dict[str, list[str]]) -> dict[str, float]:
    """``<set>/forgotten`` and ``<set>/newly_solved``: shares of a set's items that went right → wrong
    and wrong → right from ``before`` to ``after`` (per-item rows of two evaluations on the same
    items); per group (id, ood) the means over its sets, as its pass@1 is."""
    was = {(r["set"], r["index"]): r["right"] for r in before}
    pairs: dict[str, list[tuple[bool, bool]]] = {}
    for r in after:
        pairs.setdefault(r["set"], []).append((was[(r["set"], r["index"])], r["right"]))
    out: dict[str, float] = {}
    for name, ps in pairs.items():
        out[f"{name}/forgotten"] = sum(b and not a for b, a in ps) / len(ps)
        out[f"{name}/newly_solved"] = sum(a and not b for b, a in ps) / len(ps)
    for group, sets in groups.items():
        present = [s for s in sets if s in pairs]
        for measure in ("forgotten", "newly_solved"):
            if present:
                out[f"{group}/{measure}"] = sum(out[f"{s}/{measure}"] for s in present) / len(present)
    return out
