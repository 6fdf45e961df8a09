"""The vLLM backend's pure parts, and its call pattern against a stand-in ``vllm`` module (no GPU, no vllm).

    python -m pytest tests/unit/test_vllm_requests.py
"""

from __future__ import annotations

import sys
import types
from collections import Counter

import pytest

from imm.sampling import GenerateConfig
from imm.sampling.vllm import (INSTALL_HINT, build_requests, complete_vllm, regroup, sample_temperatures,
                               synthesize_vllm)

STOPS = ("Question:", "Q:")


def test_requests_count_samples_per_temperature():
    cfg = GenerateConfig(k=7, temperatures=[0.2, 0.4, 0.6], max_new_tokens=123, top_p=0.95)
    reqs = build_requests(["p0", "p1"], cfg, iteration=0, stops=STOPS)
    assert [p for p, _ in reqs] == ["p0"] * 3 + ["p1"] * 3
    # 7 samples over 3 temperatures: 0.2 gets samples 0, 3, 6
    assert [(r["temperature"], r["n"]) for _, r in reqs[:3]] == [(0.2, 3), (0.4, 2), (0.6, 2)]
    assert sum(r["n"] for _, r in reqs) == 2 * cfg.k
    for _, r in reqs:
        assert r["max_tokens"] == 123 and r["top_p"] == 0.95 and r["stop"] == list(STOPS)


def test_fewer_samples_than_temperatures_sends_no_empty_request():
    reqs = build_requests(["p"], GenerateConfig(k=2, temperatures=[0.2, 0.4, 0.6]), 0, STOPS)
    assert [(r["temperature"], r["n"]) for _, r in reqs] == [(0.2, 1), (0.4, 1)]


def child_seeds(reqs):
    # vLLM seeds the n children of a request with seed, seed+1, ..., seed+n-1
    return [r["seed"] + c for _, r in reqs for c in range(r["n"])]


def test_seeds_are_deterministic_and_distinct():
    cfg = GenerateConfig(k=6, temperatures=[0.2, 0.4, 0.6], seed=3)
    prompts = ["same prompt"] * 4
    it0, it0_again, it1 = (build_requests(prompts, cfg, t, STOPS) for t in (0, 0, 1))
    assert it0 == it0_again
    seeds0, seeds1 = child_seeds(it0), child_seeds(it1)
    assert len(set(seeds0)) == len(seeds0) == 4 * cfg.k  # every sample of a call its own stream
    assert not set(seeds0) & set(seeds1)  # a new iteration draws new samples
    other_seed = build_requests(prompts, GenerateConfig(k=6, temperatures=[0.2, 0.4, 0.6], seed=4), 0, STOPS)
    assert child_seeds(other_seed) != seeds0


def test_greedy_is_one_request_output_repeated():
    reqs = build_requests(["p"], GenerateConfig(k=3, temperatures=[0.0, 0.5]), 0, STOPS)
    assert [(r["temperature"], r["n"]) for _, r in reqs] == [(0.0, 1), (0.5, 1)]
    assert regroup([["g"], ["s"]], sample_temperatures([0.0, 0.5], 3), STOPS) == [["g", "s", "g"]]


def test_regroup_restores_sample_order_and_cuts_at_stops():
    temps = sample_temperatures([0.2, 0.4, 0.6], 4)  # 0.2, 0.4, 0.6, 0.2
    outputs = [["a0", "a3 Question: next"], ["a1"], [" a2 "],  # prompt 0: one list per temperature
               ["b0", "b3"], ["b1 Q: x"], ["b2"]]
    # trailing space dropped; the leading one kept, as the model wrote it after its prompt (SFT joins it so)
    assert regroup(outputs, temps, STOPS) == [["a0", "a1", " a2", "a3"], ["b0", "b1", "b2", "b3"]]
    with pytest.raises(ValueError, match="expected 2 outputs"):
        regroup([["a0"], ["a1"], ["a2"]], temps, STOPS)


class FakeVLLM:
    """Records how the backend drives vLLM; request r answers "r<r>s<c>" for its c-th sample."""

    def __init__(self):
        self.engines, self.calls, self.shut = [], [], 0
        fake = self

        class LLM:
            def __init__(self, **kwargs):
                fake.engines.append(kwargs)

            def generate(self, prompts, params):
                fake.calls.append((list(prompts), list(params)))
                return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f"r{r}s{c} Question: more")
                                                       for c in range(p["n"])])
                        for r, p in enumerate(params)]

            def shutdown(self):
                fake.shut += 1

        self.module = types.SimpleNamespace(LLM=LLM, SamplingParams=dict)


def test_synthesize_one_engine_one_batched_call(monkeypatch):
    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    cfg = GenerateConfig(k=4, temperatures=[0.2, 0.4, 0.6], max_new_tokens=50)
    out = synthesize_vllm("model-dir", ["p0", "p1"], cfg, iteration=2, stops=STOPS, tensor_parallel_size=2)
    assert len(fake.engines) == 1 and fake.engines[0]["tensor_parallel_size"] == 2
    assert fake.engines[0]["model"] == "model-dir"
    assert len(fake.calls) == 1 and fake.calls[0][0] == ["p0"] * 3 + ["p1"] * 3
    assert fake.shut == 1
    assert [s["temperature"] for s in out[0]] == [0.2, 0.4, 0.6, 0.2]
    # prompt 1's requests are 3 (T=0.2, two samples), 4, 5; stop strings cut off
    assert [s["text"] for s in out[1]] == ["r3s0", "r4s0", "r5s0", "r3s1"]


def test_complete_greedy_and_samples(monkeypatch):
    fake = FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake.module)
    assert complete_vllm("m", ["a", "b"], stops=STOPS) == [["r0s0"], ["r1s0"]]
    assert all(p["temperature"] == 0.0 and p["n"] == 1 for p in fake.calls[0][1])
    out = complete_vllm("m", ["a"], n=3, temperatures=0.7, stops=STOPS)
    assert out == [["r0s0", "r0s1", "r0s2"]]
    assert Counter(p["n"] for p in fake.calls[1][1]) == {3: 1}


def test_missing_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"pip install -e \.\[vllm\]; it needs a GPU"):
        synthesize_vllm("m", ["p"], GenerateConfig(k=1), 0)
    assert "it needs a GPU" in INSTALL_HINT
