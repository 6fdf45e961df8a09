"""The benchmark registry: each dataset's raw schema loads to items with the right golds."""

import sys
import types
from pathlib import Path

import pytest

from imm.data.benchmarks import BENCHMARKS, MMLU_STEM, get, load_benchmark, split_options

FIX = Path(__file__).resolve().parents[1] / "fixtures"

# benchmark -> (fixture file, exact golds in order)
GOLDS = {
    "gsm8k": ("gsm8k/test.jsonl", ["18", "14435", "-3"]),  # "#### 14,435": comma stripped
    "math": ("math/test.jsonl", ["\\frac{1}{2}", "63\\pi", "869"]),  # nested braces; the last box
    "math500": ("math500/test.jsonl", ["\\left( 3, \\frac{\\pi}{2} \\right)", "26000"]),
    "mawps": ("mawps/test.jsonl", ["76", "7.5", "-5"]),  # floats 76.0, -5.0
    "svamp": ("svamp/test.json", ["51", "8", "0.25"]),  # floats 51.0, 8.0
    "asdiv": ("asdiv/test.jsonl", ["9", "yes", "2:3", "1250", "2.5"]),  # "9 (apples)", "1,250 (milliliters)"
    "mathqa": ("mathqa/test.jsonl", ["A", "B", "B", "B", "A"]),
    "sat_math": ("sat_math/test.jsonl", ["D", "C", "D"]),
    "sat_math_agieval": ("sat_math_agieval/test.jsonl", ["D", "B"]),
    "mmlu_stem": ("mmlu_stem/test.jsonl", ["B", "D"]),  # anatomy and philosophy rows dropped
}


def test_every_benchmark_has_a_fixture():
    assert set(GOLDS) == set(BENCHMARKS)


@pytest.mark.parametrize("name", sorted(GOLDS))
def test_fixture_loads_to_normalised_items(name):
    path, golds = GOLDS[name]
    items = load_benchmark(name, path=str(FIX / path))
    assert [it["answer"] for it in items] == golds
    kind = get(name).kind
    for it in items:
        assert it["kind"] == kind and it["question"].strip() and it["id"]
        assert ("choices" in it) == (kind == "choice")
        assert len({it["id"] for it in items}) == len(items)


def test_question_texts():
    svamp = load_benchmark("svamp", path=str(FIX / "svamp/test.json"))
    assert svamp[0]["question"] == ("Each pack of dvds costs 76 dollars. If there is a discount of 25 dollars "
                                    "on each pack. How much do you have to pay to buy each pack?")
    assert svamp[0]["id"] == "chal-1"
    asdiv = load_benchmark("asdiv", path=str(FIX / "asdiv/test.jsonl"))
    assert asdiv[0]["question"] == ("Seven red apples and two green apples are in the basket. "
                                    "How many apples are in the basket?")
    agieval = load_benchmark("sat_math_agieval", path=str(FIX / "sat_math_agieval/test.jsonl"))
    assert agieval[1]["question"].startswith("A store sells pens")  # the passage comes first


def test_multiple_choice_formatting():
    items = load_benchmark("mathqa", path=str(FIX / "mathqa/test.jsonl"))
    assert items[1]["question"].endswith(
        "$ 20.00 ?\nAnswer Choices: (A) $ 10.00 (B) $ 11.20 (C) $ 14.40 (D) $ 16.00 (E) $ 18.00")
    assert items[1]["choices"][1] == "$ 11.20"
    assert items[2]["choices"] == ["850", "1,600", "1,700", "2,550", "3,400"]  # commas inside options
    assert items[3]["choices"][:2] == ["1055", "1215"]  # doubled "a ) a ) 1055"
    assert items[4]["choices"][0] == "462 cm ²"  # the "['a ) ...', ...]" form
    sat = load_benchmark("sat_math", path=str(FIX / "sat_math/test.jsonl"))
    assert sat[1]["choices"] == ["-6.7", "-5.3", "5.3", "6.7"]
    assert sat[2]["choices"][3] == "(14, 2)"  # parentheses inside an option
    mmlu = load_benchmark("mmlu_stem", path=str(FIX / "mmlu_stem/test.jsonl"))
    assert mmlu[0]["question"].endswith("over Q.\nAnswer Choices: (A) 0 (B) 4 (C) 2 (D) 6")


