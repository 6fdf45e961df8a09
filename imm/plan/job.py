"""One job's plan from its config and the resources it asked for (imm/plan/memory.py holds the memory model,
imm/plan/throughput.py the rates).

``run.dry_run=true`` prints it for a single run; the grid check (imm/sweep_check.py) prints one line a
job before launching and refuses the grid, with the numbers, when any job does not fit:

    python -m imm.main run.dry_run=true                                              # a CPU job: cores, CPU-hours
    python -m imm.main -m -cd sweeps -cn self_improvement_gsm8k run.dry_run=true   # SLURM: nothing submitted

The plan follows the roles: the model that samples (a distillation's teacher) is sized and timed for
sampling, the student for SFT and evaluation; the rows each round trains on follow the method
(``trained_rows``: accumulation trains on every round's samples so far). On vLLM the job's GPUs run as
many engines as they hold (``engine_layout``), each on its share of the prompts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from imm.data import DatasetConfig
from imm.models import resolve_device
from imm.plan.memory import GB, BYTES, Arch, architecture, engine_layout, sample_memory, sft_memory
from imm.plan.throughput import cpu_rates, gpu_rates

@dataclass
class PlanConfig:
    """What the plan assumes where a config does not say it (a SLURM request names no GPU model)."""
    gpu_mem_gb: float = 80.0  # memory of one GPU (A100/H100 80 GB)
    gpu_tflops: float = 312.0  # dense bf16 peak of one GPU (A100: 312, H100 SXM: 989)
    train_mfu: float = 0.35  # share of the peak SFT reaches (6·P FLOPs a trained token)
    decode_mfu: float = 0.10  # share of the peak batched decoding reaches (2·P FLOPs a token; memory-bound)
    question_tokens: int = 200  # a training row's question and template
    shot_tokens: int = 150  # one worked example of a few-shot prompt
    concurrency: int = 256  # sequences a vLLM engine decodes at once (its max_num_seqs)
    overhead_gb: float = 3.0  # CUDA context, allocator slack, kernels' workspace per GPU
    host_overhead_gb: float = 8.0  # Python, tokenizer, data, grading pool on the host
    min_sequences: int = 32  # engine.tensor_parallel_size=0: an engine spans the fewest GPUs that hold this many sequences
    offline: bool = False  # the compute nodes reach no hub: the preflight checks the caches as HF_HUB_OFFLINE would
    preflight_srun: bool = False  # a SLURM grid runs the preflight on a compute node (one-task srun) before submitting


@dataclass
class Resources:
    """What a job gets: GPUs of ``gpu_mem_gb`` each, host memory and time (None = not limited/known)."""
    where: str  # slurm | local
    gpus: int
    gpu_mem_gb: float
    mem_gb: float | None = None
    hours: float | None = None
    requeues: int = 0  # SLURM: runs after a timeout (each resumes at the stage it reached)
    cores: int = 0  # CPU cores the job holds (SLURM cpus_per_task; here: this process's affinity); 0 = unknown


@dataclass
class Plan:
    label: str
    device: str
    gpus: int
    params: int
    sft_gb: dict[str, float] = field(default_factory=dict)  # per GPU: weights, grads, optimizer, activations, total
    sample_gb: dict[str, float] = field(default_factory=dict)  # the sampling model: weights, kv_per_seq, kv_room, sequences
    host_gb: float = 0.0
    tokens: dict[str, float] = field(default_factory=dict)  # per iteration, mean over the rounds: generated, evaluated, trained
    gpu_hours: float = 0.0
    hours: float = 0.0
    rounds: list[float] = field(default_factory=list)  # hours of each round (the base's evaluation before them)
    stage_hours: dict[str, float] = field(default_factory=dict)  # "sampling 1", "SFT 1", ...: hours of each stage
    longest_stage: tuple[str, float] = ("", 0.0)  # (stage, hours): a requeue restarts a stage from its start
    engines: tuple[int, int] | None = None  # vllm: (engines, GPUs per engine) of the sampling model
    sampler: str = ""  # the model that samples, when it is not the one trained (distillation's teacher)
    cores: int = 0
    threads: int = 0
    dtype: str = ""
    problems: list[str] = field(default_factory=list)  # why the job does not fit: refused before launch
    at_start: list[str] = field(default_factory=list)  # those a starting job refuses too (a large model without a GPU)

    def line(self) -> str:
        s, g, t = self.sft_gb, self.sample_gb, self.tokens
        work = (f"per iteration {_count(t['generated'])} generated, {_count(t['evaluated'])} evaluated, "
                f"{_count(t['trained'])} trained")
        rounds = f" (rounds {' / '.join(_hours(h) for h in self.rounds)})" if len(set(self.rounds)) > 1 else ""
        if self.device == "cpu":
            out = (f"{self.label}: cpu, {self.cores or '?'} cores, {self.threads} threads, {self.dtype}, "
                   f"{self.params / 1e6:.1f}M params | SFT {s['total']:.1f} GB, host ~{self.host_gb + s['total']:.0f} GB "
                   f"| {work} | ~{_hours(self.hours)} wall{rounds}, ~{self.hours * max(1, self.cores):.2f} CPU-h")
        else:
            engines = (f"vllm {self.engines[0]} engine{'s' if self.engines[0] > 1 else ''} x {self.engines[1]} GPU"
                       if self.engines else "hf, 1 GPU")
            who = f"{self.sampler} samples: " if self.sampler else ""
            out = (f"{self.label}: {self.device} x{self.gpus}, {self.params / 1e9:.2f}B params | SFT {s['total']:.1f} GB/GPU "
                   f"(weights {s['weights']:.1f} + grads {s['grads']:.1f} + optimizer {s['optimizer']:.1f} + activations "
                   f"{s['activations']:.1f}) | sampling ({who}{engines}) weights {g['weights']:.1f} GB, KV "
                   f"{g['kv_per_seq'] * 1e3:.0f} MB/seq, {g['sequences']:.0f} seqs fit | host {self.host_gb:.0f} GB | "
                   f"{work} | ~{self.gpu_hours:.1f} GPU-h, ~{self.hours:.1f} h wall{rounds}")
        return out + "".join(f"\n  REFUSED: {p}" for p in self.problems)


def _count(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.0f}k"


def _hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h"


# Rows of the hub splits imm loads (train split of the training set, test split of the others), for a
# plan without the data at hand; a local file is counted instead. mawps and sat_math have no hub split.
HUB_ROWS = {("gsm8k", "train"): 7473, ("gsm8k", "test"): 1319, ("math", "train"): 7500, ("math", "test"): 5000,
            ("math500", "test"): 500, ("svamp", "test"): 300, ("asdiv", "test"): 2305, ("mathqa", "test"): 2985,
            ("mmlu_stem", "test"): 3018}
CPU_PARAMS = 100_000_000  # a model this large on a CPU only when model.device=cpu says so


def resources(launcher: Any, pc: PlanConfig) -> Resources:
    """What the launcher gives each job: a SLURM request as written, or this machine (local / basic)."""
    target = str((launcher or {}).get("_target_", ""))
    if "Slurm" in target:
        gpus = launcher.get("gpus_per_node") or launcher.get("gpus_per_task") or 0
        timeout = launcher.get("timeout_min")
        return Resources("slurm", int(gpus), pc.gpu_mem_gb, launcher.get("mem_gb"),
                         timeout / 60 if timeout else None, int(launcher.get("max_num_timeout") or 0),
                         int(launcher.get("cpus_per_task") or 1))
    import torch

    gpus = torch.cuda.device_count()
    mem = torch.cuda.get_device_properties(0).total_memory / GB if gpus else pc.gpu_mem_gb
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    return Resources("local", gpus, mem, host, None, cores=len(os.sched_getaffinity(0)))


def split_rows(ds: DatasetConfig) -> dict[str, int]:
    """Rows each stage reads: 'train' and every test set (a local file counted, else the hub size)."""
    from imm.data.benchmarks import read_rows

    def rows(name: str, split: str, cap: int) -> int:
        path = getattr(ds.files.get(name), split, None)
        n = len(read_rows(path)) if path else HUB_ROWS.get((name, split), 0)
        return min(n, cap) if cap else n

    if ds.kind == "testbed":  # no sets named: the world's ID family and its OOD families
        from imm.data.world import problems

        sets = len(ds.id_sets or [problems.ID_FAMILY]) + len(ds.ood_sets or problems.OOD_FAMILIES)
        return {"train": ds.n_train, "tests": ds.n_test * sets}
    if ds.kind != "benchmarks":
        return {"train": ds.n_train, "tests": ds.n_test * max(1, len(ds.id_sets) + len(ds.ood_sets))}
    return {"train": rows(ds.train_set, "train", ds.n_train)} | {s: rows(s, "test", ds.n_test) for s in ds.test_sets}


def trained_rows(method, kept: float, t: int) -> float:
    """Rows round ``t`` (1-based) trains on, with ``kept`` samples kept a round: this round's (vanilla,
    star, imm, iimm), every round's so far (accumulation), or this round's and ``history_share`` of the
    earlier ones (mixture), as imm.methods.build_trainset builds them."""
    from imm.methods import METHODS

    data = METHODS[method.name][0]
    if data == "all":
        return t * kept
    if data == "mixture":
        return kept + round(method.history_share * (t - 1) * kept)
    return kept


@dataclass
class Workload:
    """Tokens of each stage: per round (1-based lists) and the base model's evaluation before them."""
    generated: list[float]
    trained: list[float]
    evaluated: list[float]
    first_eval: float
    evaluations: list[int]  # models evaluated each round


