"""dataset=world_nl's files: the families with room, the validation files, the layout, the world's exemplars."""

import json
import random

import pytest

from imm.data import DatasetConfig, load_data, normalise
from imm.data.world import benchmark_files, problems


def _draw(family, n=400):
    rng = random.Random(0)
    return [problems.FAMILIES[family].generate(rng) for _ in range(n)]


def test_each_family_keeps_to_its_numbers():
    for p in _draw("id_small"):
        (sign, x), = p.ops
        assert 2 <= p.start[0] <= 20 and 1 <= x <= 9 and p.answer >= 0
    for p in _draw("ood_box_small"):
        (sign, x), = p.ops
        assert 10 <= p.start[0] <= 29 and 1 <= x <= 5 and "in a box" in p.question
    tens = _draw("ood_tens")
    for p in tens:
        (sign, x), = p.ops
        assert 10 <= x <= 19 and p.answer >= 1 and (sign == "-" or 2 <= p.start[0] <= 12)
    assert {s for p in tens for s, _ in p.ops} == {"+", "-"}
    for p in _draw("ood_product_wide"):
        assert not p.ops and all(4 <= f <= 12 for f in p.start) and p.answer == p.start[0] * p.start[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("world-nl")
    benchmark_files.write(out, seed=0, n_train=300, n_test=60, n_validation=60)
    return out


def _questions(path):
    rows = json.loads(path.read_text()) if path.suffix == ".json" else [json.loads(l) for l in path.read_text().splitlines()]
    return [normalise(r.get("question") or f"{r['Body']} {r['Question']}" if "Body" in r else
                      (f"{r['body']} {r['question']}" if "body" in r else r["question"])) for r in rows]


def test_validation_files_hold_no_training_or_test_question(folder):
    train = set(_questions(benchmark_files.path_of(folder, "gsm8k", "train")))
    for bench in benchmark_files.FAMILY_OF:
        val = _questions(benchmark_files.path_of(folder, bench, "validation"))
        test = set(_questions(benchmark_files.path_of(folder, bench, "test")))
        assert len(val) == 60 and len(set(val)) == 60
        assert not set(val) & train and not set(val) & test


def _cfg(folder, **kw):
    files = {b: {s: str(benchmark_files.path_of(folder, b, s)) for s in ("test", "validation")}
             for b in benchmark_files.FAMILY_OF}
    files["gsm8k"]["train"] = str(benchmark_files.path_of(folder, "gsm8k", "train"))
    return DatasetConfig(name="world_nl", kind="benchmarks", train_set="gsm8k", test_sets=list(benchmark_files.FAMILY_OF),
                         id_sets=["gsm8k"], files=files, n_train=50, n_test=40, shots=4, **{"exemplars": "world", **kw})


def test_the_validation_split_reads_each_sets_validation_file(folder):
    test, val = load_data(_cfg(folder)), load_data(_cfg(folder, eval_split="validation"))
    for name in benchmark_files.FAMILY_OF:
        assert len(val.tests[name]) == 40
        assert not {normalise(i["question"]) for i in val.tests[name]} & {normalise(i["question"]) for i in test.tests[name]}
    prompt = val.tests["mawps"][0]["prompt"]  # the world's four exemplars, for every set
    assert prompt.count("Question: ") == 4 and "Kate has 24 balloons" in prompt and "Angelo" not in prompt


def test_a_validation_run_without_a_sets_validation_file_is_refused(folder):
    files = _cfg(folder).files
    files["asdiv"].validation = None
    with pytest.raises(FileNotFoundError, match="asdiv.validation"):
        DatasetConfig(name="world_nl", kind="benchmarks", train_set="gsm8k", test_sets=["gsm8k", "asdiv"],
                      files={k: vars(v) for k, v in files.items()}, eval_split="validation")
    with pytest.raises(ValueError, match="exemplars"):
        _cfg(folder, exemplars="nope")


def test_a_folder_written_for_other_families_is_written_again(tmp_path):
    benchmark_files.write(tmp_path, seed=0)
    layout = json.loads((tmp_path / "layout.json").read_text())
    layout["families"]["gsm8k/test"] = "id_onestep"  # as a folder of an older layout would say
    (tmp_path / "layout.json").write_text(json.dumps(layout))
    (tmp_path / "gsm8k" / "test.jsonl").write_text("")
    benchmark_files.ensure(tmp_path, seed=0)
    assert json.loads((tmp_path / "layout.json").read_text())["families"]["gsm8k/test"] == "id_small"
    assert len(_questions(benchmark_files.path_of(tmp_path, "gsm8k", "test"))) == benchmark_files.N_TEST


def test_a_smaller_folder_is_written_again_and_keeps_its_items_first(tmp_path):
    benchmark_files.write(tmp_path, seed=0, n_test=20)  # a folder of an earlier, smaller test split
    before = {b: _questions(benchmark_files.path_of(tmp_path, b, "test")) for b in benchmark_files.FAMILY_OF}
    benchmark_files.ensure(tmp_path, seed=0)
    for bench, questions in before.items():
        after = _questions(benchmark_files.path_of(tmp_path, bench, "test"))
        assert len(questions) == 20 and len(after) == benchmark_files.N_TEST == len(set(after))
        assert after[:20] == questions


def test_the_exemplar_set_and_the_validation_files_enter_the_stage_keys():
    from imm.config import Config
    from imm.stages import data_key

    cfg = Config()
    cfg.dataset = DatasetConfig(kind="benchmarks", train_set="gsm8k", test_sets=["gsm8k"])
    plain = data_key(cfg, "test")
    cfg.dataset.exemplars = "world"
    assert data_key(cfg, "test") != plain
    cfg.dataset.exemplars = ""
    assert data_key(cfg, "test") == plain
    cfg.dataset.files["gsm8k"].validation = "elsewhere.jsonl"
    assert data_key(cfg, "test") != plain
