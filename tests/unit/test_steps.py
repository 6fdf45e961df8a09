"""Step-level verification of testbed solutions: hand-written sound, shortcut, flawed and wrong
solutions of every family, the hand-labelled set, and the world's own styles over generated items."""

import pytest

from imm.data.world.problems import FAMILIES, WORLDS, make_split, render, sample_problems
from imm.data.world import agreement
from imm.data.world.steps import (FORMS, Arithmetic, arithmetic, check_steps, equations, form,
                                     procedure, step_shares)
from imm.grading.checks import grade

ID = {"question": "Tom has 23 apples. He buys 5 more and then gives away 3. "
                  "How many apples does he have now?",
      "answer": "25", "solution": "23 + 5 = 28. 28 - 3 = 25. The answer is 25.", "family": "id_addsub"}
WORDING = {"question": "There are 40 marbles in a box. Amy takes out 12 and puts in 7. "
                       "How many marbles are in the box now?",
           "answer": "35", "solution": "Step 1: 40 - 12 = 28. Step 2: 28 + 7 = 35. The answer is 35.",
           "family": "ood_wording"}
MULT = {"question": "Mia buys 3 bags of cookies with 4 cookies in each bag. She eats 2. "
                    "How many cookies does she have now?",
        "answer": "10", "solution": "Mia gets 3 * 4 = 12 cookies. Then she has 12 - 2 = 10 cookies. "
                                    "The answer is 10.", "family": "ood_mult"}
MULTISTEP = {"question": "Leo has 20 stamps. He buys 3 more, gives away 4, finds 6 more, and then "
                         "loses 2. How many stamps does he have now?",
             "answer": "23", "solution": "20 + 3 = 23. 23 - 4 = 19. 19 + 6 = 25. 25 - 2 = 23. "
                                         "The answer is 23.", "family": "ood_multistep"}
BALANCED = {"question": "Amy has 13 books. She buys 6 more and then loses 6. "
                        "How many books does she have now?",
            "answer": "13", "solution": "13 + 6 = 19. 19 - 6 = 13. The answer is 13.",
            "family": "id_addsub_bal"}

