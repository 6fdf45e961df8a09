"""Why a model's answers fail out of domain: per-sample readings of a testbed solution, per test set.

Two accounts fit a loss of OOD accuracy after self-training on ID questions: the model reasons more
superficially (right answers through unsound steps), or it stops reading the OOD question and
writes the ID template (too few steps, no product, the question's first number copied). These
rates tell them apart, each per test set and per model:

- ``ran_to_limit``       the sample used every new token it was allowed (``eval.max_new_tokens``);
- ``copies_first``       its final answer is the question's first number;
- ``writes_product``     (product items) it writes the product ("3 * 4", or "4 + 4 + 4");
- ``all_quantities``     its equations use every quantity of the question;
- ``equation_gap``       equations written minus operations needed (-1: one equation too few);
- ``too_few_equations``  fewer equations than operations needed;
- ``right_procedure``    its last equation applies the problem's operations to its numbers, each
                         number a quantity or an earlier written result, arithmetic aside
                         (``imm.data.world.steps.procedure``);
- ``form/<name>``        share of samples in each surface form (``steps.FORMS``), and
  ``right_form/<name>``  the same among the right answers: style drift apart from soundness.

The share with no final answer is the evaluation's own ``<set>/no_answer``. Pure functions.
"""

from __future__ import annotations

import re

from imm.data.world.arithmetic import arithmetic
from imm.data.world.equations import equations, reasoning_text
from imm.data.world.steps import FORMS, form, procedure
from imm.grading.answers import final_answer
from imm.grading.checks import parse_number

MEASURES = ("ran_to_limit", "copies_first", "writes_product", "all_quantities", "equation_gap",
            "too_few_equations", "right_procedure")
FIRST_NUMBER_RE = re.compile(r"\d+")


def reading(text: str, item: dict, at_limit: bool | None = None) -> dict[str, float | str]:
    """The measures of one testbed sample (``writes_product`` only on product items, ``ran_to_limit``
    only when the decoder reported lengths), and its form."""
    arith = arithmetic(item)[0]
    eqs = equations(reasoning_text(text))
    answer = final_answer(text)
    first = int(FIRST_NUMBER_RE.search(item["question"]).group())
    used = {v for e in eqs for v in e.numbers}
    needed = len(arith.atoms())
    out: dict[str, float | str] = {
        "copies_first": float(answer is not None and parse_number(answer) == first),
        "all_quantities": float(arith.quantities() <= used),
        "equation_gap": float(len(eqs) - needed),
        "too_few_equations": float(len(eqs) < needed),
        "right_procedure": float(procedure(text, item)),
        "form": form(text, item),
    }
    if at_limit is not None:
        out["ran_to_limit"] = float(at_limit)
    if arith.product():
        a, b = arith.product()
        out["writes_product"] = float(any(
            ("*" in e.ops and {a, b} <= set(e.numbers)) or ("+" in e.ops and max(e.numbers.count(a), e.numbers.count(b)) >= 2)
            for e in eqs))
    return out


def set_metrics(records: list[dict], groups: dict[str, list[str]]) -> dict[str, float]:
    """``<set>/<measure>`` (mean over the set's samples), ``<set>/form/<name>`` (share of samples) and
    ``<set>/right_form/<name>`` (share of right answers) from item records carrying ``mechanism``;
    per group (id, ood) the means over its sets that have the measure."""
    per_set: dict[str, dict[str, list[float]]] = {}
    for r in records:
        for read, right in zip(r.get("mechanism", []), r.get("steps", [])):
            acc = per_set.setdefault(r["set"], {})
            for m in MEASURES:
                if m in read:
                    acc.setdefault(m, []).append(read[m])
            for f in FORMS:
                acc.setdefault(f"form/{f}", []).append(float(read["form"] == f))
                if right != "wrong":
                    acc.setdefault(f"right_form/{f}", []).append(float(read["form"] == f))
    out = {f"{s}/{k}": sum(v) / len(v) for s, acc in per_set.items() for k, v in acc.items() if v}
    for group, sets in groups.items():
        keys = {k.split("/", 1)[1] for k in out if k.split("/", 1)[0] in sets}
        for k in sorted(keys):
            vals = [out[f"{s}/{k}"] for s in sets if f"{s}/{k}" in out]
            out[f"{group}/{k}"] = sum(vals) / len(vals)
    return out


def kept_forms(kept: list[dict], items: list[dict]) -> dict[str, float]:
    """``form/<name>``: shares of the kept samples (all right answers) in each form; {} off the testbed."""
    by_question = {it["question"]: it for it in items}
    forms = [form(r["response"], by_question[r["question"]]) for r in kept
             if "family" in by_question[r["question"]]]
    return {f"form/{f}": forms.count(f) / len(forms) for f in FORMS} if forms else {}
