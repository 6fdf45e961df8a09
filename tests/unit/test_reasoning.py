"""Step shares of right answers and kept samples, and per-item transitions between two evaluations."""

import pytest

from imm.analysis.reasoning import item_records, kept_shares, kept_step_classes, step_metrics, transitions

ID = {"question": "Tom has 23 apples. He buys 5 more and then gives away 3. How many apples does he have now?",
      "answer": "25", "solution": "23 + 5 = 28. 28 - 3 = 25. The answer is 25.", "family": "id_addsub"}
MULT = {"question": "Mia buys 3 bags of cookies with 4 cookies in each bag. She eats 2. "
                    "How many cookies does she have now?",
        "answer": "10", "solution": "3 * 4 = 12. 12 - 2 = 10. The answer is 10.", "family": "ood_mult"}
BENCH = {"question": "What is 6 times 7?", "answer": "42"}  # a benchmark item: no step structure

SOUND, SHORTCUT = "23 + 5 = 28. 28 - 3 = 25. The answer is 25.", "The answer is 25."
FLAWED, WRONG = "23 + 5 = 27. 27 - 3 = 25. The answer is 25.", "23 + 5 = 28. 28 - 3 = 24. The answer is 24."
GROUPS = {"id": ["id_addsub"], "ood": ["ood_mult", "bench"]}


def test_item_records_keep_the_first_verdict_the_text_and_step_classes():
    outs = [[SOUND, SHORTCUT, WRONG], [WRONG, FLAWED, SOUND]]
    rows = item_records("id_addsub", outs, [ID, ID], [[True, True, False], [False, True, True]])
    assert [(r["index"], r["n"], r["correct"], r["right"]) for r in rows] == [(0, 3, 2, True), (1, 3, 2, False)]
    assert rows[0]["text"] == SOUND and rows[1]["text"] == WRONG
    assert rows[0]["steps"] == ["sound", "shortcut", "wrong"] and rows[1]["steps"] == ["wrong", "flawed", "sound"]
    (bench,) = item_records("bench", [["The answer is 42."]], [BENCH], [[True]])
    assert "steps" not in bench and bench["right"]


def test_step_metrics_per_set_and_pooled_by_group():
    rows = (item_records("id_addsub", [[SOUND], [SHORTCUT], [FLAWED], [WRONG]], [ID] * 4,
                         [[True], [True], [True], [False]])
            + item_records("ood_mult", [["3 * 4 = 12. 12 - 2 = 10. The answer is 10."], ["The answer is 10."]],
                           [MULT] * 2, [[True], [True]])
            + item_records("bench", [["The answer is 42."]], [BENCH], [[True]]))
    m = step_metrics(rows, GROUPS)
    # id_addsub: three right answers, one of each class; the wrong one is not counted
    assert m["id_addsub/sound_share"] == m["id_addsub/shortcut_share"] == m["id_addsub/flawed_share"] == \
        pytest.approx(1 / 3)
    assert m["ood_mult/sound_share"] == 0.5 and m["ood_mult/shortcut_share"] == 0.5 and m["ood_mult/flawed_share"] == 0
    assert m["id/sound_share"] == pytest.approx(1 / 3)
    assert m["ood/sound_share"] == 0.5  # pooled over ood_mult's answers; the benchmark set has no classes
    assert not any(k.startswith("bench/") for k in m)


def test_step_metrics_of_a_model_with_no_right_answer_are_zero():
    rows = item_records("id_addsub", [[WRONG]], [ID], [[False]])
    assert step_metrics(rows, GROUPS) == {"id_addsub/sound_share": 0.0, "id_addsub/shortcut_share": 0.0,
                                          "id_addsub/flawed_share": 0.0, "id/sound_share": 0.0,
                                          "id/shortcut_share": 0.0, "id/flawed_share": 0.0}
    assert step_metrics(item_records("bench", [["The answer is 42."]], [BENCH], [[True]]), GROUPS) == {}


def test_kept_samples_classes_and_shares():
    kept = [{"question": ID["question"], "response": r} for r in (SOUND, SOUND, SHORTCUT, FLAWED)]
    classes = kept_step_classes(kept, [MULT, ID])
    assert classes == ["sound", "sound", "shortcut", "flawed"]
    assert kept_shares(classes) == {"sound_share": 0.5, "shortcut_share": 0.25, "flawed_share": 0.25}
    bench = kept_step_classes([{"question": BENCH["question"], "response": "The answer is 42."}], [BENCH])
    assert bench == [None] and kept_shares(bench) == {}


def test_transitions_count_forgotten_and_newly_solved_items():
    def rows(set_name, rights):
        return [{"set": set_name, "index": i, "right": r} for i, r in enumerate(rights)]

    before = rows("id_addsub", [True, True, False, False]) + rows("ood_mult", [True, True, True, False]) \
        + rows("bench", [False, False])
    after = rows("id_addsub", [True, False, True, False]) + rows("ood_mult", [False, False, True, True]) \
        + rows("bench", [True, True])
    t = transitions(before, after, GROUPS)
    assert t["id_addsub/forgotten"] == 0.25 and t["id_addsub/newly_solved"] == 0.25
    assert t["ood_mult/forgotten"] == 0.5 and t["ood_mult/newly_solved"] == 0.25
    assert t["bench/forgotten"] == 0.0 and t["bench/newly_solved"] == 1.0
    assert t["ood/forgotten"] == 0.25 and t["ood/newly_solved"] == 0.625  # the mean over its two sets
    assert transitions(before, before, GROUPS)["ood/forgotten"] == 0.0  # a model against itself
