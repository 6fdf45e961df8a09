"""The checks before the queue (imm/plan/preflight.py): the packages a config needs, the model and the
hub splits in the caches when the jobs are offline (with the command that fills them), the GPUs torch
sees at job start against the request, and a SLURM grid refused before it submits.

    python -m pytest tests/unit/test_preflight.py
"""

from __future__ import annotations

import importlib.util

import pytest

from imm.plan import preflight
from imm.plan.job import Resources
from tests.unit.test_plan import FILES, compose_cfg, sweep
from imm.config import validate

REAL_FIND_SPEC = importlib.util.find_spec


def typed(*overrides):
    cfg = compose_cfg(*overrides, *(FILES if "dataset=gsm8k" in overrides else []))
    cfg.run.out_dir = "unused"
    return validate(cfg)


@pytest.fixture
def no_vllm(monkeypatch):
    """This environment without vllm, whatever is installed."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else REAL_FIND_SPEC(name, *a))


def test_each_setting_names_the_packages_it_needs(no_vllm):
    plain = preflight.packages(typed())
    assert {"torch", "transformers", "mlflow"} <= set(plain) and not {"vllm", "trl", "deepspeed"} & set(plain)
    paper = preflight.packages(typed("model=qwen2.5-1.5b-instruct", "dataset=gsm8k", "sft=deepspeed_zero3",
                                     "engine.backend=vllm"))
    assert {"vllm", "trl", "datasets", "deepspeed"} <= set(paper)
    assert preflight.missing_packages(typed("engine.backend=vllm")) == [
        "vllm is not importable here (engine.backend=vllm (pip install -e .[vllm]))"]
    assert preflight.missing_packages(typed()) == []


def test_offline_jobs_need_the_model_and_hub_splits_cached_and_are_told_how(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    cfg = typed("model=qwen2.5-1.5b-instruct", "dataset=gsm8k")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert preflight.unresolved(cfg) == []  # online: the hub is asked at job start
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = []
    monkeypatch.setattr(preflight, "cached_dataset", lambda hub, configs, split: asked.append((hub, split)) or False)
    problems = preflight.unresolved(cfg)
    assert f"HF_HOME={tmp_path / 'hf'} python -c" in problems[0]
    assert "snapshot_download('Qwen/Qwen2.5-1.5B-Instruct'" in problems[0]
    assert ("openai/gsm8k", "train") in asked and ("openai/gsm8k", "test") in asked
    assert any("load_dataset('openai/gsm8k', c, split='train') for c in ['main']" in p for p in problems)
    # the model in the cache the jobs read (the layout huggingface_hub writes): no longer a problem
    repo = tmp_path / "hf" / "hub" / "models--Qwen--Qwen2.5-1.5B-Instruct"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert not any("Qwen2.5-1.5B" in p for p in preflight.unresolved(cfg))


def test_a_split_from_a_local_file_is_not_looked_for_on_the_hub():
    cfg = typed("model=qwen2.5-1.5b-instruct", "dataset=gsm8k", "dataset.files.gsm8k.train=tests/fixtures/gsm8k/train.jsonl")
    hubs = preflight.hub_datasets(cfg.dataset)
    assert ("openai/gsm8k", ("main",), "test") in hubs and ("openai/gsm8k", ("main",), "train") not in hubs


def test_an_uncached_dataset_does_not_load_offline():
    assert not preflight.cached_dataset("imm-tests/no-such-dataset", (None,), "test")


def test_a_job_whose_gpus_are_not_the_request_is_refused_at_start():
    import torch

    seen = torch.cuda.device_count()
    why = preflight.gpus_at_start(Resources("slurm", seen + 8, 80.0))
    assert f"asked for {seen + 8} GPUs" in why and f"torch sees {seen}" in why
    assert preflight.gpus_at_start(Resources("slurm", seen, 80.0)) is None
    assert preflight.gpus_at_start(Resources("local", seen + 8, 80.0)) is None  # local: planned from torch already


def test_a_slurm_grid_is_refused_before_it_submits_when_its_environment_cannot_run_it(no_vllm):
    from imm.sweep_check import refuse_unready

    cfg, jobs, typed_jobs = sweep("self_improvement_gsm8k_7b")
    with pytest.raises(SystemExit, match="(?s)nothing was submitted.*job #0: vllm is not importable"):
        refuse_unready(cfg, jobs, typed_jobs)


def test_the_compute_node_check_is_one_srun_task_with_the_jobs_gpus():
    launcher = {"gpus_per_node": 8, "cpus_per_task": 32, "partition": "gpu"}
    from omegaconf import OmegaConf

    cmd = preflight.srun_command(OmegaConf.create(launcher), ["model=llama-2-7b", "method=imm"])
    assert cmd[:2] == ["srun", "--ntasks=1"] and "--gpus=8" in cmd and "--partition=gpu" in cmd
    assert cmd[-5:] == ["imm.plan.preflight", "model=llama-2-7b", "method=imm", "--gpus", "8"]
