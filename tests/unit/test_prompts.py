"""The few-shot prompt: the paper's exact layout, the shot count, the exemplar sets."""

import pytest

from imm.data.prompts import EXEMPLARS, WORLD, build_prompt
from imm.grading.answers import STOP_STRINGS, cut_at_stop, final_answer

ONE_SHOT = """Below is an instruction that describes a task. Write a response that appropriately \
completes the request like given examples below:

Question: Mark's basketball team scores 25 2 pointers, 8 3 pointers and 10 free throws. Their opponents \
score double the 2 pointers but half the 3 pointers and free throws. What's the total number of points \
scored by both teams added together?
A: Let's think step by step.
Mark's team scores 25 2 pointers, meaning they scored 25*2=50 points in 2 pointers.
His team also scores 6 3 pointers, meaning they scored 8*3=24 points in 3 pointers
They scored 10 free throws, and free throws count as one point so they scored 10*1=10 points in free throws.
All together his team scored 50+24+10=84 points
Mark's opponents scored double his team's number of 2 pointers, meaning they scored 50*2=100 points in 2 pointers.
His opponents scored half his team's number of 3 pointers, meaning they scored 24/2= 12 points in 3 pointers.
They also scored half Mark's team's points in free throws, meaning they scored 10/2=5 points in free throws.
All together Mark's opponents scored 100+12+5=117 points
The total score for the game is both team's scores added together, so it is 84+117=201 points
The answer is 201

### Instruction:
Natalia sold clips to 48 of her friends in April. How many clips did she sell?

### Response: Let's think step by step."""


def test_exact_format_one_shot():
    """The layout of the paper's Table 11, on its second GSM8K exemplar."""
    question = "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"
    two = build_prompt(question, "gsm8k", shots=2)
    angelo = two[two.index("Question: Angelo"):two.index("Question: Mark")]
    assert two.replace(angelo, "") == ONE_SHOT


def test_gsm8k_exemplars_are_the_papers_table_11_first():
    prompt = build_prompt("q?", "gsm8k")
    assert prompt.count("Question: ") == 10
    assert prompt.index("Angelo and Melanie") < prompt.index("Mark's basketball team") < prompt.index("Bella has")
    assert "The answer is 4\n\nQuestion: Mark" in prompt and "The answer is 140\n\n" in prompt


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
    assert len(EXEMPLARS[family]) == (4 if family == "world" else 10)
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


def test_the_world_exemplars_are_no_world_question():
    # The four short exemplars must never be an item a world_nl set can hold (their names and objects
    # are none of the world's), or a model would be shown a test item's answer.
    from imm.data.world import problems

    names = {name for name, _ in problems.NAMES}
    for question, _, _ in WORLD:
        assert question.split()[0] not in names and question.split()[1] not in names
        assert not any(f" {obj}" in question for obj in problems.OBJECTS)
