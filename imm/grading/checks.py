"""Grading samples: is a chain-of-thought sample's final answer the gold one?

``grade(text, item)`` reads the sample's final answer (``imm.grading.answers.final_answer``) and
compares it with ``item["answer"]`` by the item's ``kind`` (``imm.data.benchmarks``): ``numeric``
by exact value, ``latex`` through math-verify, ``choice`` by option letter.
``grade_report(texts, items, workers=2, timeout=5)`` grades many samples and counts those with no
readable final answer and those whose check ran out of time: numeric checks run in this process
(pure Python, fast); LaTeX and multiple-choice checks run in the long-lived worker processes of
``imm.grading.pool`` with a per-item time limit, because sympy can take minutes (or forever) on a
pathological answer and math-verify's own limits use SIGALRM, which only works in a process's
main thread. A model's text is parsed, never evaluated.

Decisions a reader should know (each has a case in tests/unit/test_grading.py):
- a percent sign is dropped on both sides: "10%" equals 10 (GSM8K-style golds give the number of
  percent), and does not equal 0.1;
- numbers compare exactly ("0.33" is not 1/3); "1,234", "$5", "12 apples", "x = 5", "8.0" are
  read as the one number they contain; a sample with two numbers and no "=" is wrong;
- LaTeX answers go to math-verify as "$gold$" and "The answer is $pred$." (unwrapped it reads
  only a prefix, and "1-\\frac1e" matches "1+\\frac1e"); an expression is not accepted for a gold
  equation of a line ("2x+3" for "y=2x+3");
- a multiple-choice answer is its letter ("(B)", "b )", "Option B"), else the one option whose
  text it equals.
"""

from __future__ import annotations

import logging
import re
import signal
from dataclasses import dataclass
from fractions import Fraction

from imm.grading.answers import LETTERS, final_answer

log = logging.getLogger(__name__)
# math-verify warns on every process that its own SIGALRM limits are off; ours replace them.
logging.getLogger("math_verify").setLevel(logging.ERROR)

# LaTeX and typography that carry no value: currency, spacing, \left( ... \right), degrees.
NOISE = (("\\$", ""), ("$", ""), ("\\%", "%"), ("{,}", ","), ("\\,", ""), ("\\!", ""),
         ("\\left", ""), ("\\right", ""), ("\\(", ""), ("\\)", ""), ("\u2212", "-"), ("€", ""),
         ("£", ""), ("^\\circ", ""), ("^{\\circ}", ""), ("°", ""), ("**", ""))
TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
FRAC_RE = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
UNIT_POWER_RE = re.compile(r"(?<=[A-Za-z])\^\{?\d\}?|[²³]")  # cm^2, m³: part of a unit, not a number
NUM_RE = re.compile(r"(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d*\.?\d+)(?:\s*/\s*(\d*\.?\d+))?")
OPERATOR_RE = re.compile(r"[+*/=<>^]|-(?![A-Za-z]{2})")  # "5-year-old": a hyphen before a word is no minus
RATIO_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")
LETTER_RE = re.compile(r"^(?:option|choice)?\s*[(\[]?\s*([A-Ea-e])\s*(?:[)\]:.]|$)", re.I)


# ---- cleaning ----

def clean(answer: str) -> str:
    s = TEXT_RE.sub(r" \1", answer)
    s = FRAC_RE.sub(r"(\1)/(\2)", s) if "frac" in s else s
    for old, new in NOISE:
        s = s.replace(old, new)
    return s.strip()


# ---- numeric ----

def parse_number(answer: str) -> Fraction | None:
    """The one number an answer states ("-1,234.5", "3/4", "$5", "12 apples", "x = 5", "10%"), else None."""
    s = clean(answer)
    s = s.rsplit("=", 1)[1] if "=" in s else s  # "x = 5", "18 + 5 = 23": the value after the last "="
    s = UNIT_POWER_RE.sub("", s.replace("(", " ").replace(")", " "))
    found = list(NUM_RE.finditer(s))
    if len(found) != 1:
        return None
    m = found[0]
    before, after = s[:m.start()].rstrip(), s[m.end():]
    sign = -1 if before.endswith("-") else 1
    if before.endswith(("-", "+")):
        if before[:-1] and not before[-2].isspace():
            return None  # "x-5": a difference, not a sign
        before = before[:-1]
    if OPERATOR_RE.search(f"{before} {after}"):
        return None  # an expression, not a number
    num, den = Fraction(m.group(1).replace(",", "")), Fraction(m.group(2) or 1)
    return sign * num / den if den else None


def normalize(answer: str) -> str:
    return re.sub(r"\s+", "", clean(answer)).rstrip(".").lower()


def numeric_equal(pred: str, gold: str) -> bool:
    """Equal by value; ratios "2:3" by value of a/b; other golds ("yes") as normalised strings."""
    g = parse_number(gold)
    if g is not None:
        return parse_number(pred) == g
    rg, rp = RATIO_RE.match(gold), RATIO_RE.match(clean(pred))
    if rg and rp:
        a, b, c, d = (Fraction(x) for x in (*rg.groups(), *rp.groups()))
        return bool(b and d) and a / b == c / d
    return normalize(pred) == normalize(gold)


# ---- LaTeX ----

