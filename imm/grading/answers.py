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
# "### Response:" at a line start is the prompt format's own marker: a model that writes it again after
# its answer has begun another response (the real instruct models do, until their token limit).
STOP_STRINGS = ("\nQuestion:", "\n### Instruction", "\n### Response", "\nProblem:", "\nQ:")
LETTERS = "ABCDE"  # multiple-choice option letters, in order

ANSWER_RE = re.compile(r"(?i:the (?:final )?answer is)[:\s]*(.+?)(?:\.\s|\.$|\n|$)")
# Where a final-answer statement ends: its sentence's full stop (a "." before whitespace or the end:
# "3.5" goes on) or its line's end. ``ENDED_RE`` is the test while a sample is still being written: only a
# terminator already written counts (the "." of "21." may yet become "21.5").
ANSWER_END_RE = re.compile(r"(?i:the (?:final )?answer is)[:\s]*\S.*?(?:\.(?=\s|$)|(?=\n)|$)")
ENDED_RE = re.compile(r"(?i:the (?:final )?answer is)[:\s]*\S.*?(?:\.\s|\n)")
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


def answer_end(text: str) -> int | None:
    """Where the first final-answer statement's sentence or line ends (None: the text states none)."""
    m = ANSWER_END_RE.search(text)
    return m.end() if m else None


def cut_sample(text: str, stops: tuple[str, ...] = STOP_STRINGS, at_answer: bool = True) -> str:
    """A sample as it is kept and graded: up to its first stop string and, with ``at_answer``, up to the
    end of its first final-answer statement (what a model writes after its answer is not its answer)."""
    text = cut_at_stop(text, stops)
    end = answer_end(text) if at_answer else None
    return (text[:end] if end is not None else text).rstrip()


def has_ended(tail: str, stops: tuple[str, ...], at_answer: bool) -> bool:
    """Whether a sample being written has ended: a stop string, or (``at_answer``) a final-answer
    statement whose terminator is already written."""
    return any(s in tail for s in stops) or (at_answer and ENDED_RE.search(tail) is not None)


def trails_answer(text: str) -> bool:
    """Whether ``text`` goes on after its first final-answer statement (more than whitespace)."""
    end = answer_end(text)
    return end is not None and bool(text[end:].strip())


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
