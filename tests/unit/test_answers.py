"""Reading a sample's final answer: the one extractor, the stop strings, the boxed forms."""

import pytest

from imm.grading.answers import STOP_STRINGS, cut_at_stop, final_answer, last_boxed, cut_sample, has_ended, trails_answer
from imm.grading.checks import grade

# A MATH-style sample the way a base model continues the paper's prompt: the solution mentions
# "PQ:QR" and "Q:" mid-line, then the model starts the next exemplar.
MATH_SAMPLE = ("Since $PQ:QR = 2:3$ and Q: the midpoint of $PR$ is not needed, $QR = \\frac{3}{5} "
               "\\cdot 10 = 6$.\nThe answer is 6\n\nQuestion: Find $x$ if $2x = 8$.\n"
               "A: Let's think step by step.\nThe answer is 4")


@pytest.mark.parametrize("text,expected", [
    ("3 + 4 = 7. The answer is 7.", "7"),
    ("The answer is 12.\nQuestion: Tom has 3 apples. The answer is 5.", "12"),  # cut at the next question
    ("First the answer is 3. Then 3 * 2 = 6. The answer is 6.", "6"),  # the last statement counts
    ("The answer is -4.", "-4"),
    ("The answer is 1,234.", "1,234"),
    ("The answer is 2.5.", "2.5"),
    ("The answer is: 9", "9"),
    ("so we get \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("no final answer here", None),
    # one rule for both forms: the later final-answer statement wins
    ("The answer is \\boxed{5}.", "5"),  # a box inside the statement gives its content
    ("The answer is $\\boxed{5}$.", "5"),
    ("The answer is 3. Later: \\boxed{4}", "4"),  # the box comes later
    ("So \\boxed{4}. Checking again, the answer is 3.", "3"),  # the statement comes later
    # capitalisation and wording drift
    ("The Answer is 7", "7"),
    ("THE ANSWER IS 7.", "7"),
    ("The final answer is $12$.", "$12$"),
    # Hendrycks' other boxes
    ("so $x = \\fbox{3}$.", "3"),
    ("so $x = \\boxed 3$.", "3"),
    ("The answer is", None),  # a statement with nothing after it states no answer
])
def test_final_answer(text, expected):
    assert final_answer(text) == expected


def test_stop_strings_are_exemplar_starts_only():
    assert all(stop.startswith("\n") for stop in STOP_STRINGS)
    assert final_answer(MATH_SAMPLE) == "6"
    assert cut_at_stop(MATH_SAMPLE).endswith("The answer is 6\n")
    assert "PQ:QR" in cut_at_stop(MATH_SAMPLE) and "Q: the midpoint" in cut_at_stop(MATH_SAMPLE)
    # the paper's separators: a new "Question:" and a new "### Instruction"
    assert cut_at_stop("x = 2.\nThe answer is 2\n\n### Instruction:\nWhat is 1+1?") == "x = 2.\nThe answer is 2\n"
    assert cut_at_stop("The answer is 5\nProblem: Find y.") == "The answer is 5"
    assert cut_at_stop("Question: what next?") == ""  # a new exemplar at the very start
    assert cut_at_stop("a Q: b Problem: c") == "a Q: b Problem: c"  # mid-line: part of the solution


def test_callers_own_stops_cut_like_the_default():
    assert cut_at_stop("39 + 2 = 41", ("=",)) == "39 + 2 "
    assert cut_at_stop("no stop here", ("=",)) == "no stop here"


def test_last_boxed():
    assert last_boxed("\\boxed{1} and \\boxed{x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed{unclosed") is None
    assert last_boxed("\\fbox{1} then \\boxed {2}") == "2"
    assert last_boxed("$\\boxed 5$ and more") == "5"


@pytest.mark.parametrize("pred,gold,ok", [
    ("7", "7", True), ("7.0", "7", True), ("1,234", "1234", True), ("$5", "5", True),
    ("3/4", "0.75", True), ("-4", "4", False), ("8", "7", False), (None, "7", False),
    ("abc", "ABC", True), ("1e3", "1000", False),
])
def test_is_correct(pred, gold, ok):
    text = "no final answer" if pred is None else f"The answer is {pred}."
    assert grade(text, {"answer": gold}) is ok


@pytest.mark.parametrize("text, kept", [
    # a real instruct model runs on past its answer into another response of the prompt format
    ("14 + 3 = 17.\nThe answer is 17\n\n### Response: Let's think step by step. 14 + 3 = 17",
     "14 + 3 = 17.\nThe answer is 17"),
    ("The answer is 17. So Tom has 17 apples.", "The answer is 17."),
    ("The answer is 3.5 apples. Then more", "The answer is 3.5 apples."),  # a decimal point is no sentence end
    ("The answer is:\n12\nmore", "The answer is:\n12"),
    ("So it is 5 + 2 = 7.", "So it is 5 + 2 = 7."),  # no answer statement: nothing to cut
    ("The answer is 7\nQuestion: next one", "The answer is 7"),
    ("\n3 + 4 = 7.\nThe answer is 7", "\n3 + 4 = 7.\nThe answer is 7"),  # leading whitespace stays (SFT joins it)
])
def test_cut_sample_ends_after_the_first_answer_statement(text, kept):
    assert cut_sample(text) == kept
    assert not trails_answer(kept)
    assert cut_sample(text, at_answer=False) == cut_at_stop(text).rstrip()


def test_a_sample_has_ended_only_once_its_answer_terminator_is_written():
    stops = STOP_STRINGS
    assert not has_ended("The answer is 2", stops, True)  # "21" may follow
    assert not has_ended("The answer is 21.", stops, True)  # "21.5" may follow
    assert has_ended("The answer is 21. ", stops, True) and has_ended("The answer is 21\n", stops, True)
    assert not has_ended("The answer is 21\n", stops, False)  # without at_answer only stop strings end it
    assert has_ended("x\n### Response: again", stops, False)
    assert trails_answer("The answer is 4.\n\n### Response: 2 + 2") and not trails_answer("The answer is 4.\n")