def unwrap(answer: str) -> str:
    s = answer.strip().rstrip(".").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
            return s[len(left):-len(right)].strip()
    return s


def latex_equal(pred: str, gold: str) -> bool:
    """Mathematical equivalence through math-verify, both sides wrapped so the whole answer parses.

    The caller enforces time limits (``grade_many``): math-verify's own SIGALRM limits are off."""
    from math_verify import parse, verify
    from sympy import Equality

    g = parse(f"${unwrap(gold)}$", parsing_timeout=None)
    p = parse(f"The answer is ${unwrap(pred)}$.", parsing_timeout=None)
    if not g or not p:
        return normalize(unwrap(pred)) == normalize(unwrap(gold))
    if isinstance(g[0], Equality) and len(g[0].free_symbols) > 1 and not isinstance(p[0], Equality):
        return False  # a line "y=2x+3" is asked for; "2x+3" is an expression, not the line
    return verify(g, p, timeout_seconds=None)


# ---- multiple choice ----

def choice_letter(pred: str, choices: list[str]) -> str | None:
    """The option letter an answer names, else the letter of the one option whose text it equals."""
    s = clean(pred).replace("{", "").replace("}", "").strip()
    m = LETTER_RE.match(s)
    if m:
        return m.group(1).upper()
    same = [LETTERS[i] for i, c in enumerate(choices) if numeric_equal(pred, c)]
    return same[0] if len(same) == 1 else None


# ---- one sample ----

def check_numeric(pred: str, item: dict) -> bool:
    return numeric_equal(pred, item["answer"])


def check_latex(pred: str, item: dict) -> bool:
    return latex_equal(pred, item["answer"])


def check_choice(pred: str, item: dict) -> bool:
    choices = item.get("choices", [])
    letter = choice_letter(pred, choices)
    return letter is not None and letter == item["answer"].strip().upper() and (
        not choices or LETTERS.index(letter) < len(choices))


CHECKS = {"numeric": check_numeric, "latex": check_latex, "choice": check_choice}


def check(pred: str, item: dict) -> bool:
    """The item's check on an extracted answer; a check that breaks on odd input grades it wrong."""
    try:
        return bool(CHECKS[item.get("kind", "numeric")](pred, item))
    except Exception:
        return False


def grade(text: str, item: dict) -> bool:
    """Whether a sample's final answer is the item's gold answer (items without a kind: numeric).

    No time limit here: model text for LaTeX and choice items goes through ``grade_report``."""
    pred = final_answer(text)
    return pred is not None and CHECKS[item.get("kind", "numeric")](pred, item)


# ---- many samples: numeric in process, the rest in time-limited workers ----

class GradeTimeout(BaseException):
    """Raised by the worker's alarm; a BaseException so no library's ``except Exception`` hides it."""


def on_alarm(signum, frame):
    raise GradeTimeout


def check_limited(pred: str, item: dict, timeout: float) -> tuple[bool, bool]:
    """(correct, timed out) for one answer, run in a worker's main thread under an alarm."""
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        try:
            correct = check(pred, item)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return correct, False
    except GradeTimeout:
        return False, True


@dataclass
class Graded:
    correct: list[bool]
    timeouts: int = 0  # samples graded False because their check ran out of time
    no_answer: int = 0  # samples graded False because they state no final answer


def grade_report(texts: list[str], items: list[dict], workers: int = 2, timeout: float = 5.0) -> Graded:
    """``grade`` for each (text, item) pair, with the no-answer and timed-out counts.

    LaTeX and choice checks run in ``workers`` pooled processes, ``timeout`` s each (a worker that
    overruns is killed and replaced: ``imm.grading.pool``); numeric checks run here."""
    if len(texts) != len(items):
        raise ValueError(f"{len(texts)} texts for {len(items)} items")
    if workers < 1 or timeout <= 0:
        raise ValueError(f"workers={workers} must be >= 1 and timeout={timeout} > 0")
    preds = [final_answer(t) for t in texts]
    out = Graded([False] * len(texts), no_answer=sum(p is None for p in preds))
    remote = []
    for i, (pred, item) in enumerate(zip(preds, items)):
        if pred is None:
            continue
        if item.get("kind", "numeric") == "numeric":
            out.correct[i] = check(pred, item)
        else:
            remote.append(i)
    if remote:
        from imm.grading.pool import shared_pool

        jobs = [(preds[i], items[i]) for i in remote]
        for i, (correct, late) in zip(remote, shared_pool(workers).run(jobs, timeout)):
            out.correct[i], out.timeouts = correct, out.timeouts + late
    if out.timeouts:
        log.warning("grading: %d of %d checks timed out (graded wrong)", out.timeouts, len(texts))
    return out


def grade_groups(groups: list[list[str]], items: list[dict], workers: int = 2,
                 timeout: float = 5.0) -> tuple[list[list[bool]], Graded]:
    """Correctness of several samples per item (pass@k, filtering) and the flat report's counts."""
    flat_texts = [t for g in groups for t in g]
    flat_items = [it for g, it in zip(groups, items, strict=True) for _ in g]
    report = grade_report(flat_texts, flat_items, workers, timeout)
    out, at = [], 0
    for g in groups:
        out.append(report.correct[at:at + len(g)])
        at += len(g)
    return out, report