@pytest.mark.parametrize("text,expected", [
    ("a ) 5.5 , b ) 6.25 , c ) 7 , d ) 8 , e ) none", ["5.5", "6.25", "7", "8", "none"]),
    ("A) x > 3 B) f(a) C) 2a) D) -1", ["x > 3", "f(a)", "2a)", "-1"]),  # letters inside options
])
def test_split_options(text, expected):
    assert split_options(text) == expected


def test_other_layouts_and_limit():
    folder = load_benchmark("math", path=str(FIX / "math/raw"))  # MATH's one-JSON-per-problem release
    assert [it["answer"] for it in folder] == ["\\frac{1}{2}", "63\\pi"]
    raw = load_benchmark("mawps", path=str(FIX / "mawps/raw.json"))  # MAWPS's own sQuestion/lSolutions
    assert raw[0]["answer"] == "43" and raw[0]["question"].startswith("Joan found 70 seashells")
    assert len(load_benchmark("gsm8k", path=str(FIX / "gsm8k/test.jsonl"), limit=2)) == 2


def test_unknown_names_and_missing_hub_fail_loudly():
    with pytest.raises(KeyError, match="gsm8k"):
        get("gsm9k")
    with pytest.raises(ValueError, match="path="):
        load_benchmark("mawps")


def test_hub_path_loads_every_config(monkeypatch):
    calls = []

    def load_dataset(hub, config, split):
        calls.append((hub, config, split))
        return [{"question": f"{config}?", "subject": config, "choices": ["1", "2", "3", "4"], "answer": 2}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    items = load_benchmark("mmlu_stem", limit=3)
    assert calls == [("cais/mmlu", s, "test") for s in MMLU_STEM]
    assert len(items) == 3 and items[0]["answer"] == "C" and items[0]["id"] == "mmlu_stem/test/0"
    assert len(MMLU_STEM) == 18 and "anatomy" not in MMLU_STEM


def test_benchmark_suite_loads_with_few_shot_prompts():
    """dataset.kind=benchmarks: train on one benchmark, evaluate ID and OOD sets, from local files."""
    from imm.data import DatasetConfig, load_data

    files = {name: {"test": str(FIX / name / "test.jsonl")} for name in ("gsm8k", "asdiv", "mathqa")}
    files["gsm8k"]["train"] = str(FIX / "gsm8k" / "train.jsonl")
    cfg = DatasetConfig(name="gsm8k", kind="benchmarks", train_set="gsm8k", test_sets=["gsm8k", "asdiv", "mathqa"],
                        files=files, shots=2, n_test=2)
    data = load_data(cfg)
    assert data.id_sets == ["gsm8k"] and data.ood_sets == ["asdiv", "mathqa"]
    assert all(len(items) <= 2 for items in data.tests.values())
    prompt = data.train[0]["prompt"]
    assert prompt.count("Let's think step by step.") == 3  # two worked examples, then the question
    assert prompt.rstrip().endswith("### Response: Let's think step by step.")
    assert data.tests["mathqa"][0]["kind"] == "choice"


def test_benchmark_without_hub_needs_a_file():
    from imm.data import DatasetConfig

    with pytest.raises(FileNotFoundError, match="dataset.files.mawps.test"):
        DatasetConfig(kind="benchmarks", train_set="gsm8k", test_sets=["mawps"])
    with pytest.raises(KeyError, match="valid"):
        DatasetConfig(kind="benchmarks", train_set="gsm9k")


def test_math_reads_every_boxed_form_and_skips_rows_without_a_gold(caplog):
    from imm.data.benchmarks import load_items

    with caplog.at_level("WARNING"):
        loaded = load_items("math", path=str(FIX / "math/odd.jsonl"))
    # \fbox{5} and "\boxed 6" (Hendrycks' last_boxed_only_string reads both); the graph row has no answer
    assert [it["answer"] for it in loaded.items] == ["5", "6", "6"]
    assert loaded.skipped == 1 and "skipped 1 of 4 rows" in caplog.text
    assert [it["id"] for it in loaded.items] == ["math/test/0", "math/test/1", "math/test/3"]  # row indices
    assert load_benchmark("math", path=str(FIX / "math/odd.jsonl"), limit=3)[-1]["answer"] == "6"  # limit counts items
