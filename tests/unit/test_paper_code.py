"""+preset=paper_code: the released code's choices compose, its exact-string keep and cosine decay
enter the stage keys only when chosen (every other job keeps its keys)."""

from pathlib import Path

import pytest

from imm import stages
from imm.config import Config, validate
from imm.grading.filtering import keep_correct
from imm.methods import MethodConfig
from imm.sft.config import SFTConfig
from imm.store import digest
from tests.unit.test_configs import compose_cfg

REF = stages.ModelRef("m", Path("unused"))


def test_paper_code_preset_sets_the_released_codes_choices():
    code, paper = validate(compose_cfg("+preset=paper_code")), validate(compose_cfg())
    assert (code.generate.k, code.generate.temperatures, code.method.keep) == (3, [0.0], "exact")
    assert (code.merge.name, code.merge.p, code.merge.alpha) == ("dare_linear", 0.2, 0.5)
    assert (code.sft.batch_size, code.sft.accumulation(1), code.sft.scheduler) == (2, 4, "cosine")
    assert (paper.generate.temperatures, paper.method.keep, paper.sft.scheduler) == ([0.2, 0.4, 0.6], "equivalent", "linear")


def test_exact_keep_needs_the_gold_string():
    items = [{"question": "b", "answer": "1000"}]
    samples = [[{"text": "The answer is 1,000.", "temperature": 0.0}, {"text": "The answer is 1000.", "temperature": 0.0},
                {"text": "The answer is 1000.0", "temperature": 0.0}]]
    _, by_value = keep_correct(items, samples, iteration=0)
    kept, exact = keep_correct(items, samples, iteration=0, exact=True)
    assert (by_value.kept, exact.kept) == (3, 1)
    assert kept[0]["response"] == "The answer is 1000."
    with pytest.raises(ValueError, match="method.keep"):
        MethodConfig(keep="fuzzy")


def test_code_choices_enter_the_keys_only_when_chosen():
    plain = Config()
    sft_key = lambda c: digest(stages.sft_fields(c, REF, "d", 0))  # noqa: E731
    synth_key = lambda c: digest(stages.synthesize_fields(c, REF, 0))  # noqa: E731
    assert "scheduler" not in stages.sft_fields(plain, REF, "d", 0)["sft"]  # the keys stored before the choice
    assert "keep" not in stages.synthesize_fields(plain, REF, 0)
    assert sft_key(Config(sft=SFTConfig(scheduler="cosine"))) != sft_key(plain)
    assert synth_key(Config(method=MethodConfig(keep="exact"))) != synth_key(plain)
    with pytest.raises(ValueError, match="sft.scheduler"):
        SFTConfig(scheduler="step")
