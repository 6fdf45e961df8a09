"""How fast a job's stages run: measured rates on a CPU (``CPU_RATES``), a stated share of the peak on a GPU.

A CPU job's wall time is planned from ``CPU_RATES``, one row per model and compute dtype, measured on the
2-core machine that runs the default job. Each rate is a stage's own wall time, what it loads and
grades included, per token of the plan's count (imm/plan/job.py ``Workload``): new tokens sampled,
new tokens of evaluation answers, trained tokens (a row's prompt and response, each epoch). A model
without a row takes the nearest row of its dtype, its rates scaled by the parameter ratio; rates
scale with the threads a job runs (model.threads, else its cores) against the row's.

Re-measure a row after a speed change (the rows are all the plan reads):

    time python -m imm.main hydra.run.dir=outputs/calibrate/testbed          # the job, timed
    python -m imm.plan.calibrate outputs/calibrate/testbed                   # prints its CPU_RATES row
    python -m imm.main run.dry_run=true                                      # the plan: "~N min wall"

then paste the row below and compare the dry run's wall time with ``time``'s (tests/unit/test_plan.py
pins what the plan does with a row, not the row's values).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class CpuRates:
    """One model's stages on a CPU, measured in a job of its own (the command in ``measured``)."""
    params: int  # the model's parameters (rates of another size scale by the ratio)
    threads: int  # torch threads of the measurement
    sample: float  # sampled new tokens a second (the generate stage: decoding, grading, loading)
    evaluate: float  # new tokens of evaluation answers a second (the evaluate stage, KL to the base included)
    sft: float  # trained tokens a second (the sft stage: a row's prompt + response, each epoch)
    sample_tokens: float  # mean new tokens of a sample (samples end at their answer)
    answer_tokens: float  # mean new tokens of a greedy evaluation answer
    kept: float  # share of samples kept (right answers), mean over the job's rounds
    prompt_tokens: float  # mean tokens of a training row's prompt
    startup_s: float  # imports, data, MLflow, the tokenizer: once a job
    stage_s: float  # each merge and each stage's bookkeeping beyond its tokens
    measured: str = ""  # the job it was measured on and what it took


CPU_RATES: dict[tuple[str, str], CpuRates] = {
    ("testbed", "float32"): CpuRates(
        params=1_000_704, threads=2, sample=19800.0, evaluate=10240.0, sft=20800.0, sample_tokens=27.6,
        answer_tokens=33.5, kept=0.49, prompt_tokens=37.3, startup_s=5.6, stage_s=0.035,
        measured="python -m imm.main: 106 s wall on the 2-core machine, otherwise idle"),
    ("smollm2-135m-instruct", "bfloat16"): CpuRates(
        params=134_515_008, threads=2, sample=764.0, evaluate=591.0, sft=198.0, sample_tokens=30.3,
        answer_tokens=32.2, kept=0.59, prompt_tokens=36.6, startup_s=2.5, stage_s=3.66,
        measured="python -m imm.main -m -cd sweeps -cn real_llm_test_imm_base run.seed=0 (its first job, every stage "
                 "computed: the base's and the final model's evaluation of 4,000 items, 2 rounds) at commit 1483454: "
                 "590 s wall on a 2-core Xeon with AMX, otherwise idle; evaluation 443 s of it"),
    ("smollm2-135m-instruct", "float32"): CpuRates(
        params=134_515_008, threads=2, sample=90.0, evaluate=90.0, sft=160.0, sample_tokens=40.0,
        answer_tokens=40.0, kept=0.3, prompt_tokens=250.0, startup_s=25.0, stage_s=5.0,
        measured="python -m imm.main model=smollm2-135m-instruct dataset=world_nl"),
}


def cpu_rates(name: str, dtype: str, params: int, threads: int) -> CpuRates:
    """The row for (name, dtype), else the nearest-sized row of ``dtype`` (else of any dtype) scaled to
    ``params``; rates scaled to ``threads``."""
    row = CPU_RATES.get((name, dtype))
    if row is None:
        rows = [r for (_, d), r in CPU_RATES.items() if d == dtype] or list(CPU_RATES.values())
        near = min(rows, key=lambda r: abs(r.params - params))
        k = near.params / params
        row = replace(near, params=params, sample=near.sample * k, evaluate=near.evaluate * k, sft=near.sft * k)
    t = max(1, threads) / row.threads
    return replace(row, sample=row.sample * t, evaluate=row.evaluate * t, sft=row.sft * t, threads=max(1, threads))


def gpu_rates(params: int, tflops: float, decode_mfu: float, train_mfu: float) -> tuple[float, float]:
    """(decoded tokens/s, trained tokens/s) of one GPU: 2·P FLOPs a decoded token, 6·P a trained one."""
    return decode_mfu * tflops * 1e12 / (2 * params), train_mfu * tflops * 1e12 / (6 * params)
