"""Final-answer extraction: pure functions over a sample's text.

``extract_answer(text)`` finds the final answer of a chain-of-thought sample (after cutting at the
stop strings); comparing it with the gold answer is ``imm.grading.checks``'s job.
"""

from __future__ import annotations

import re

# A sample ends its reasoning with "The answer is X." (paper Tables 11/12); models often keep
# writing a new question afterwards, so the text is cut at these first.
STOP_STRINGS = ("Question:", "### Instruction", "Problem:", "Q:")
ANSWER_RE = re.compile(r"[Tt]he answer is[:\s]*(.+?)(?:\.\s|\.$|\n|$)")
BOXED_RE = re.compile(r"\\boxed\{")


def cut_at_stop(text: str, stops: tuple[str, ...] = STOP_STRINGS) -> str:
    """The text up to the first stop string (the model starting a new question)."""
    cut = len(text)
    for stop in stops:
        i = text.find(stop)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces balanced."""
    starts = [m.end() for m in BOXED_RE.finditer(text)]
    if not starts:
        return None
    i = start = starts[-1]
    depth = 1
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i].strip()
        i += 1
    return None


def extract_answer(text: str) -> str | None:
    """The last "The answer is X" (else the last boxed answer) of a sample, or None."""
    text = cut_at_stop(text)
    found = ANSWER_RE.findall(text)
    if found:
        return found[-1].strip().rstrip(".").strip()
    return last_boxed(text)
