"""Step-level verification of testbed solutions: hand-written sound, shortcut, flawed and wrong
solutions of every family, and the world's own styles over many generated items."""

import pytest

from imm.data.world.problems import FAMILIES, make_split, render, sample_problems
from imm.data.world.steps import Arithmetic, arithmetic, check_steps, equations, step_shares

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
    (ID, "23 + 5 - 3 = 25. The answer is 25.", "shortcut"),
    (ID, "The answer is 25.", "shortcut"),
    (ID, "23 + 5 = 27. 27 - 3 = 25. The answer is 25.", "flawed"),     # wrong arithmetic
    (ID, "23 + 3 = 26. 26 - 1 = 25. The answer is 25.", "flawed"),     # numbers not in the problem
    (ID, "23 + 5 = 28. The answer is 25.", "flawed"),                  # a step left out
    (ID, "23 - 3 = 20. 20 + 5 = 25. The answer is 25.", "flawed"),     # out of the story's order
    (ID, "Tom gains 5 and loses 3, so the change is 5 + 3 = 8. 23 + 2 = 25. The answer is 25.",
     "flawed"),
    (ID, "23 + 5 = 28. 28 - 3 = 24. The answer is 24.", "wrong"),
    (ID, "23 + 5 = 28. 28 - 3 = 25.", "wrong"),                        # no final answer
    # out of domain: other wording, bigger changes
    (WORDING, "Step 1: 40 - 12 = 28. Step 2: 28 + 7 = 35. The answer is 35.", "sound"),
    (WORDING, "The box gains 7 and loses 12, so the loss is 12 - 7 = 5. 40 - 5 = 35. "
              "The answer is 35.", "sound"),
    (WORDING, "40 - 12 + 7 = 35. The answer is 35.", "shortcut"),
    (WORDING, "40 - 5 = 35. The answer is 35.", "flawed"),             # the net change, never derived
    (WORDING, "40 + 12 = 52. 52 - 7 = 35. The answer is 35.", "flawed"),  # signs swapped, wrong sum
    (WORDING, "40 - 12 = 28. 28 + 7 = 34. The answer is 34.", "wrong"),
    # out of domain: a product, then a change
    (MULT, "3 * 4 = 12. 12 - 2 = 10. The answer is 10.", "sound"),
    (MULT, "4 * 3 = 12. 12 - 2 = 10. The answer is 10.", "sound"),
    (MULT, "3 * 4 - 2 = 10. The answer is 10.", "shortcut"),
    (MULT, "The answer is 10.", "shortcut"),
    (MULT, "3 + 4 = 7. 7 + 3 = 10. The answer is 10.", "flawed"),      # added instead of multiplied
    (MULT, "3 * 4 = 12. The answer is 10.", "flawed"),
    (MULT, "3 + 4 = 7. 7 - 2 = 5. The answer is 5.", "wrong"),
    # out of domain: three or four changes
    (MULTISTEP, "20 + 3 = 23. 23 - 4 = 19. 19 + 6 = 25. 25 - 2 = 23. The answer is 23.", "sound"),
    (MULTISTEP, "Step 1: 20 + 3 = 23. Step 2: 23 - 4 = 19. Step 3: 19 + 6 = 25. Step 4: 25 - 2 = 23. "
                "The answer is 23.", "sound"),
    (MULTISTEP, "20 + 3 - 4 + 6 - 2 = 23. The answer is 23.", "shortcut"),
    (MULTISTEP, "20 + 3 - 4 = 19. 19 + 6 - 2 = 23. The answer is 23.", "shortcut"),
    (MULTISTEP, "20 + 3 = 23. The answer is 23.", "flawed"),           # stopped after one step: luck
    (MULTISTEP, "20 + 3 = 23. 23 + 4 = 27. 27 - 6 = 21. 21 + 2 = 23. The answer is 23.",
     "flawed"),                                                      # three signs flipped: luck
    (MULTISTEP, "20 + 3 = 23. 23 - 4 = 19. 19 + 6 = 25. 25 - 2 = 23. The answer is 25.", "wrong"),
    # the second world's ID family: a balanced story, where copying the start is right
    (BALANCED, "13 + 6 = 19. 19 - 6 = 13. The answer is 13.", "sound"),
    (BALANCED, "Amy gains 6 and loses 6, so the change is 6 - 6 = 0. 13 + 0 = 13. The answer is 13.",
     "sound"),
    (BALANCED, "The answer is 13.", "shortcut"),                      # copied the start
    (BALANCED, "13 + 6 - 6 = 13. The answer is 13.", "shortcut"),
    (BALANCED, "13 + 6 = 18. 18 - 6 = 13. The answer is 13.", "flawed"),  # wrong sum, right by luck
    (BALANCED, "13 + 6 = 19. 19 - 5 = 14. The answer is 14.", "wrong"),
]


