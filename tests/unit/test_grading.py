"""Grading: the decided cases, table-driven, and the worker pool's time limits and lifecycle."""

import faulthandler
import os
import signal
from contextlib import contextmanager

import pytest

from imm.grading import pool as grading_pool
from imm.grading.answers import final_answer
from imm.grading.checks import check_limited, grade, grade_groups, grade_report, parse_number

OPTS = ["12", "15", "18", "21"]

# (model text, gold, kind, expected): each line says why it goes that way.
CASES = [
    # ---- numeric: how numbers are read ----
    ("The answer is 1,234.", "1234", "numeric", True),  # thousands separators
    ("The answer is $1,234.", "1234", "numeric", True),  # currency sign, then separators
    ("The answer is 12 apples.", "12", "numeric", True),  # a trailing unit word
    ("The answer is 5 dollars", "5", "numeric", True),  # unit word, no final period
    ("The answer is 3/4", "0.75", "numeric", True),  # a fraction equals its decimal exactly
    ("The answer is $-\\frac{3}{4}$", "-0.75", "numeric", True),  # LaTeX fraction with a sign
    ("The answer is 8.0", "8", "numeric", True),  # SVAMP-style float gold vs integer
    ("The answer is -3", "-3", "numeric", True),  # negative answers keep their sign
    ("The answer is 3", "-3", "numeric", False),  # ... and a lost sign is wrong
    ("The answer is x = 5", "5", "numeric", True),  # the value after "="
    ("The answer is 18 + 5 = 23.", "23", "numeric", True),  # a worked sum: the result after the last "="
    ("The answer is 8 hours and 30 minutes", "8", "numeric", False),  # two numbers: no single answer
    ("The answer is 5-year-old", "5", "numeric", True),  # a hyphen before a word is not a minus
    ("The answer is 7-2", "5", "numeric", False),  # an unevaluated expression is not an answer
    ("The answer is 10%", "10", "numeric", True),  # decided: a percent answer is its number of percent
    ("The answer is 10%", "0.1", "numeric", False),  # ... so it is not the fraction 0.1
    ("The answer is 1e3", "1000", "numeric", False),  # scientific notation is not read (models don't use it)
    ("The answer is 0.33", "1/3", "numeric", False),  # exact comparison: no rounding tolerance
    ("The answer is 1,2", "12", "numeric", False),  # a malformed separator is not a thousands comma
    ("The answer is 25 cm^2", "25", "numeric", True),  # a unit's exponent is not a second number
    ("The answer is 2 : 3", "2:3", "numeric", True),  # ASDiv ratio gold, spacing differs
    ("The answer is 4:6", "2:3", "numeric", True),  # decided: ratios compare by value
    ("The answer is Yes.", "yes", "numeric", True),  # ASDiv non-numeric gold: normalised text
    ("The answer is no", "yes", "numeric", False),  # ... and text must match
    ("There were 9 apples, 9 in all.", "9", "numeric", False),  # no final-answer phrase: no fallback to the last number
    # ---- extraction ----
    ("so \\boxed{18}. Then again, 19 - 0 = 19. The answer is 19", "19", "numeric", True),  # the later marker wins
    ("The answer is 5.\nQuestion: Tom has 6. The answer is 6.", "5", "numeric", True),  # cut at the next question
    ("The answer is 5.\n### Instruction:\nWhat? The answer is 6.", "5", "numeric", True),  # cut at the next instruction
    ("First the answer is 3. Then 3 * 2 = 6. The answer is 6.", "6", "numeric", True),  # the last answer counts
    ("The answer is \\boxed{18}", "18", "numeric", True),  # boxed inside the phrase
    # ---- LaTeX (math-verify) ----
    ("The answer is $1-\\frac1e$", "1+\\frac1e", "latex", False),  # known false positive: the wrapping fixes it
    ("The answer is 1-\\frac1e", "1+\\frac1e", "latex", False),  # ... also when the model writes no $...$
    ("The answer is 1-\\frac{1}{e}", "\\frac{e-1}{e}", "latex", True),  # a sign check must not reject this
    ("The answer is 2x+3", "y=2x+3", "latex", False),  # an equation of a line is asked: an expression is not it
    ("The answer is x+y=5", "y=-x+5", "latex", True),  # the same line written another way
    ("The answer is y=3x+2", "y=2x+3", "latex", False),  # a different line
    ("The answer is y = 2x + 3", "2x+3", "latex", True),  # gold is an expression: "y =" is harmless
    ("The answer is 10\\%", "10", "latex", True),  # decided as for numeric: percent = its number
    ("The answer is 0.1", "10\\%", "latex", False),  # ... and not the fraction
    ("The answer is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}", "latex", True),  # nested braces in a box
    ("The answer is 0.5", "\\frac{1}{2}", "latex", True),  # exact decimal of a fraction
    ("The answer is \\dfrac12", "\\frac{1}{2}", "latex", True),  # \dfrac and brace-less arguments
    ("The answer is [2,5)", "[2,5)", "latex", True),  # intervals
    ("The answer is (2,5)", "[2,5)", "latex", False),  # ... with their bracket kinds
    ("The answer is (3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", "latex", True),  # tuples, \left/\right
    ("The answer is 2\\sqrt{2}", "\\sqrt{8}", "latex", True),  # simplified radicals
    ("The answer is \\frac{2}{3}", "-\\frac{2}{3}", "latex", False),  # signs matter
    ("The answer is Devon", "\\text{Devon}", "latex", True),  # text answers
    # ---- multiple choice ----
    ("The answer is (B)", "B", "choice", True),
    ("The answer is B.", "B", "choice", True),
    ("The answer is b ) 15", "B", "choice", True),  # MathQA's own style
    ("The answer is Option B", "B", "choice", True),
    ("The answer is \\text{(B)}", "B", "choice", True),
    ("The answer is 15", "B", "choice", True),  # no letter: the one option whose value it is
    ("The answer is 15.0", "B", "choice", True),  # ... compared by value
    ("The answer is 16", "B", "choice", False),  # a value that is no option
    ("The answer is a pen", "A", "choice", False),  # the article "a" is not a letter
    ("The answer is (E)", "E", "choice", False),  # a letter beyond the four options
    ("The answer is C", "B", "choice", False),
]


