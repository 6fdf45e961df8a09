"""Final-answer extraction and comparison by value."""

import pytest

from imm.grading.answers import cut_at_stop, extract_answer, last_boxed
from imm.grading.checks import grade


@pytest.mark.parametrize("text,expected", [
    ("3 + 4 = 7. The answer is 7.", "7"),
    ("The answer is 12.\nQuestion: Tom has 3 apples. The answer is 5.", "12"),  # cut at the next question
    ("First the answer is 3. Then 3 * 2 = 6. The answer is 6.", "6"),  # the last one counts
    ("The answer is -4.", "-4"),
    ("The answer is 1,234.", "1,234"),
    ("The answer is 2.5.", "2.5"),
    ("so we get \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("no final answer here", None),
    ("The answer is: 9", "9"),
])
def test_extract(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("pred,gold,ok", [
    ("7", "7", True), ("7.0", "7", True), ("1,234", "1234", True), ("$5", "5", True),
    ("3/4", "0.75", True), ("-4", "4", False), ("8", "7", False), (None, "7", False),
    ("abc", "ABC", True), ("1e3", "1000", False),
])
def test_is_correct(pred, gold, ok):
    text = "no final answer" if pred is None else f"The answer is {pred}."
    assert grade(text, {"answer": gold}) is ok


def test_cut_and_boxed():
    assert cut_at_stop("a Q: b Problem: c") == "a "
    assert last_boxed("\\boxed{1} and \\boxed{x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed{unclosed") is None