def workload(cfg, rows: dict[str, int], sample_len: float, answer_len: float, kept_share: float,
             prompt_len: float) -> Workload:
    """What the job decodes and trains on: ``sample_len`` new tokens a sample, ``answer_len`` an
    evaluation answer, ``kept_share`` of the samples kept, a training row ``prompt_len`` + ``sample_len``."""
    g, T = cfg.generate, cfg.run.iterations
    items = cfg.eval.n * sum(v for k, v in rows.items() if k != "train")
    kept = rows["train"] * g.k * kept_share
    evals = 1 + (1 if cfg.method.merges else 0)  # models evaluated a round
    per_round = [evals if cfg.run.evaluate == "all" else (1 if t == T else 0) for t in range(1, T + 1)]
    return Workload(generated=[rows["train"] * g.k * sample_len] * T,
                    trained=[trained_rows(cfg.method, kept, t) * cfg.sft.epochs * (prompt_len + sample_len)
                             for t in range(1, T + 1)],
                    evaluated=[e * items * answer_len for e in per_round], first_eval=items * answer_len,
                    evaluations=per_round)


def context_tokens(cfg) -> int:
    """The longest sequence an engine holds: a question, its few-shot examples and the longest answer."""
    pc, shots = cfg.plan, cfg.dataset.shots if cfg.dataset.kind == "benchmarks" else 0
    return pc.question_tokens + shots * pc.shot_tokens + max(cfg.generate.max_new_tokens, cfg.eval.max_new_tokens)


