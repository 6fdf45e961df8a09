"""model.device reaches every stage that runs the model, and everything the stages feed it.

The loop runs on a micro testbed with a forward pre-hook on every model a stage loads: each tensor
handed to forward and each parameter must sit on the configured device, and no stage may move a
model elsewhere. Without a GPU here, a configured GPU name is checked where it enters: the load
places the model there (the move itself is recorded, not run).
"""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from imm import loop, models, sft, stages
from imm.config import validate
from imm.data.world import problems
from imm.store import StageStore
from imm.tracking import Tracker

ROOT = Path(__file__).resolve().parents[2]
MICRO = ["dataset.n_train=24", "dataset.n_test=8", "generate.k=2", "generate.max_new_tokens=60",
         "eval.max_new_tokens=40", "sft.epochs=1", "run.iterations=1", "tracking.enabled=false"]


def config(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*MICRO, *overrides])
    return validate(cfg)


class Devices:
    """Records the device of every forward input and parameter, and every Module.to target."""

    def __init__(self, monkeypatch):
        self.inputs, self.params, self.moves, self.forwards = set(), set(), [], 0
        real_load, real_to = models.load_model, torch.nn.Module.to

        def load(*args, **kwargs):
            model = real_load(*args, **kwargs)
            model.register_forward_pre_hook(self.record, with_kwargs=True)
            return model

        def to(module, *args, **kwargs):
            device = kwargs.get("device", args[0] if args else None)
            if isinstance(device, (str, torch.device)):
                self.moves.append(torch.device(device))
            return real_to(module, *args, **kwargs)

        monkeypatch.setattr(stages, "load_model", load)
        monkeypatch.setattr(torch.nn.Module, "to", to)

    def record(self, module, args, kwargs):
        self.forwards += 1
        self.inputs |= {t.device for t in [*args, *kwargs.values()] if torch.is_tensor(t)}
        self.params |= {p.device for p in module.parameters()}


@pytest.mark.parametrize("backend", ["torch", "trl"])
def test_every_stage_keeps_model_and_batches_on_the_configured_device(backend, monkeypatch, tmp_path, caplog):
    seen = Devices(monkeypatch)
    cfg = config("model.device=cpu", "method=iimm", f"sft.backend={backend}")  # iimm: importance and merge too
    caplog.set_level("INFO", logger="imm.stages")
    result = loop.run(cfg, Tracker(cfg.tracking), tmp_path / "job", StageStore(tmp_path / "stages"))
    assert [label for label, _ in result.rows] == ["Base", "SFT 1", "Merge 1"]
    cpu = torch.device("cpu")
    assert seen.forwards > 0 and seen.inputs == {cpu} and seen.params == {cpu}
    assert seen.moves and set(seen.moves) == {cpu}  # no stage (nor the Trainer) moved a model elsewhere
    logged = [r.getMessage() for r in caplog.records]
    for stage in ("evaluate", "synthesize", "importance", "sft"):
        assert any(m.startswith(f"{stage} on cpu") for m in logged), (stage, logged)
    sft_stats = next((tmp_path / "stages" / "sft").glob("*/stats.json")).read_text()
    assert '"device": "cpu"' in sft_stats and '"global_batch": 16' in sft_stats


def test_a_configured_gpu_name_reaches_the_load(monkeypatch, tiny_model):
    """No GPU here: the move to the configured device is recorded, and the model stays on the CPU."""
    moves, real_to = [], torch.nn.Module.to

    def to(module, *args, **kwargs):
        device = kwargs.get("device", args[0] if args else None)
        if isinstance(device, torch.device) and device.type == "cuda":
            moves.append(device)
            return module
        return real_to(module, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)
    models.load_model(models.ModelConfig(path=str(tiny_model), device="cuda:3"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    models.load_model(models.ModelConfig(path=str(tiny_model), device="auto"))
    assert moves == [torch.device("cuda:3"), torch.device("cuda:0")]  # auto: the first GPU when there is one


def test_importance_batches_follow_the_model(tiny_model):
    from imm.analysis.importance import layer_importance

    seen = set()
    model = models.load_model(models.ModelConfig(path=str(tiny_model), device="cpu"))
    model.register_forward_pre_hook(lambda m, a, kw: seen.update(t.device for t in kw.values() if torch.is_tensor(t)),
                                    with_kwargs=True)
    rows = [{"question": i["question"], "response": i["solution"]}
            for i in problems.make_split(problems.ID_FAMILY, "train", 8, 0)]
    tok = models.load_tokenizer(str(tiny_model))
    assert layer_importance(model, tok, rows, problems.format_prompt) and seen == {torch.device("cpu")}


def test_trl_leaves_the_model_where_it_was(tiny_model):
    model = models.load_model(models.ModelConfig(path=str(tiny_model), device="cpu"))
    tok = models.load_tokenizer(str(tiny_model))
    rows = [{"question": i["question"], "response": i["solution"]}
            for i in problems.make_split(problems.ID_FAMILY, "train", 16, 0)]
    stats = sft.train(model, tok, rows, problems.format_prompt,
                      sft.SFTConfig(epochs=1, batch_size=4, global_batch=8, backend="trl"), 0, amp="bfloat16")
    assert stats["device"] == "cpu" and stats["global_batch"] == 8 and stats["steps"] == 2
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the master weights stay fp32
