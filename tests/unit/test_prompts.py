"""The few-shot prompt: the paper's exact layout, the shot count, the exemplar sets."""

import pytest

from imm.data.prompts import EXEMPLARS, build_prompt
from imm.grading.answers import STOP_STRINGS, cut_at_stop, final_answer

ONE_SHOT = """Below is an instruction that describes a task. Write a response that appropriately \
completes the request like given examples below:

Question: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After \
they are done, there will be 21 trees. How many trees did the grove workers plant today?
A: Let's think step by step.
There are 15 trees originally. Then there were 21 trees after some more were planted. So there must \
have been 21 - 15 = 6.
The answer is 6

### Instruction:
Natalia sold clips to 48 of her friends in April. How many clips did she sell?

### Response: Let's think step by step."""


def test_exact_format_one_shot():
    question = "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"
    assert build_prompt(question, "gsm8k", shots=1) == ONE_SHOT


def test_ten_shots_by_default_and_in_order():
    prompt = build_prompt("What is $1+1$?", "math")
    assert prompt.count("Question: ") == 10
    assert prompt.index("Kevin Kangaroo") < prompt.index("x^2+y^2 - 7") < prompt.index("|x|+|y|")
    assert prompt.endswith("### Instruction:\nWhat is $1+1$?\n\n### Response: Let's think step by step.")


@pytest.mark.parametrize("name,family", [("svamp", "gsm8k"), ("math500", "math"), ("mmlu_stem", "choice")])
def test_benchmarks_name_their_exemplars(name, family):
    assert build_prompt("q?", name, shots=3) == build_prompt("q?", family, shots=3)


def test_zero_shots_and_bounds():
    assert "Question:" not in build_prompt("q?", "gsm8k", shots=0)
    with pytest.raises(ValueError):
        build_prompt("q?", "gsm8k", shots=11)
    with pytest.raises(KeyError, match="valid"):
        build_prompt("q?", "nope")


@pytest.mark.parametrize("family", sorted(EXEMPLARS))
def test_every_exemplar_grades_as_its_own_answer(family):
    # A model imitating an exemplar must be graded right: each rendered answer extracts cleanly.
    assert len(EXEMPLARS[family]) == 10
    for question, rationale, answer in EXEMPLARS[family]:
        text = f"{rationale}\nThe answer is {answer}\n\n"
        assert final_answer(text).strip("$") == answer.strip("$")
        assert not any(stop in question + rationale for stop in STOP_STRINGS)


@pytest.mark.parametrize("family", sorted(EXEMPLARS))
def test_a_sample_running_into_the_next_exemplar_is_cut_there(family):
    # What a base model writes when it keeps imitating the prompt: one solution, then the next
    # exemplar. The cut keeps the whole solution (MATH ones hold ":" and "Q" mid-line) and no more.
    prompt = build_prompt("q?", family, shots=3)
    start = prompt.index("Let's think step by step.") + len("Let's think step by step.")
    _, rationale, answer = EXEMPLARS[family][0]
    assert cut_at_stop(prompt[start:]).strip() == f"{rationale}\nThe answer is {answer}"
    assert final_answer(prompt[start:]).strip("$") == answer.strip("$")