CASES = [
    # in-domain
    (ID, "23 + 5 = 28. 28 - 3 = 25. The answer is 25.", "sound"),
    (ID, "Tom starts with 23 apples. Then he has 23 + 5 = 28 apples. Then he has 28 - 3 = 25 apples. "
         "The answer is 25.", "sound"),
    (ID, "Tom gains 5 and loses 3, so the change is 5 - 3 = 2. 23 + 2 = 25. The answer is 25.", "sound"),
    (ID, "23 + 5 = 28. 28 - 3 = 25. The answer is 25. Question: Sam has 12 pens.", "sound"),
    (ID, "23 + 5 - 3 = 25. The answer is 25.", "sound"),         # one equation, every operation
    (ID, "The answer is 25.", "shortcut"),
    (ID, "23 + 5 = 27. 27 - 3 = 25. The answer is 25.", "flawed"),     # wrong arithmetic
    (ID, "23 + 3 = 26. 26 - 1 = 25. The answer is 25.", "flawed"),     # numbers not in the problem
    (ID, "23 + 5 = 28. The answer is 25.", "shortcut"),                # the last step in the head
    (ID, "23 - 3 = 20. 20 + 5 = 25. The answer is 25.", "sound"),      # any order
    (ID, "Tom gains 5 and loses 3, so the change is 5 + 3 = 8. 23 + 2 = 25. The answer is 25.",
     "flawed"),
    (ID, "23 + 5 = 28. 28 - 3 = 24. The answer is 24.", "wrong"),
    (ID, "23 + 5 = 28. 28 - 3 = 25.", "wrong"),                        # no final answer
    # out of domain: other wording, bigger changes
    (WORDING, "Step 1: 40 - 12 = 28. Step 2: 28 + 7 = 35. The answer is 35.", "sound"),
    (WORDING, "The box gains 7 and loses 12, so the loss is 12 - 7 = 5. 40 - 5 = 35. "
              "The answer is 35.", "sound"),
    (WORDING, "40 - 12 + 7 = 35. The answer is 35.", "sound"),
    (WORDING, "40 - 5 = 35. The answer is 35.", "shortcut"),           # the net change, never written
    (WORDING, "40 + 12 = 52. 52 - 7 = 35. The answer is 35.", "flawed"),  # signs swapped, wrong sum
    (WORDING, "40 - 12 = 28. 28 + 7 = 34. The answer is 34.", "wrong"),
    # out of domain: a product, then a change
    (MULT, "3 * 4 = 12. 12 - 2 = 10. The answer is 10.", "sound"),
    (MULT, "4 * 3 = 12. 12 - 2 = 10. The answer is 10.", "sound"),
    (MULT, "3 * 4 - 2 = 10. The answer is 10.", "sound"),
    (MULT, "4 + 4 + 4 = 12. 12 - 2 = 10. The answer is 10.", "sound"),  # repeated addition
    (MULT, "12 - 2 = 10. The answer is 10.", "shortcut"),             # the product in the head
    (MULT, "The answer is 10.", "shortcut"),
    (MULT, "3 + 4 = 7. 7 + 3 = 10. The answer is 10.", "flawed"),      # added instead of multiplied
    (MULT, "3 * 4 = 12. The answer is 10.", "shortcut"),
    (MULT, "3 * 4 = 12. 12 + 2 = 14. 14 - 4 = 10. The answer is 10.", "flawed"),  # an operation it has not
    (MULT, "3 + 4 = 7. 7 - 2 = 5. The answer is 5.", "wrong"),
    # out of domain: three or four changes
    (MULTISTEP, "20 + 3 = 23. 23 - 4 = 19. 19 + 6 = 25. 25 - 2 = 23. The answer is 23.", "sound"),
    (MULTISTEP, "Step 1: 20 + 3 = 23. Step 2: 23 - 4 = 19. Step 3: 19 + 6 = 25. Step 4: 25 - 2 = 23. "
                "The answer is 23.", "sound"),
    (MULTISTEP, "20 + 3 - 4 + 6 - 2 = 23. The answer is 23.", "sound"),
    (MULTISTEP, "20 + 3 - 4 = 19. 19 + 6 - 2 = 23. The answer is 23.", "sound"),
    (MULTISTEP, "20 + 3 = 23. The answer is 23.", "shortcut"),         # stopped early: the rest cancels
    (MULTISTEP, "20 + 3 = 23. 23 + 4 = 27. 27 - 6 = 21. 21 + 2 = 23. The answer is 23.",
     "flawed"),                                                      # three signs flipped: luck
    (MULTISTEP, "20 + 3 = 23. 23 - 4 = 19. 19 + 6 = 25. 25 - 2 = 23. The answer is 25.", "wrong"),
    # the second world's ID family: a balanced story, where copying the start is right
    (BALANCED, "13 + 6 = 19. 19 - 6 = 13. The answer is 13.", "sound"),
    (BALANCED, "Amy gains 6 and loses 6, so the change is 6 - 6 = 0. 13 + 0 = 13. The answer is 13.",
     "sound"),
    (BALANCED, "The answer is 13.", "shortcut"),                      # copied the start
    (BALANCED, "13 + 6 - 6 = 13. The answer is 13.", "sound"),
    (BALANCED, "13 - 6 = 7. 7 + 6 = 13. The answer is 13.", "sound"),     # either order, whatever the gold
    (BALANCED, "13 + 6 = 18. 18 - 6 = 13. The answer is 13.", "flawed"),  # wrong sum, right by luck
    (BALANCED, "13 + 6 = 19. 19 - 5 = 14. The answer is 14.", "wrong"),
]


@pytest.mark.parametrize("item,text,expected", CASES)
def test_hand_written_solutions(item, text, expected):
    assert check_steps(text, item) == expected


def test_every_family_has_every_class_among_the_cases():
    seen = {(item["family"], cls) for item, _, cls in CASES}
    testbed = {f for id_family, ood in WORLDS.values() for f in (id_family, *ood)}  # the worlds' families
    assert seen >= {(f, c) for f in testbed for c in ("sound", "shortcut", "flawed", "wrong")}


def test_the_arithmetic_is_read_from_the_question_alone():
    assert arithmetic(ID) == [Arithmetic((23,), (("+", 5), ("-", 3)))]
    assert arithmetic(MULT) == [Arithmetic((3, 4), (("-", 2),))]
    assert arithmetic(MULTISTEP)[0].changes == (("+", 3), ("-", 4), ("+", 6), ("-", 2))
    assert arithmetic(WORDING) == [Arithmetic((40,), (("-", 12), ("+", 7)))]
    assert arithmetic(dict(ID, solution="")) == arithmetic(ID)
    with pytest.raises(ValueError, match="cannot read"):
        arithmetic(dict(ID, answer="99"))


def test_hand_labelled_agreement():
    """The checker against the hand labels (written before it): at least 95% agree, and no valid
    derivation (labelled sound) is called flawed."""
    result = agreement.agreement(check_steps, agreement.load())
    assert result.n >= 100
    assert result.overall >= 0.95, agreement.table("checker", result)
    assert result.sound_called_flawed == 0


def test_hand_labelled_set_covers_every_form_and_class():
    rows = agreement.load()
    forms = {r.form for r in rows}
    assert forms >= {"canonical", "commuted", "net", "repeated_addition", "chained", "merged", "restated",
                     "numbered", "slips_cancel", "lucky_copy", "truncated", "trailing_text"}
    assert {r.label for r in rows} == {"sound", "shortcut", "flawed", "wrong"}
    assert {r.item["family"] for r in rows} == {"id_addsub", "ood_wording", "ood_mult", "ood_multistep"}


