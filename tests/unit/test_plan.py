"""The resource plan: model sizes from architecture numbers, the memory model, and the refusals of jobs
that do not fit what they ask for (imm/plan/memory.py, imm/plan/job.py, the grid check).

    python -m pytest tests/unit/test_plan.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors import safe_open

from imm.config import validate
from imm.plan.job import plan_job, resources
from imm.models import asset_path
from imm.plan.job import Resources
from imm.plan.memory import ARCHITECTURES, Arch, architecture, sft_memory
from imm.sweep_check import grid, refuse_unplanned

ROOT = Path(__file__).resolve().parents[2]
QWEN_05, QWEN_15, LLAMA2 = (ARCHITECTURES[k] for k in ("Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct",
                                                        "meta-llama/Llama-2-7b-hf"))
FILES = [f"dataset.files.{name}.test={ROOT / 'tests' / 'fixtures' / name / 'test.jsonl'}" for name in ("mawps", "sat_math")]
SLURM_8 = Resources("slurm", 8, 80.0, 320, 24.0)
SLURM_1 = Resources("slurm", 1, 80.0, 64, 8.0)
SLURM_NONE = Resources("slurm", 0, 80.0, None, 4.0)


def compose_cfg(*overrides, name="config", hydra=False):
    where = ROOT / ("conf" if name == "config" else "sweeps")
    search = [f"hydra.searchpath=[file://{ROOT / 'conf'}]"] if name != "config" else []  # as -cd sweeps
    with initialize_config_dir(str(where), version_base="1.3"):
        return compose(name, list(overrides) + search, return_hydra_config=hydra)


def plan_for(res, *overrides):
    cfg = compose_cfg(*overrides, *(FILES if "dataset=gsm8k" in overrides else []))
    cfg.run.out_dir = "unused"
    return plan_job(validate(cfg), res)


@pytest.mark.parametrize("arch,published", [(QWEN_05, 0.49), (QWEN_15, 1.54), (LLAMA2, 6.74)])
def test_parameter_counts_are_the_published_ones(arch, published):
    # the model cards' counts: Qwen2.5-0.5B/1.5B-Instruct "0.49B" / "1.54B"; Llama-2-7b-hf 6.74B
    assert round(arch.params / 1e9, 2) == published


def test_a_local_folder_is_sized_from_its_config_exactly():
    arch = architecture(asset_path("testbed"))
    with safe_open(str(Path(asset_path("testbed")) / "model.safetensors"), "pt") as f:
        stored = sum(f.get_slice(k).get_shape().numel() if hasattr(f.get_slice(k).get_shape(), "numel")
                     else torch.Size(f.get_slice(k).get_shape()).numel() for k in f.keys())
    assert arch.params == stored  # tied embeddings: one matrix in the file and in the count


def test_kv_cache_per_token():
    # Llama-2-7B in 16 bits: 2 (K, V) x 32 layers x 4096 x 2 bytes = 512 KiB a token (NVIDIA's
    # "Mastering LLM Techniques: Inference Optimization": ~2 GB for one 4096-token sequence)
    assert LLAMA2.kv_bytes_per_token("bfloat16") * 4096 == 2 * 1024 ** 3
    assert QWEN_15.kv_bytes_per_token("bfloat16") == 2 * 28 * 2 * 128 * 2  # grouped-query: 2 KV heads


def test_sft_memory_is_16_bytes_a_parameter_split_by_zero3():
    one = sft_memory(LLAMA2, zero3=False, gpus=1, batch=1, seq=1)
    eight = sft_memory(LLAMA2, zero3=True, gpus=8, batch=1, seq=1)
    states = lambda m: m["weights"] + m["grads"] + m["optimizer"]
    assert states(one) == pytest.approx(16 * LLAMA2.params / 1e9)  # ~108 GB: no 80 GB card holds it
    assert states(eight) == pytest.approx(states(one) / 8)
    longer = sft_memory(LLAMA2, zero3=True, gpus=8, batch=2, seq=1)
    assert longer["activations"] == pytest.approx(2 * eight["activations"])


def test_a_7b_model_on_one_gpu_without_zero3_is_refused_with_the_numbers():
    plan = plan_for(SLURM_1, "model=llama-2-7b", "dataset=gsm8k", "sft=paper")
    assert any("SFT needs 1" in p and "deepspeed_zero3" in p for p in plan.problems), plan.problems
    ok = plan_for(SLURM_8, "model=llama-2-7b", "dataset=gsm8k", "sft=deepspeed_zero3")
    assert ok.problems == [] and ok.sft_gb["total"] < 40


def test_a_large_model_without_a_gpu_is_refused_unless_the_cpu_is_asked_for():
    plan = plan_for(SLURM_NONE, "model=qwen2.5-1.5b-instruct", "dataset=gsm8k")
    assert any("would run on the CPU" in p and "gpus_per_node" in p for p in plan.problems)
    explicit = plan_for(SLURM_NONE, "model=qwen2.5-1.5b-instruct", "dataset=gsm8k", "model.device=cpu")
    assert not any("CPU" in p for p in explicit.problems)
    assert not plan_for(SLURM_NONE, "run.iterations=1").problems  # the testbed belongs on a CPU


def test_an_undersized_host_or_time_limit_is_refused():
    small = Resources("slurm", 8, 80.0, 16, 1.0)
    problems = plan_for(small, "model=llama-2-7b", "dataset=gsm8k", "sft=deepspeed_zero3").problems
    assert any("host memory" in p for p in problems) and any(p.startswith("time") for p in problems)


def test_evaluating_the_last_model_only_plans_one_evaluation():
    every = plan_for(SLURM_8, "model=qwen2.5-0.5b-instruct", "dataset=gsm8k")
    final = plan_for(SLURM_8, "model=qwen2.5-0.5b-instruct", "dataset=gsm8k", "run.evaluate=final")
    # IMM evaluates 2 models a round; final-only 1 in the job's 3 rounds
    assert final.tokens["evaluated"] * 3 * 2 == pytest.approx(every.tokens["evaluated"])
    assert final.hours < every.hours


def test_slurm_resources_are_read_from_the_launcher():
    cfg = compose_cfg("hydra/launcher=slurm_8gpu", hydra=True)
    res = resources(cfg.hydra.launcher, validate(compose_cfg()).plan)
    assert (res.where, res.gpus, res.mem_gb, res.hours) == ("slurm", 8, 320, 24.0)


def sweep(name, *overrides):
    overrides = overrides + tuple(FILES)
    cfg = compose_cfg(*overrides, name=name, hydra=True)
    cfg.hydra.overrides.task = list(overrides)
    jobs = grid(cfg)
    typed = []
    for o in jobs:
        job = compose_cfg(*o, *overrides, name=name)
        job.run.out_dir = "unused"
        typed.append(validate(job))
    return cfg, jobs, typed


@pytest.mark.parametrize("name", ["self_improvement_gsm8k", "self_improvement_gsm8k_7b", "llama3_first_iteration"])
def test_every_gpu_sweep_asks_for_gpus_and_fits_them(name, capsys):
    """The others (MATH, distillation) are planned by tests/system/test_sweeps.py's dry runs."""
    cfg, jobs, typed = sweep(name)
    assert cfg.hydra.launcher.gpus_per_node >= 1 and cfg.hydra.launcher.mem_gb
    refuse_unplanned(cfg, jobs, typed)  # raises on any job that does not fit
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("job #")]
    assert len(lines) == len(jobs) and all(" GB/GPU" in l and "GPU-h" in l for l in lines)
    big = [c for c in typed if architecture(c.model.path).params > 5e9]
    assert all(c.sft.deepspeed and c.engine.backend == "vllm" for c in big)


