"""The testbed's validation split: carved from the training questions' part of question space, never a
training question of the run, never a test question; the test split and its stage keys unchanged."""

import pytest

from imm.data import DatasetConfig, load_data, normalise
from imm.data.world.problems import split_of


def test_validation_items_are_training_space_but_not_training_questions():
    cfg = DatasetConfig(eval_split="validation", n_train=200, n_test=60)
    data = load_data(cfg)
    test = load_data(DatasetConfig(n_train=200, n_test=60))
    train = {normalise(it["question"]) for it in data.train}
    assert data.train == test.train  # the training questions do not depend on the split evaluated
    for name, items in data.tests.items():
        assert len(items) == 60
        assert {split_of(it["question"]) for it in items} == {"train"}
        assert not train & {normalise(it["question"]) for it in items}
        assert not {it["question"] for it in items} & {it["question"] for it in test.tests[name]}
    assert load_data(cfg).tests == data.tests


def test_eval_split_is_checked():
    with pytest.raises(ValueError, match="eval_split"):
        DatasetConfig(eval_split="dev")


def test_test_split_keeps_its_stage_keys():
    from imm.config import Config
    from imm.stages import data_key

    cfg = Config()
    before = data_key(cfg, "test")
    cfg.dataset.eval_split = "validation"
    assert data_key(cfg, "test") != before and data_key(cfg, "train") == data_key(Config(), "train")
