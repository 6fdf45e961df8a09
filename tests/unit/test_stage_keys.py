"""Stage keys: a setting that changes a stage's output changes its key; one that only changes speed does not."""

import dataclasses

import pytest

from imm import stages
from imm.config import Config
from imm.evaluate import EvalConfig
from imm.models import ModelConfig
from imm.sampling import GenerateConfig
from imm.sampling.engine import EngineConfig
from imm.sft.config import SFTConfig
from imm.store import digest

REF = stages.ModelRef("model-key", stages.Path("unused"))


def cfg(**parts) -> Config:
    """The default config with some parts replaced (model, engine, generate, eval, sft) field by field."""
    base = Config()
    base.model = dataclasses.replace(base.model, device="cpu")
    for name, fields in parts.items():
        setattr(base, name, dataclasses.replace(getattr(base, name), **fields))
    return base


KEYS = {
    "synthesize": lambda c: digest(stages.synthesize_fields(c, REF, 0)),
    "evaluate": lambda c: digest(stages.evaluate_fields(c, REF)),
    "importance": lambda c: digest(stages.importance_fields(c, REF, "data")),
    "sft": lambda c: digest(stages.sft_fields(c, REF, "data", 0)),
}

CHANGES_RESULT = {
    "synthesize": [dict(generate=dict(temperatures=[0.5])), dict(generate=dict(max_new_tokens=7)),
                   dict(engine=dict(compile=True)), dict(engine=dict(backend="vllm")),
                   dict(engine=dict(batch_size=8)),  # hf sampling splits one random stream by batch
                   dict(model=dict(dtype="bfloat16")), dict(model=dict(device="cuda"))],
    "evaluate": [dict(engine=dict(backend="vllm")), dict(engine=dict(compile=True)),
                 dict(model=dict(dtype="bfloat16")), dict(model=dict(device="cuda")),
                 dict(eval=dict(max_new_tokens=7))],
    "importance": [dict(model=dict(dtype="bfloat16")), dict(model=dict(device="cuda"))],
    "sft": [dict(sft=dict(lr=1e-4)), dict(sft=dict(batch_size=8)), dict(sft=dict(backend="trl")),
            dict(model=dict(dtype="bfloat16")), dict(model=dict(device="cuda"))],
}

SPEED_ONLY = {
    "synthesize": [dict(engine=dict(tensor_parallel_size=4)), dict(model=dict(device="cpu:1"))],  # kind, not index
    "evaluate": [dict(engine=dict(tensor_parallel_size=4)), dict(engine=dict(batch_size=8)),
                 dict(eval=dict(batch_size=8)),  # greedy: the batch changes only the speed
                 dict(generate=dict(temperatures=[0.9]))],
    "importance": [dict(engine=dict(compile=True)), dict(generate=dict(k=9)), dict(sft=dict(lr=1.0))],
    "sft": [dict(engine=dict(compile=True, batch_size=8)), dict(engine=dict(tensor_parallel_size=4)),
            dict(generate=dict(k=9)), dict(eval=dict(max_new_tokens=7))],
}


@pytest.mark.parametrize("stage,change", [(s, c) for s, cs in CHANGES_RESULT.items() for c in cs])
def test_a_setting_that_changes_the_result_changes_the_key(stage, change):
    assert KEYS[stage](cfg(**change)) != KEYS[stage](cfg())


@pytest.mark.parametrize("stage,change", [(s, c) for s, cs in SPEED_ONLY.items() for c in cs])
def test_a_setting_that_changes_only_speed_keeps_the_key(stage, change):
    assert KEYS[stage](cfg(**change)) == KEYS[stage](cfg())


def test_vllm_sampling_ignores_the_hf_batch_size_and_sampled_eval_keeps_it():
    vllm = dict(backend="vllm")
    assert KEYS["synthesize"](cfg(engine=vllm | dict(batch_size=8))) == KEYS["synthesize"](cfg(engine=vllm))
    hot = dict(n=4, temperature=0.7, ks=[1, 4])
    assert KEYS["evaluate"](cfg(eval=hot | dict(batch_size=8))) != KEYS["evaluate"](cfg(eval=hot))
    assert KEYS["evaluate"](cfg(eval=hot, engine=dict(batch_size=8))) == KEYS["evaluate"](cfg(eval=hot))
    for key in KEYS.values():  # which GPU it runs on changes nothing
        assert key(cfg(model=dict(device="cuda:0"))) == key(cfg(model=dict(device="cuda:1")))


