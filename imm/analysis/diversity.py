"""How varied a model's answers to one question are: self-improvement can collapse them across
rounds (B-STaR, arXiv 2412.17256; "Self-Improvement Reversal", arXiv 2407.05013).

Over the k samples drawn per training question, from their final answers (``None``: no answer stated):

- ``distinct_answers``  the mean number of distinct stated answers per question;
- ``all_agree``         the share of questions whose k samples all state one and the same answer.
"""

from __future__ import annotations


def answer_diversity(groups: list[list[str | None]]) -> dict[str, float]:
    """Both figures over questions (one list of k final answers each); {} for no questions."""
    if not groups:
        return {}
    distinct = [len({a for a in g if a is not None}) for g in groups]
    agree = [bool(g) and g[0] is not None and all(a == g[0] for a in g) for g in groups]
    return {"distinct_answers": sum(distinct) / len(groups), "all_agree": sum(agree) / len(groups)}


def answer_key(text: str) -> str | None:
    """A sample's final answer as compared across samples: its value for a number ("1,000" and
    "1000.0" are one answer), else the normalised string; None when it states none."""
    from imm.grading.answers import final_answer
    from imm.grading.checks import normalize, parse_number

    answer = final_answer(text)
    if answer is None:
        return None
    value = parse_number(answer)
    return str(value) if value is not None else normalize(answer)