def test_enough_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("text,gold,kind,expected", CASES)
def test_grade(text, gold, kind, expected):
    assert grade(text, {"answer": gold, "kind": kind, "choices": OPTS}) is expected


@contextmanager
def deadline(seconds: float):
    """A per-test time bound: past it, dump every thread's stack and end the test process."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def test_extraction_and_numbers():
    assert final_answer("We get \\boxed{\\frac{1}{2}} in the end") == "\\frac{1}{2}"
    assert final_answer("no answer here") is None
    assert parse_number("-1,234.5 dollars") == pytest.approx(-1234.5)
    assert parse_number("x-5") is None  # a difference, not minus five


def test_items_without_kind_are_numeric():
    assert grade("The answer is 7.", {"answer": "7"})


def test_grade_report_matches_grade_in_order():
    items = [{"answer": g, "kind": k, "choices": OPTS} for _, g, k, _ in CASES]
    texts = [t for t, _, _, _ in CASES]
    with deadline(120):
        out = grade_report(texts, items, workers=2, timeout=10)
    assert out.correct == [e for _, _, _, e in CASES]
    assert (out.timeouts, out.no_answer) == (0, 1)  # "There were 9 apples, 9 in all." states no answer


def test_grade_groups_keeps_shape_and_counts():
    items = [{"answer": "1"}, {"answer": "2", "kind": "latex"}]
    groups = [["The answer is 1", "The answer is 3", "I give up"], ["The Answer is 2", "the answer is"]]
    with deadline(60):
        verdicts, report = grade_groups(groups, items, workers=1)
    assert verdicts == [[True, False, False], [True, False]]
    assert (report.no_answer, report.timeouts) == (2, 0)


def test_the_alarm_stops_a_check_slow_in_python():
    # sympy would try to build a number with ~10^10^8 digits; the alarm stops it in its Python code.
    with deadline(30):
        assert check_limited("9^{9^{9^{9}}}", {"answer": "1", "kind": "latex"}, 0.5) == (False, True)
    assert check_limited("2", {"answer": "2", "kind": "latex"}, 5.0) == (True, False)


def test_pathological_latex_times_out_without_replacing_a_worker():
    items = [{"answer": "1", "kind": "latex"}, {"answer": "2", "kind": "numeric"}, {"answer": "B", "kind": "choice"}]
    texts = ["The answer is $9^{9^{9^{9}}}$.", "The answer is 2.", "The answer is (B)"]
    pool = grading_pool.shared_pool(2)
    before = pool.replaced
    with deadline(60):
        out = grade_report(texts, items, workers=2, timeout=1.0)
    assert out.correct == [False, True, True] and out.timeouts == 1
    assert pool.replaced == before  # the alarm ended it: the worker lives on


def test_a_stuck_worker_is_killed_and_replaced():
    # A stopped process is stuck as hard as one in C code: no alarm, no SIGTERM reaches its Python code.
    pool = grading_pool.shared_pool(1)
    with deadline(60):
        grade_report(["The answer is (A)"], [{"answer": "A", "kind": "choice"}], workers=1)  # started
        stuck = pool.workers[0].proc
        os.kill(stuck.pid, signal.SIGSTOP)
        texts = ["The answer is 1", "The answer is $\\frac12$", "The answer is (C)", "The answer is (D)"]
        items = [{"answer": "1"}, {"answer": "0.5", "kind": "latex"}, {"answer": "C", "kind": "choice"},
                 {"answer": "C", "kind": "choice"}]
        out = grade_report(texts, items, workers=1, timeout=0.5)
    assert out.correct == [True, False, True, False] and out.timeouts == 1  # the replacement graded the rest
    assert stuck.returncode == -signal.SIGKILL and pool.workers[0].proc.pid != stuck.pid


def test_the_pool_is_reused_across_calls():
    items = [{"answer": "\\frac{1}{2}", "kind": "latex"}, {"answer": "B", "kind": "choice", "choices": OPTS}]
    texts = ["The answer is 0.5", "The answer is 15"]
    with deadline(60):
        assert grade_report(texts, items, workers=2).correct == [True, True]
        pids = [w.proc.pid for w in grading_pool.shared_pool(2).workers]
        for _ in range(3):
            assert grade_report(texts, items, workers=2).correct == [True, True]
    assert [w.proc.pid for w in grading_pool.shared_pool(2).workers] == pids


@pytest.mark.parametrize("disposition", ["raise", signal.SIG_IGN])
def test_workers_end_on_sigterm_whatever_the_entrypoint_installed(disposition, capfd):
    # The entrypoint turns SIGTERM into KeyboardInterrupt (imm/main.py); an inherited "ignore"
    # would survive exec. Either way a worker must simply die of the signal.
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt if disposition == "raise" else disposition)
    try:
        pool = grading_pool.GradingPool(1)
        with deadline(60):
            out = pool.run([("(A)", {"answer": "A", "kind": "choice"})], timeout=5.0)
            worker = pool.workers[0].proc
            worker.terminate()
            assert worker.wait() == -signal.SIGTERM
        pool.close()
    finally:
        signal.signal(signal.SIGTERM, old)
    assert out == [(True, False)]
    assert "KeyboardInterrupt" not in capfd.readouterr().err


def test_bad_arguments_fail():
    with pytest.raises(ValueError):
        grade_report(["a"], [], workers=1)
    with pytest.raises(ValueError):
        grade_report(["a"], [{"answer": "1"}], workers=0)


def test_filtering_reports_no_answer_and_timeouts():
    from imm.grading.filtering import keep_correct

    items = [{"question": "a", "answer": "7"}, {"question": "b", "answer": "1", "kind": "latex"}]
    samples = [[{"text": "The Answer is 7", "temperature": 0.2}, {"text": "I think 7", "temperature": 0.4}],
               [{"text": "The answer is $9^{9^{9^{9}}}$.", "temperature": 0.2},
                {"text": "so \\fbox{1}", "temperature": 0.4}]]
    with deadline(60):
        kept, y = keep_correct(items, samples, iteration=0)
    assert [k["response"] for k in kept] == ["The Answer is 7", "so \\fbox{1}"]
    assert (y.kept, y.no_answer, y.timeouts) == (2, 1, 1)
