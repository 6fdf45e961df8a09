"""One GPU, several engines in turn: before a vLLM stage the job holds no model on the GPU and has emptied
the allocator's cache, and one engine serves every test set of an evaluation. The GPU is a ledger and
``vllm`` a stand-in that refuses to start, as vLLM does, when free memory is below its share.

    python -m pytest tests/unit/test_vllm_handover.py
"""

from __future__ import annotations

import sys
import types
import weakref

import pytest
import torch

from imm.config import Config
from imm.data import Data
from imm.sampling.engine import EngineConfig
from imm.stages import Context, ModelRef, evaluate_stage, synthesize_stage
from imm.store import StageStore


class FakeModel:
    device = "cuda:0"


class FakeGPU:
    """80 GB: a live model holds its bytes; a freed one leaves them in the allocator's cache until emptied."""

    def __init__(self, total: float = 80.0):
        self.total, self.live, self.cached, self.engines = total, 0.0, 0.0, []

    def model(self, gb: float):
        net = FakeModel()
        self.live += gb
        weakref.finalize(net, self._free, gb)
        return net

    def _free(self, gb: float) -> None:
        self.live, self.cached = self.live - gb, self.cached + gb

    def empty_cache(self) -> None:
        self.cached = 0.0

    def vllm(self):
        gpu = self

        class LLM:
            def __init__(self, gpu_memory_utilization: float, **kwargs):
                free = gpu.total - gpu.live - gpu.cached
                if free < gpu_memory_utilization * gpu.total:  # vLLM's own start-up check
                    raise ValueError(f"Free memory on device ({free} GB) is less than desired GPU memory "
                                     f"utilization ({gpu_memory_utilization}, {gpu_memory_utilization * gpu.total} GB)")
                gpu.engines.append({"gpu_memory_utilization": gpu_memory_utilization, "prompts": 0, **kwargs})

            def generate(self, prompts, params):
                gpu.engines[-1]["prompts"] += len(prompts)
                return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text="The answer is 3.")
                                                       for _ in range(p["n"])]) for p in params]

            def shutdown(self):
                pass

        return types.SimpleNamespace(LLM=LLM, SamplingParams=dict)


@pytest.fixture
def gpu(monkeypatch):
    gpu = FakeGPU()
    monkeypatch.setitem(sys.modules, "vllm", gpu.vllm())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", gpu.empty_cache)
    return gpu


def item(i: int) -> dict:
    return {"question": f"q{i}", "answer": "3", "kind": "numeric", "id": str(i)}


def context(tmp_path, utilization: float = 0.9) -> Context:
    cfg = Config()
    cfg.engine = EngineConfig(backend="vllm", gpu_memory_utilization=utilization)
    data = Data(train=[item(i) for i in range(3)], tests={"a": [item(10), item(11)], "b": [item(12)]},
                id_sets=["a"], ood_sets=["b"])
    return Context(cfg, StageStore(tmp_path / "stages"), data, tok=None)


def test_evaluation_after_sft_hands_the_gpu_to_one_engine(gpu, tmp_path):
    ctx = context(tmp_path)
    ref = ModelRef("sft1", tmp_path)
    ctx.hold(ref, gpu.model(30.0))  # the trained model, as the SFT stage leaves it
    metrics, items = evaluate_stage(ctx, ref)
    assert len(gpu.engines) == 1 and gpu.engines[0]["prompts"] == 3  # both test sets, one engine, one call
    assert gpu.engines[0]["gpu_memory_utilization"] == 0.9 and gpu.live == gpu.cached == 0
    assert metrics["a"] == metrics["b"] == 1.0 and len(items) == 3


def test_sampling_hands_the_gpu_over_and_takes_the_configured_share(gpu, tmp_path):
    ctx = context(tmp_path, utilization=0.5)
    ref = ModelRef("base", tmp_path)
    ctx.hold(ref, gpu.model(30.0))
    synthesize_stage(ctx, ref, 0)
    assert [e["gpu_memory_utilization"] for e in gpu.engines] == [0.5]
    assert gpu.live == gpu.cached == 0


def test_the_stand_in_refuses_a_gpu_still_in_use(gpu):
    gpu.model(30.0).keep = True  # freed at once (no reference), but its bytes stay in the cache
    with pytest.raises(ValueError, match="less than desired"):
        gpu.vllm().LLM(gpu_memory_utilization=0.9)


def test_a_set_is_graded_while_the_next_one_decodes(monkeypatch):
    """The hf backend: grading set a waits for set b's decoding to begin, which only happens when the
    grading runs beside the decoding (one after the other, the wait times out). The two sets have
    different few-shot prefixes, so they decode in two calls (sets that share one decode together)."""
    import threading

    import imm.evaluate as ev
    from imm.evaluate import EvalConfig
    from imm.grading.checks import grade_groups

    decoding_b = threading.Event()
    overlapped = []

    def complete(model, tok, prompts, **kw):
        if kw["desc"].endswith(" b"):
            decoding_b.set()
        return [["The answer is 3."] for _ in prompts]

    def grade(outs, items):
        if items[0]["id"] == "1":  # set a
            overlapped.append(decoding_b.wait(timeout=5))
        return grade_groups(outs, items)

    class Chars:  # a character tokenizer
        def __call__(self, texts, add_special_tokens=True):
            return {"input_ids": [[ord(c) for c in t] for t in texts]}

    monkeypatch.setattr(ev, "complete", complete)
    monkeypatch.setattr(ev, "grade_groups", grade)
    data = Data(train=[], tests={"a": [item(1), item(3)], "b": [item(2), item(4)]}, id_sets=["a"], ood_sets=["b"])
    prompt = lambda it: ("x" if int(it["id"]) % 2 else "y") * 80 + it["question"]  # noqa: E731
    assert ev.decoding_groups(Chars(), data.tests, prompt) == [["a"], ["b"]]
    assert ev.decoding_groups(Chars(), data.tests, lambda it: "x" * 80 + it["question"]) == [["a", "b"]]
    metrics = ev.evaluate(None, Chars(), data, prompt, EvalConfig())
    assert overlapped == [True] and metrics["a"] == metrics["b"] == 1.0
