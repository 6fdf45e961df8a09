"""The plan true for every method and role, pinned on cases worked out by hand: the rows each method trains
on a round, the teacher that samples in distillation, engines on every GPU of a node, a stage past the time
limit, and a CPU job's wall time from its rates (imm/plan/job.py, imm/plan/throughput.py).

    python -m pytest tests/unit/test_plan_roles.py
"""

from __future__ import annotations

import pytest

from imm.methods import MethodConfig
from imm.plan.job import Resources, trained_rows
from imm.plan.memory import ARCHITECTURES, engine_layout
from imm.plan.throughput import CpuRates, cpu_rates
from tests.unit.test_plan import SLURM_8, plan_for

QWEN_7B, QWEN_15 = ARCHITECTURES["Qwen/Qwen2.5-7B-Instruct"], ARCHITECTURES["Qwen/Qwen2.5-1.5B-Instruct"]
LLAMA2 = ARCHITECTURES["meta-llama/Llama-2-7b-hf"]


def test_rows_a_round_trains_on_follow_the_method():
    kept = 100.0
    assert [trained_rows(MethodConfig("vanilla"), kept, t) for t in (1, 2, 3)] == [100, 100, 100]
    assert [trained_rows(MethodConfig("accumulation"), kept, t) for t in (1, 2, 3)] == [100, 200, 300]
    mixture = MethodConfig("mixture", history_share=0.5)  # + half of the 100·(t−1) earlier rows
    assert [trained_rows(mixture, kept, t) for t in (1, 2, 3)] == [100, 150, 200]


def test_accumulation_trains_twice_as_much_as_vanilla_over_three_rounds_and_its_rounds_grow():
    vanilla = plan_for(SLURM_8, "model=qwen2.5-1.5b-instruct", "dataset=gsm8k", "method=vanilla")
    accumulation = plan_for(SLURM_8, "model=qwen2.5-1.5b-instruct", "dataset=gsm8k", "method=accumulation")
    assert accumulation.tokens["trained"] == pytest.approx(2 * vanilla.tokens["trained"])  # (1 + 2 + 3) / 3
    assert accumulation.rounds[0] == pytest.approx(vanilla.rounds[0])  # round 1 trains on the same rows
    assert accumulation.rounds[0] < accumulation.rounds[1] < accumulation.rounds[2]
    assert "rounds" in accumulation.line() and "rounds" not in vanilla.line()


def test_the_teacher_is_sized_and_timed_for_sampling_the_student_for_training():
    student = plan_for(SLURM_8, "model=qwen2.5-1.5b-instruct", "dataset=gsm8k", "method=vanilla", "run.iterations=1",
                       "engine.backend=vllm")
    distilled = plan_for(SLURM_8, "model=qwen2.5-1.5b-instruct", "dataset=gsm8k", "method=vanilla",
                         "run.iterations=1", "engine.backend=vllm", "+model@teacher=qwen2.5-7b-instruct")
    assert distilled.sample_gb["weights"] == pytest.approx(QWEN_7B.params * 2 / 1e9)  # bf16, one GPU an engine
    assert distilled.sft_gb == student.sft_gb and distilled.params == student.params
    assert distilled.sampler == "qwen2.5-7b-instruct" and "qwen2.5-7b-instruct samples" in distilled.line()
    # sampling time ∝ the sampling model's parameters (2·P FLOPs a token), all else equal
    ratio = distilled.stage_hours["sampling 1"] / student.stage_hours["sampling 1"]
    assert ratio == pytest.approx(QWEN_7B.params / QWEN_15.params)
    assert distilled.stage_hours["SFT 1"] == pytest.approx(student.stage_hours["SFT 1"])


def test_a_node_runs_one_engine_per_gpu_when_the_model_fits_one_and_its_sampling_hours_drop_eightfold():
    assert engine_layout(LLAMA2, "bfloat16", 8, 69.0, 1200) == (8, 1)  # 13.5 GB of weights
    assert engine_layout(LLAMA2, "bfloat16", 8, 69.0, 1200, tp=2) == (4, 2)
    # 20 GB a GPU: 13.5 GB of weights leave 6.5 GB, 10 sequences of 1,200 tokens (0.63 GB each) < 32
    assert engine_layout(LLAMA2, "bfloat16", 8, 20.0, 1200) == (4, 2)
    assert engine_layout(LLAMA2, "bfloat16", 8, 20.0, 1200, replicas=1) == (1, 2)
    every = plan_for(SLURM_8, "model=llama-2-7b", "dataset=gsm8k", "sft=deepspeed_zero3", "engine.backend=vllm")
    single = plan_for(SLURM_8, "model=llama-2-7b", "dataset=gsm8k", "sft=deepspeed_zero3", "engine.backend=vllm",
                      "engine.replicas=1")
    assert every.engines == (8, 1) and single.engines == (1, 1)
    assert "vllm 8 engines x 1 GPU" in every.line()
    assert single.stage_hours["sampling 1"] == pytest.approx(8 * every.stage_hours["sampling 1"])
    assert single.stage_hours["evaluation 1"] == pytest.approx(8 * every.stage_hours["evaluation 1"])
    assert single.stage_hours["SFT 1"] == pytest.approx(every.stage_hours["SFT 1"])
    assert every.gpu_hours < single.gpu_hours


