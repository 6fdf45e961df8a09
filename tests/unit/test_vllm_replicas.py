"""Every GPU of a job busy: a vLLM call sharded over several engine processes, each on its own GPUs, gives
the texts one engine gives, in the same order. ``vllm`` is a stand-in package (a seeded function of the
prompt and the request's seed) that each engine process imports and that records the GPUs it saw.

    python -m pytest tests/unit/test_vllm_replicas.py
"""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest

from imm.sampling import vllm as engines

STAND_IN = '''
import hashlib, json, os, uuid

class LLM:
    def __init__(self, model, tensor_parallel_size, seed, dtype, gpu_memory_utilization):
        self.record = {"devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "tp": tensor_parallel_size, "prompts": 0}

    def generate(self, prompts, params):
        self.record["prompts"] += len(prompts)
        with open(os.path.join(os.environ["STAND_IN_LOG"], uuid.uuid4().hex + ".json"), "w") as f:
            json.dump(self.record, f)
        out = []
        for prompt, p in zip(prompts, params):
            texts = []
            for child in range(p["n"]):
                h = hashlib.sha256(f"{prompt}|{p['seed'] + child}|{p['temperature']}".encode()).digest()
                texts.append(type("C", (), {"text": f" {h[0]} + {h[1]} = x. The answer is {h[0] + h[1]}."})())
            out.append(type("O", (), {"outputs": texts})())
        return out

    def shutdown(self):
        pass

def SamplingParams(**kw):
    return kw
'''


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "vllm"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(STAND_IN))
    log = tmp_path / "log"
    log.mkdir()
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))  # the engine processes import it too
    monkeypatch.setenv("STAND_IN_LOG", str(log))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # four "devices" of a node
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    importlib.invalidate_caches()

    def engines_seen():
        records = [json.loads(p.read_text()) for p in log.glob("*.json")]
        for p in log.glob("*.json"):
            p.unlink()
        return sorted((r["devices"], r["prompts"]) for r in records)

    return engines_seen


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8])
def test_shards_come_back_in_request_order(n):
    requests = list(range(n * 3 + 1))
    for replicas in (1, 2, 3, 4):
        parts = engines.shard(requests, replicas)
        assert len(parts) == replicas and sorted(x for p in parts for x in p) == requests
        assert max(map(len, parts)) - min(map(len, parts)) <= 1  # balanced
        assert engines.unshard(parts, len(requests)) == requests


def test_each_engine_gets_its_own_gpus_and_too_few_gpus_are_refused():
    assert engines.device_groups(4, 1, "4,5,6,7") == ["4", "5", "6", "7"]
    assert engines.device_groups(2, 2, "4,5,6,7") == ["4,5", "6,7"]
    assert engines.device_groups(1, 8, "0,1,2,3,4,5,6,7") == ["0,1,2,3,4,5,6,7"]
    with pytest.raises(RuntimeError, match="need 8 GPUs, this process sees 4"):
        engines.device_groups(4, 2, "0,1,2,3")


def test_a_sharded_call_gives_the_texts_of_one_engine_whatever_the_gpu_count(stand_in):
    prompts = [f"Question: what is {i} + {i * 3}?\nAnswer:" for i in range(11)]
    kw = dict(n=3, temperatures=[0.2, 0.4, 0.6], max_new_tokens=16, seed=7)
    one = engines.complete_vllm("model", prompts, **kw)
    assert stand_in() == [("4,5,6,7", 11 * 3)]  # one engine: every request, the whole node in view
    four = engines.complete_vllm("model", prompts, replicas=4, **kw)
    assert four == one
    seen = stand_in()
    assert [d for d, _ in seen] == ["4", "5", "6", "7"] and sum(p for _, p in seen) == 11 * 3
    pairs = engines.complete_vllm("model", prompts, replicas=2, tensor_parallel_size=2, **kw)
    assert pairs == one and [d for d, _ in stand_in()] == ["4,5", "6,7"]
    assert len({t for group in one for t in group}) > 11  # texts differ by prompt and seed: the order is checked


def test_a_failing_engine_fails_the_call_naming_its_gpus(stand_in, monkeypatch, tmp_path):
    monkeypatch.setenv("STAND_IN_LOG", str(tmp_path / "missing"))  # every engine fails to write its record
    with pytest.raises(RuntimeError, match=r"engine\(s\) \[0, 1\] of 2 failed"):
        engines.complete_vllm("model", ["q"], replicas=2)