def plan_job(cfg, res: Resources, label: str = "job") -> Plan:
    """The job's plan; ``plan.problems`` lists every reason it does not fit ``res`` (empty: it fits)."""
    pc: PlanConfig = cfg.plan
    m, g, e, s = cfg.model, cfg.generate, cfg.engine, cfg.sft
    sampler_cfg = cfg.teacher or m  # distillation: the teacher samples
    arch, sampler = architecture(m.path), architecture(sampler_cfg.path)
    if arch is None or sampler is None:
        plan = Plan(label, m.device, res.gpus, 0)
        bad = m.path if arch is None else sampler_cfg.path
        plan.problems.append(f"model.path={bad!r}: no config.json there and not a known hub id "
                             f"(imm/plan/memory.py ARCHITECTURES); the plan cannot size it")
        return plan
    on_gpu = res.gpus > 0 if m.device == "auto" else resolve_device(m.device).type != "cpu"
    if res.where == "local" and m.device == "auto":
        on_gpu = resolve_device("auto").type != "cpu"
    device = ("cuda" if on_gpu else "cpu") if m.device == "auto" else m.device
    plan = Plan(label, device, res.gpus, arch.params, sampler=cfg.teacher.name if cfg.teacher else "",
                cores=res.cores, threads=m.threads or res.cores or 1, dtype=m.dtype)
    zero3 = bool(s.deepspeed) and s.backend == "trl"
    seq = pc.question_tokens + g.max_new_tokens
    plan.sft_gb = sft_memory(arch, zero3, res.gpus, s.batch_size, seq, m.dtype)
    context = context_tokens(cfg)
    util = e.gpu_memory_utilization if e.backend == "vllm" else 1.0
    room = res.gpu_mem_gb * util - pc.overhead_gb
    engines = {who: engine_layout(a, c.dtype, res.gpus, room, context, e.tensor_parallel_size, e.replicas,
                                  pc.min_sequences) if e.backend == "vllm" else (1, 1)
               for who, a, c in (("sampler", sampler, sampler_cfg), ("student", arch, m))}
    plan.engines = engines["sampler"] if e.backend == "vllm" else None
    plan.sample_gb = sample_memory(sampler, sampler_cfg.dtype, context, room, engines["sampler"][1])
    eval_gb = sample_memory(arch, m.dtype, context, room, engines["student"][1])
    held = arch.params * BYTES[m.dtype] / GB * (1 if zero3 or res.gpus <= 1 else res.gpus)
    plan.host_gb = pc.host_overhead_gb + max(held, sampler.params * BYTES[sampler_cfg.dtype] / GB)

    rows = split_rows(cfg.dataset)
    if on_gpu:  # upper bounds: every sample runs to its limit and is kept
        work = workload(cfg, rows, g.max_new_tokens, cfg.eval.max_new_tokens, 1.0, pc.question_tokens)
        busy = {who: n * tp for who, (n, tp) in engines.items()}  # GPUs decoding at once
        decode, _ = gpu_rates(sampler.params, pc.gpu_tflops, pc.decode_mfu, pc.train_mfu)
        answer, train = gpu_rates(arch.params, pc.gpu_tflops, pc.decode_mfu, pc.train_mfu)
        sample_rate, eval_rate = decode * busy["sampler"], answer * busy["student"]
        train_rate = train * (max(1, res.gpus) if s.backend == "trl" and m.device in ("auto", "cuda") else 1)
        startup = per_stage = 0.0
    else:  # measured on a CPU (imm/plan/throughput.py): lengths and kept share as that job had them
        from imm.stages import decoding_of  # the arithmetic the stages will run in on this machine

        compute, sampler_compute = decoding_of(m)["dtype"], decoding_of(sampler_cfg)["dtype"]
        if compute != m.dtype:
            plan.dtype = f"{compute} compute ({m.dtype} weights)"
        r = cpu_rates(m.name, compute, arch.params, plan.threads)
        rs = cpu_rates(sampler_cfg.name, sampler_compute, sampler.params, plan.threads)
        work = workload(cfg, rows, r.sample_tokens, r.answer_tokens, r.kept, r.prompt_tokens)
        sample_rate, eval_rate, train_rate = rs.sample, r.evaluate, r.sft
        startup, per_stage = r.startup_s, r.stage_s
    stages = [("the base's evaluation", work.first_eval / eval_rate + per_stage)]
    for t in range(cfg.run.iterations):
        round_stages = [(f"sampling {t + 1}", work.generated[t] / sample_rate + per_stage),
                        (f"SFT {t + 1}", work.trained[t] / train_rate + per_stage),
                        (f"evaluation {t + 1}", work.evaluated[t] / eval_rate + per_stage * work.evaluations[t])]
        if cfg.method.merges:
            round_stages.append((f"merge {t + 1}", per_stage))
        plan.rounds.append(sum(h for _, h in round_stages) / 3600)
        stages += round_stages
    plan.stage_hours = {name: h / 3600 for name, h in stages}
    plan.longest_stage = max(plan.stage_hours.items(), key=lambda x: x[1])
    plan.hours = (startup + sum(h for _, h in stages)) / 3600
    plan.gpu_hours = plan.hours * res.gpus
    T = cfg.run.iterations
    plan.tokens = {"generated": sum(work.generated) / T, "evaluated": sum(work.evaluated) / T,
                   "trained": sum(work.trained) / T}
    if not on_gpu and m.device == "auto" and plan.params >= CPU_PARAMS:
        fix = "hydra.launcher.gpus_per_node=N" if res.where == "slurm" else "run it where a GPU is visible"
        plan.at_start.append(f"{m.name} ({plan.params / 1e9:.2f}B) would run on the CPU: no GPU requested ({fix}), "
                             f"or say model.device=cpu if that is meant")
    plan.problems = plan.at_start + problems(cfg, res, plan, on_gpu, zero3, eval_gb)
    return plan