def test_a_stage_past_the_time_limit_is_refused_even_with_requeues():
    job = ("model=qwen2.5-1.5b-instruct", "dataset=gsm8k", "method=accumulation", "sft=paper")
    plan = plan_for(SLURM_8, *job)
    name, hours = plan.longest_stage
    assert name == "SFT 3"  # accumulation's last round trains on three rounds' rows
    limit = hours * 0.9
    many = Resources("slurm", 8, 80.0, 320, limit, requeues=50)  # time enough in all, not for that stage
    refused = plan_for(many, *job).problems
    assert any("SFT 3 alone takes" in p for p in refused) and not any(p.startswith("time: ~") for p in refused)
    enough = Resources("slurm", 8, 80.0, 320, hours * 1.1, requeues=50)
    assert not plan_for(enough, *job).problems


ROW = CpuRates(params=1_000_704, threads=2, sample=8000.0, evaluate=2000.0, sft=1000.0, sample_tokens=20.0,
               answer_tokens=10.0, kept=0.5, prompt_tokens=30.0, startup_s=12.0, stage_s=2.0)


def test_a_cpu_job_is_planned_in_cpu_terms_from_its_rates(monkeypatch):
    from imm.plan import throughput

    monkeypatch.setitem(throughput.CPU_RATES, ("testbed", "float32"), ROW)
    local = Resources("local", 0, 80.0, 16.0, None, cores=2)
    plan = plan_for(local, "dataset.n_train=100", "dataset.n_test=50", "run.iterations=2", "method=imm",
                    "sft.epochs=3", "generate.k=4", "run.evaluate=all")
    # by hand, testbed: 4 test sets x 50 items = 200 answers of 10 tokens at 2,000/s = 1 s (+ 2 s a stage)
    base = 200 * 10 / 2000 + 2
    sample = 100 * 4 * 20 / 8000 + 2  # 400 samples of 20 tokens at 8,000/s
    sft = 100 * 4 * 0.5 * 3 * (30 + 20) / 1000 + 2  # 200 kept rows x 3 epochs x 50 tokens at 1,000/s
    evals = 2 * (200 * 10 / 2000 + 2)  # the SFT and the merged model
    merge = 2
    wall = 12 + base + 2 * (sample + sft + evals + merge)
    assert plan.hours * 3600 == pytest.approx(wall)
    line = plan.line()
    assert "cpu, 2 cores, 2 threads, float32" in line and "CPU-h" in line and "GPU" not in line
    assert f"~{wall / 60:.1f} min wall" in line and f"~{wall / 3600 * 2:.2f} CPU-h" in line


def test_a_cpu_job_computing_in_bf16_is_planned_from_its_bf16_row_and_says_so(monkeypatch):
    import imm.stages
    from imm.plan import throughput

    slow = CpuRates(**{**ROW.__dict__, "sample": ROW.sample / 10, "evaluate": ROW.evaluate / 10, "sft": ROW.sft / 10})
    monkeypatch.setitem(throughput.CPU_RATES, ("testbed", "float32"), slow)
    monkeypatch.setitem(throughput.CPU_RATES, ("testbed", "bfloat16"), ROW)
    local = Resources("local", 0, 80.0, 16.0, None, cores=2)
    args = ("dataset.n_train=100", "dataset.n_test=50", "run.iterations=2", "method=imm")
    in_fp32 = plan_for(local, *args)
    monkeypatch.setattr(imm.stages, "decoding_of", lambda model: {"decoder": "slots", "dtype": "bfloat16"})
    in_bf16 = plan_for(local, *args)
    assert "bfloat16 compute (float32 weights)" in in_bf16.line() and "bfloat16" not in in_fp32.line()
    assert in_bf16.hours < in_fp32.hours / 5  # the bf16 row's rates, ten times the float32 row's


def test_cpu_rates_scale_with_threads_and_model_size(monkeypatch):
    from imm.plan import throughput

    monkeypatch.setattr(throughput, "CPU_RATES", {("m", "float32"): ROW})
    assert cpu_rates("m", "float32", ROW.params, 1).sample == pytest.approx(ROW.sample / 2)
    bigger = cpu_rates("other", "float32", 10 * ROW.params, 2)
    assert (bigger.sample, bigger.sft, bigger.sample_tokens) == pytest.approx((ROW.sample / 10, ROW.sft / 10, 20.0))


def test_float16_on_zero3_without_an_fp16_section_is_refused_bf16_passes(tmp_path):
    from imm.config import validate
    from tests.unit.test_plan import compose_cfg

    def check(*overrides):
        cfg = compose_cfg("sft=deepspeed_zero3", "model=qwen2.5-1.5b-instruct", *overrides)
        cfg.run.out_dir = "unused"
        return validate(cfg)

    with pytest.raises(ValueError, match="no fp16 section, so SFT would run in fp32"):
        check("model.dtype=float16")
    assert check("model.dtype=bfloat16").model.dtype == "bfloat16"
    with_fp16 = tmp_path / "zero3_fp16.json"
    with_fp16.write_text('{"fp16": {"enabled": "auto"}, "zero_optimization": {"stage": 3}}')
    assert check("model.dtype=float16", f"sft.deepspeed={with_fp16}").sft.deepspeed == str(with_fp16)
