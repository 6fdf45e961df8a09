"""Local data per split, through the documented override strings, and the train/test overlap check."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from imm.config import validate
from imm.data import Data, DatasetConfig, check_overlap, load_data, normalise

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    cfg.run.out_dir = "unused"
    return validate(cfg)


def test_documented_per_split_overrides_compose_and_load_separate_files():
    """The override strings the docs give, exactly: one file per split, no '+' needed."""
    cfg = compose_cfg("dataset=gsm8k",
                      f"dataset.files.gsm8k.train={FIX}/gsm8k/train.jsonl",
                      f"dataset.files.gsm8k.test={FIX}/gsm8k/test.jsonl",
                      f"dataset.files.mawps.test={FIX}/mawps/test.jsonl",
                      "dataset.test_sets=[gsm8k,mawps]", "dataset.shots=1")
    data = load_data(cfg.dataset)
    train = {item["question"] for item in data.train}
    test = {item["question"] for item in data.tests["gsm8k"]}
    assert len(data.train) == 2 and len(data.tests["gsm8k"]) == 3 and not train & test
    assert data.overlap == {"gsm8k": 0, "mawps": 0}
    assert data.id_sets == ["gsm8k"] and data.ood_sets == ["mawps"]


def test_jsonl_kind_test_files_override(tmp_path):
    rows = [{"question": f"What is {i} plus 1?", "answer": str(i + 1)} for i in range(4)]
    for name, part in (("train", rows[:2]), ("test", rows[2:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    cfg = compose_cfg("dataset.kind=jsonl", f"dataset.train_file={tmp_path}/train.jsonl",
                      f"+dataset.test_files.held_out={tmp_path}/test.jsonl", "dataset.id_sets=[held_out]")
    data = load_data(cfg.dataset)
    assert [len(data.train), len(data.tests["held_out"])] == [2, 2] and data.overlap == {"held_out": 0}


def test_one_path_for_both_splits_is_refused():
    with pytest.raises(ValueError, match=r"dataset.files.gsm8k.train=\.\.\."):
        DatasetConfig(kind="benchmarks", train_set="gsm8k", test_sets=["gsm8k"],
                      files={"gsm8k": str(FIX / "gsm8k" / "test.jsonl")})


def test_missing_split_file_names_the_split():
    with pytest.raises(FileNotFoundError, match=r"dataset.files.gsm8k.test="):
        DatasetConfig(kind="benchmarks", train_set="gsm8k", test_sets=["gsm8k"],
                      files={"gsm8k": {"test": "/nonexistent/test.jsonl"}})


def leaky() -> DatasetConfig:
    path = str(FIX / "gsm8k" / "test.jsonl")  # the test file given as the training file too
    return dict(kind="benchmarks", train_set="gsm8k", test_sets=["gsm8k"], shots=1,
                files={"gsm8k": {"train": path, "test": path}})


def test_training_on_the_test_set_is_refused_by_default():
    with pytest.raises(ValueError, match=r"training questions appear in test sets: \{'gsm8k': 3\}"):
        load_data(DatasetConfig(**leaky()))


def test_overlap_drop_and_warn(caplog):
    dropped = load_data(DatasetConfig(**leaky(), overlap="drop"))
    assert dropped.train == [] and dropped.overlap == {"gsm8k": 3}
    kept = load_data(DatasetConfig(**leaky(), overlap="warn"))
    assert len(kept.train) == 3 and kept.overlap == {"gsm8k": 3}
    assert "not clean" in caplog.text


def test_overlap_ignores_case_spacing_and_punctuation():
    assert normalise("  How many  apples, in total? ") == normalise("how many apples in total")
    data = Data(train=[{"question": "How many apples?"}, {"question": "Name a prime."}],
                tests={"a": [{"question": "how  many APPLES"}], "b": [{"question": "How many pears?"}]},
                id_sets=["a"], ood_sets=["b"])
    with pytest.raises(ValueError, match=r"\{'a': 1\}"):
        check_overlap(data)
    assert check_overlap(data, "drop").train == [{"question": "Name a prime."}]