def test_the_same_global_batch_split_otherwise_is_one_sft_key():
    """The paper's global batch is the setting; how many processes share it is not."""
    a = cfg(sft=dict(batch_size=4, grad_accum=4))
    b = cfg(sft=dict(batch_size=4, grad_accum=2))
    assert KEYS["sft"](a) != KEYS["sft"](b)
    assert stages.sft_fields(cfg(sft=dict(batch_size=4, global_batch=128)), REF, "d", 0)["global_batch"] == 128


def test_former_generate_names_set_the_engine():
    c = Config(generate=GenerateConfig(backend="vllm", tensor_parallel_size=2, batch_size=3))
    assert (c.engine.backend, c.engine.tensor_parallel_size, c.engine.batch_size) == ("vllm", 2, 3)
    assert c.generate.engine_overrides() == {}  # one place holds each setting
    assert KEYS["synthesize"](c) == KEYS["synthesize"](
        cfg(engine=dict(backend="vllm", tensor_parallel_size=2, batch_size=3)))
    with pytest.raises(ValueError, match="compile"):
        Config(generate=GenerateConfig(backend="vllm", compile=True))


def test_engine_and_configs_reject_bad_values():
    with pytest.raises(ValueError, match="compile"):
        EngineConfig(backend="vllm", compile=True)
    with pytest.raises(ValueError, match="model.device"):
        ModelConfig(device="gpu0")
    with pytest.raises(ValueError, match="global_batch"):
        SFTConfig(batch_size=4, global_batch=130)
    with pytest.raises(ValueError, match="not both"):
        SFTConfig(batch_size=4, global_batch=128, grad_accum=4)
    assert EvalConfig().batch_size == 0


def kept(n: int, it: int) -> list[dict]:
    return [{"question": f"q{i}", "answer": str(i), "response": f"r{i} it{it}", "temperature": 0.2, "iteration": it}
            for i in range(n)]


def trainset_key(method: str, history, tmp_path) -> str:
    c = Config()
    c.method = dataclasses.replace(c.method, name=method)
    ctx = stages.Context(c, stages.StageStore(tmp_path / "stages"), data=None, tok=None)
    return stages.trainset_stage(ctx, history)[0]


def test_methods_with_equal_rows_share_sft_1_and_its_evaluation(tmp_path):
    """At iteration 1 mixture and accumulation train on exactly vanilla's rows: one SFT, one evaluation."""
    first = [kept(4, 1)]
    keys = {m: trainset_key(m, first, tmp_path) for m in ("vanilla", "mixture", "accumulation", "imm", "star")}
    assert len(set(keys.values())) == 1
    sft = {m: digest(stages.sft_fields(cfg(), REF, k, 0)) for m, k in keys.items()}
    assert len(set(sft.values())) == 1
    second = [kept(4, 1), kept(4, 2)]
    later = {m: trainset_key(m, second, tmp_path) for m in ("vanilla", "mixture", "accumulation")}
    assert len(set(later.values())) == 3  # iteration 2: other rows, other keys


@pytest.mark.parametrize("field,value", [("response", "other"), ("question", "q9"), ("answer", "9"),
                                         ("temperature", 0.6), ("iteration", 3)])
def test_every_field_of_a_training_row_is_in_the_trainset_key(field, value):
    rows = kept(3, 1)
    changed = [dict(r) for r in rows]
    changed[1][field] = value
    assert digest(stages.trainset_fields(rows)) != digest(stages.trainset_fields(changed))
    assert digest(stages.trainset_fields(rows[::-1])) != digest(stages.trainset_fields(rows))  # order: batches


def test_every_input_of_a_merge_is_in_its_key():
    other = stages.ModelRef("other", stages.Path("unused"))
    ref = digest(stages.merge_fields(cfg(), REF, REF, REF, None, 0))
    variants = [stages.merge_fields(cfg(), other, REF, REF, None, 0), stages.merge_fields(cfg(), REF, other, REF, None, 0),
                stages.merge_fields(cfg(), REF, REF, other, None, 0), stages.merge_fields(cfg(), REF, REF, REF, {0: 0.5}, 0),
                stages.merge_fields(cfg(), REF, REF, REF, None, 1)]
    c = cfg()
    for name, value in (("alpha", 0.9), ("p", 0.3), ("seed", 5), ("alpha_schedule", "importance")):
        if hasattr(c.merge, name):
            variants.append(stages.merge_fields(dataclasses.replace(c, merge=dataclasses.replace(c.merge, **{name: value})),
                                                REF, REF, REF, None, 0))
    assert len(variants) >= 8 and all(digest(v) != ref for v in variants)
