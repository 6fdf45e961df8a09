"""Reading a sample's final answer: pure functions over its text, and the answer-format constants.

``final_answer(text)`` cuts a chain-of-thought sample where the model starts a new exemplar
(``STOP_STRINGS``) and returns the last final-answer statement before that point: "The answer is
X" (any capitalisation, "The final answer is X" too) or a boxed answer (``\\boxed{X}``,
``\\fbox{X}``, ``\\boxed X``), whichever comes later in the text; a box inside the statement ("The
answer is $\\boxed{5}$.") gives its content. None when the sample states no final answer.
Comparing the answer with the gold one is ``imm.grading.checks``'s job.

The data side (prompts, benchmark loaders) imports these constants; grading imports nothing from it.
"""

from __future__ import annotations

import re

# A new exemplar starts on a new line (the paper's prompts, Tables 11/12: "\n\nQuestion: ..." and
# "\n\n### Instruction:"; "Problem:" and "Q:" are the Minerva and short-CoT formats models also
# imitate). Anchoring at a line start keeps "PQ:QR" or "the Problem: find x" inside a solution.
STOP_STRINGS = ("\nQuestion:", "\n### Instruction", "\nProblem:", "\nQ:")
LETTERS = "ABCDE"  # multiple-choice option letters, in order

ANSWER_RE = re.compile(r"(?i:the (?:final )?answer is)[:\s]*(.+?)(?:\.\s|\.$|\n|$)")
# \boxed{..} and Hendrycks' \fbox{..}; "\boxed 5" (no braces) reads up to "$" or the line's end.
BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{|\\boxed (?=[^{\s])")


def cut_at_stop(text: str, stops: tuple[str, ...] = STOP_STRINGS) -> str:
    """The text up to the first stop string; a stop string that starts with a newline also
    matches at the very start of the text (the model opened a new exemplar at once)."""
    padded, cut = "\n" + text, len(text)
    for stop in stops:
        i = padded.find(stop)
        if i != -1:
            cut = min(cut, max(i - 1, 0))
    return text[:cut]


def last_box_start(text: str) -> int:
    """Where the last boxed answer starts in ``text``, -1 if none."""
    found = list(BOX_RE.finditer(text))
    return found[-1].start() if found else -1


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (braces balanced) or ``\\boxed X``."""
    found = list(BOX_RE.finditer(text))
    if not found:
        return None
    m = found[-1]
    i = start = m.end()
    if not m.group().endswith("{"):  # "\boxed 5$": up to the closing "$" or the end of the line
        return re.split(r"[$\n]", text[start:], maxsplit=1)[0].strip().rstrip(".").strip() or None
    depth = 1
    while i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i].strip()
        i += 1
    return None


def final_answer(text: str, stops: tuple[str, ...] = STOP_STRINGS) -> str | None:
    """The last "The answer is X" or last boxed answer (whichever comes later) before a stop string."""
    text = cut_at_stop(text, stops)
    said = list(ANSWER_RE.finditer(text))
    if said and said[-1].start() > last_box_start(text):
        answer = said[-1].group(1).strip().rstrip(".").strip()
        return (last_boxed(answer) or answer) or None
    return last_boxed(text)
