"""The mechanism rates: per-sample readings of testbed solutions, pooled per test set and group."""

import pytest

from imm.analysis.mechanism import kept_forms, reading, set_metrics

MULT = {"question": "Mia buys 3 bags of cookies with 4 cookies in each bag. She eats 2. "
                    "How many cookies does she have now?", "answer": "10", "solution": "", "family": "ood_mult"}
ID = {"question": "Tom has 23 apples. He buys 5 more and then gives away 3. How many apples does he have now?",
      "answer": "25", "solution": "", "family": "id_addsub"}


def test_a_template_answer_on_a_product_item_is_read_as_such():
    """The ID template applied to a product item: no product, one equation too few, the first number
    copied into the equation, the wrong procedure."""
    r = reading("3 + 2 = 5. The answer is 5.", MULT, at_limit=False)
    assert r == {"copies_first": 0.0, "all_quantities": 0.0, "equation_gap": -1.0, "too_few_equations": 1.0,
                 "right_procedure": 0.0, "form": "other", "ran_to_limit": 0.0, "writes_product": 0.0}
    assert reading("The answer is 3.", MULT)["copies_first"] == 1.0
    assert "ran_to_limit" not in reading("The answer is 3.", MULT)


@pytest.mark.parametrize("text,product,procedure", [
    ("3 * 4 = 12. 12 - 2 = 10. The answer is 10.", 1.0, 1.0),
    ("4 + 4 + 4 = 12. 12 - 2 = 11. The answer is 11.", 1.0, 1.0),   # a slip: the procedure is right
    ("12 - 2 = 10. The answer is 10.", 0.0, 0.0),                   # the product never written
])
def test_product_and_procedure(text, product, procedure):
    r = reading(text, MULT)
    assert (r["writes_product"], r["right_procedure"]) == (product, procedure)


def test_set_metrics_pool_samples_then_average_sets():
    rows = [{"set": "ood_mult", "steps": ["sound"], "mechanism": [reading("3 * 4 = 12. 12 - 2 = 10. The answer is 10.", MULT, True)]},
            {"set": "ood_mult", "steps": ["wrong"], "mechanism": [reading("The answer is 3.", MULT, False)]},
            {"set": "id_addsub", "steps": ["sound"], "mechanism": [reading("23 - 3 = 20. 20 + 5 = 25. The answer is 25.", ID)]}]
    m = set_metrics(rows, {"ood": ["ood_mult", "ood_wording"], "id": ["id_addsub"]})
    assert m["ood_mult/ran_to_limit"] == 0.5 and m["ood_mult/copies_first"] == 0.5
    assert m["ood_mult/form/canonical"] == 0.5 and m["ood_mult/form/direct"] == 0.5
    assert m["ood_mult/right_form/canonical"] == 1.0 and m["ood_mult/right_form/direct"] == 0.0
    assert m["ood/writes_product"] == 0.5 and "id/writes_product" not in m
    assert m["id_addsub/right_form/commuted"] == 1.0 and "id/ran_to_limit" not in m


def test_kept_forms_are_shares_of_the_kept_samples():
    kept = [{"question": ID["question"], "response": "23 + 5 = 28. 28 - 3 = 25. The answer is 25."},
            {"question": ID["question"], "response": "The answer is 25."}]
    shares = kept_forms(kept, [ID])
    assert shares["form/canonical"] == 0.5 and shares["form/direct"] == 0.5 and sum(shares.values()) == 1.0
    assert kept_forms(kept, [{"question": ID["question"], "answer": "25"}]) == {}


def test_forms_are_shares_of_a_sets_samples_and_groups_average_their_sets():
    canonical, direct = "23 + 5 = 28. 28 - 3 = 25. The answer is 25.", "The answer is 25."
    rows = [{"set": "a", "steps": ["sound", "sound", "wrong"],
             "mechanism": [reading(t, ID) for t in (canonical, canonical, direct)]},
            {"set": "b", "steps": ["wrong"], "mechanism": [reading(direct, ID)]}]
    m = set_metrics(rows, {"id": ["a", "b"]})
    assert m["a/form/canonical"] == pytest.approx(2 / 3) and m["a/form/direct"] == pytest.approx(1 / 3)
    assert m["a/right_form/canonical"] == 1.0 and m["b/form/direct"] == 1.0
    assert m["id/form/canonical"] == pytest.approx((2 / 3 + 0) / 2)  # the mean of the two sets' shares