def test_an_undersized_grid_is_refused_before_launch():
    cfg, jobs, typed = sweep("self_improvement_gsm8k_7b", "hydra.launcher.gpus_per_node=1")
    with pytest.raises(SystemExit, match="(?s)4 of 4 jobs do not fit.*SFT needs"):
        refuse_unplanned(cfg, jobs, typed)
    cfg, jobs, typed = sweep("self_improvement_gsm8k", "hydra/launcher=slurm")  # the launcher's own: no GPU
    with pytest.raises(SystemExit, match="would run on the CPU"):
        refuse_unplanned(cfg, jobs, typed)


def test_a_dry_run_loads_local_files_and_refuses_a_leak(tmp_path, capsys):
    from imm.data import DatasetConfig
    from imm.plan.job import dry_run_data

    fix = ROOT / "tests" / "fixtures" / "gsm8k"
    ds = DatasetConfig(name="gsm8k", kind="benchmarks", train_set="gsm8k", test_sets=["gsm8k"], n_train=0, n_test=0,
                       shots=1, files={"gsm8k": {"train": str(fix / "train.jsonl"), "test": str(fix / "test.jsonl")}})
    dry_run_data(ds)
    assert "overlap with training questions: 0 items" in capsys.readouterr().out
    leaky = tmp_path / "test.jsonl"
    leaky.write_text((fix / "test.jsonl").read_text() + (fix / "train.jsonl").read_text().splitlines()[0] + "\n")
    ds.files["gsm8k"].test = str(leaky)
    with pytest.raises(ValueError, match="gsm8k"):
        dry_run_data(ds)


def test_an_unknown_hub_model_cannot_be_planned():
    arch = architecture("someone/unknown-model")
    assert arch is None and isinstance(QWEN_05, Arch)