def test_wrong_exactly_when_the_grader_says_wrong():
    for r in agreement.load():
        assert (check_steps(r.text, r.item) == "wrong") == (not grade(r.text, r.item)), r.text


def test_the_class_does_not_depend_on_the_gold_rendering():
    rows = agreement.load()
    for p in sample_problems("ood_wording", "train", 12, seed=5) + sample_problems("id_addsub", "train", 12, 6):
        golds = [render(p, style) for style in ("steps", "labeled", "story", "net")]
        texts = golds + [render(p, "merged"), render(p, "direct")]
        for text in texts:
            classes = {check_steps(text, {"question": p.question, "answer": str(p.answer), "solution": g})
                       for g in golds}
            assert len(classes) == 1, (text, classes)
    for r in rows:
        assert check_steps(r.text, dict(r.item, solution="")) == check_steps(r.text, r.item)


def test_chained_and_labelled_equations_are_read_link_by_link():
    eqs = equations("Step 1: 3 * 4 = 12 - 2 = 10. 2) 23 + 5 - 3 = 28 - 3 = 25. 7 x 2 = 14. 2 + 3 * 4 = 20")
    assert [(e.numbers, e.result, e.holds) for e in eqs] == [
        ((3, 4), 12, True), ((12, 2), 10, True), ((23, 5, 3), 25, True), ((7, 2), 14, True),
        ((2, 3, 4), 20, False)]


def test_procedure_reads_the_operations_with_the_arithmetic_aside():
    assert procedure("23 + 5 = 29. 29 - 3 = 26. The answer is 26.", ID)       # a digit slip
    assert procedure("5 - 3 = 2. 23 + 2 = 25. The answer is 25.", ID)
    assert not procedure("23 + 5 = 28. The answer is 28.", ID)                # a step too few
    assert not procedure("3 + 4 = 7. 7 - 2 = 5. The answer is 5.", MULT)       # no product
    assert not procedure("The answer is 23.", ID)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_world_styles_over_generated_items(family):
    """Every style the world renders that writes the problem's operations is sound (merged ones too),
    the bare answer is a shortcut, and each style has its form."""
    expected = {"steps": "canonical", "labeled": "canonical", "story": "canonical", "merged": "merged",
                "direct": "direct"}
    for p in sample_problems(family, "train", 60, seed=4):
        item = {"question": p.question, "answer": str(p.answer), "solution": render(p, "steps")}
        for style in ("steps", "labeled", "story", "net", "merged"):
            assert check_steps(render(p, style), item) == "sound", (style, p.question)
        assert check_steps(render(p, "direct"), item) == "shortcut"
        for style, name in expected.items():
            if style != "merged" or len(p.ops) + len(p.start) > 2:
                assert form(render(p, style), item) == name, (style, p.question)
        if len(p.ops) == 2 and {s for s, _ in p.ops} == {"+", "-"}:
            assert form(render(p, "net"), item) in ("net", "canonical")
        off_by_one = render(p, "steps").replace(f"is {p.answer}.", f"is {p.answer + 1}.")
        assert check_steps(off_by_one, item) == "wrong"


def test_forms_of_the_alternative_routes():
    assert form("23 - 3 = 20. 20 + 5 = 25. The answer is 25.", ID) == "commuted"
    assert form("5 - 3 = 2. 23 + 2 = 25. The answer is 25.", ID) == "net"
    assert form("4 + 4 + 4 = 12. 12 - 2 = 10. The answer is 10.", MULT) == "repeated_addition"
    assert form("3 * 4 = 12 - 2 = 10. The answer is 10.", MULT) == "chained"
    assert form("9 + 9 = 18. The answer is 25.", ID) == "other"
    assert set(FORMS) >= {"canonical", "commuted", "net", "merged", "chained", "repeated_addition", "direct"}


def test_step_shares_among_correct_samples():
    texts = ["23 + 5 = 28. 28 - 3 = 25. The answer is 25.", "The answer is 25.",
             "23 + 5 = 27. 27 - 3 = 25. The answer is 25.", "The answer is 24.",
             "3 * 4 = 12. 12 - 2 = 10. The answer is 10."]
    items = [ID, ID, ID, ID, MULT]
    assert step_shares(texts, items) == {"sound": 0.5, "shortcut": 0.25, "flawed": 0.25, "n_correct": 4}
    assert step_shares(["The answer is 1."], [ID]) == {"sound": 0.0, "shortcut": 0.0, "flawed": 0.0,
                                                       "n_correct": 0}
    with pytest.raises(ValueError):
        step_shares(texts, items[:2])