def problems(cfg, res: Resources, plan: Plan, on_gpu: bool, zero3: bool, eval_gb: dict[str, float]) -> list[str]:
    m, e, pc = cfg.model, cfg.engine, cfg.plan
    out = []
    if on_gpu and res.gpus == 0 and res.where == "slurm":
        out.append(f"model.device={m.device} needs a GPU and the job requests none (hydra.launcher.gpus_per_node)")
    if on_gpu:
        usable = res.gpu_mem_gb - pc.overhead_gb
        if plan.sft_gb["total"] > usable:
            hint = ("more GPUs (hydra.launcher.gpus_per_node)" if zero3
                    else "sft=deepspeed_zero3 over the node's GPUs, or a smaller sft.batch_size")
            out.append(f"SFT needs {plan.sft_gb['total']:.1f} GB per GPU, a {res.gpu_mem_gb:.0f} GB GPU leaves "
                       f"{usable:.1f}: {hint}")
        for who, gb in ((plan.sampler or "sampling", plan.sample_gb), ("evaluation", eval_gb)):
            if gb["sequences"] < 1:
                out.append(f"{who}: the weights ({gb['weights']:.1f} GB) and one sequence's KV cache "
                           f"({gb['kv_per_seq']:.2f} GB) do not fit the GPU's share "
                           f"(engine.gpu_memory_utilization, engine.tensor_parallel_size)")
        if e.backend == "vllm" and plan.engines and plan.engines[0] * plan.engines[1] > max(1, res.gpus):
            out.append(f"engine.replicas={plan.engines[0]} x engine.tensor_parallel_size={plan.engines[1]} "
                       f"> the job's {res.gpus} GPUs")
    host = plan.host_gb if on_gpu else plan.host_gb + plan.sft_gb["total"]
    if res.mem_gb and host > res.mem_gb:
        asked = "the job asks for" if res.where == "slurm" else "this machine has"
        out.append(f"host memory: needs ~{host:.0f} GB, {asked} {res.mem_gb:.0f} (hydra.launcher.mem_gb)")
    if res.hours and plan.hours > res.hours * (1 + res.requeues):
        out.append(f"time: ~{plan.hours:.1f} h estimated, {res.hours:.1f} h x {1 + res.requeues} runs asked "
                   f"(hydra.launcher.timeout_min, max_num_timeout)")
    stage, hours = plan.longest_stage
    if res.hours and res.requeues and hours > res.hours:
        out.append(f"time: {stage} alone takes ~{hours:.1f} h, past the {res.hours:.1f} h limit; a requeue "
                   f"restarts a stage from its start, so it never ends (hydra.launcher.timeout_min)")
    return out


def dry_run_data(ds: DatasetConfig) -> None:
    """A dry run loads what is on disk: every split from a local file (or the generated testbed), with
    the overlap check between training and test questions; hub splits are left to the job."""
    from imm.data import load_data

    if ds.kind != "benchmarks" or (getattr(ds.files.get(ds.train_set), "train", None)
                                   and all(getattr(ds.files.get(s), "test", None) for s in ds.test_sets)):
        data = load_data(ds)
        print(f"data: {len(data.train)} training questions, " + ", ".join(f"{k} {len(v)}" for k, v in data.tests.items())
              + f"; overlap with training questions: {sum(data.overlap.values())} items")