@pytest.mark.parametrize("item,text,expected", CASES)
def test_hand_written_solutions(item, text, expected):
    assert check_steps(text, item) == expected


def test_every_family_has_every_class_among_the_cases():
    seen = {(item["family"], cls) for item, _, cls in CASES}
    assert seen >= {(f, c) for f in FAMILIES for c in ("sound", "shortcut", "flawed", "wrong")}


def test_the_arithmetic_is_read_from_the_item():
    assert arithmetic(ID) == [Arithmetic((23,), (("+", 5), ("-", 3)))]
    assert arithmetic(MULT) == [Arithmetic((3, 4), (("-", 2),))]
    assert arithmetic(MULTISTEP)[0].changes == (("+", 3), ("-", 4), ("+", 6), ("-", 2))


def test_net_style_gold_with_equal_changes_accepts_either_order():
    item = {"question": "A shop had 30 cards. It got 9 new ones and sold 9. How many cards does the "
                        "shop have?", "answer": "30", "family": "ood_wording",
            "solution": "The shop gains 9 and loses 9, so the change is 9 - 9 = 0. 30 + 0 = 30. "
                        "The answer is 30."}
    assert len(arithmetic(item)) == 2
    assert check_steps("30 + 9 = 39. 39 - 9 = 30. The answer is 30.", item) == "sound"
    assert check_steps("30 - 9 = 21. 21 + 9 = 30. The answer is 30.", item) == "sound"


def test_an_item_whose_gold_is_not_sound_is_refused():
    bad = dict(ID, solution="23 + 4 = 27. 27 - 2 = 25. The answer is 25.")
    with pytest.raises(ValueError, match="cannot read"):
        arithmetic(bad)


def test_equations_respect_products_before_sums():
    eqs = equations("3 * 4 + 2 = 14, 2 + 3 * 4 = 14, 2 + 3 * 4 = 20, 7 x 2 = 14")
    assert [e.holds for e in eqs] == [True, True, False, True]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_world_styles_over_generated_items(family):
    """Every full style the world renders is sound, its shortcut styles are shortcuts, and each
    split's gold solutions are sound."""
    for item in make_split(family, "test", 100, seed=3):
        assert check_steps(item["solution"], item) == "sound"
    for p in sample_problems(family, "train", 60, seed=4):
        item = {"question": p.question, "answer": str(p.answer), "solution": render(p, "steps")}
        for style in ("steps", "labeled", "story", "net"):
            assert check_steps(render(p, style), item) == "sound", (style, p.question)
        for style in ("merged", "direct"):
            assert check_steps(render(p, style), item) == "shortcut", (style, p.question)
        off_by_one = render(p, "steps").replace(f"is {p.answer}.", f"is {p.answer + 1}.")
        assert check_steps(off_by_one, item) == "wrong"


def test_step_shares_among_correct_samples():
    texts = ["23 + 5 = 28. 28 - 3 = 25. The answer is 25.", "The answer is 25.",
             "23 + 5 = 28. The answer is 25.", "The answer is 24.",
             "3 * 4 = 12. 12 - 2 = 10. The answer is 10."]
    items = [ID, ID, ID, ID, MULT]
    assert step_shares(texts, items) == {"sound": 0.5, "shortcut": 0.25, "flawed": 0.25, "n_correct": 4}
    assert step_shares(["The answer is 1."], [ID]) == {"sound": 0.0, "shortcut": 0.0, "flawed": 0.0,
                                                       "n_correct": 0}
    with pytest.raises(ValueError):
        step_shares(texts, items[:2])
