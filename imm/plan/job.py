"""One job's plan from its config and the resources it asked for (imm/plan/memory.py holds the memory model).

``run.dry_run=true`` prints it for a single run; the grid check (imm/sweep_check.py) prints one line a
job before launching and refuses the grid, with the numbers, when any job does not fit:

    python -m imm.main -m -cd sweeps -cn self_improvement_gsm8k run.dry_run=true   # SLURM: nothing submitted
"""

from __future__ import annotations

import os
from typing import Any

from imm.data import DatasetConfig
from imm.models import resolve_device
from imm.plan.memory import GB, BYTES, Plan, PlanConfig, Resources, architecture, sample_memory, sft_memory

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
                         timeout / 60 if timeout else None, int(launcher.get("max_num_timeout") or 0))
    import torch

    gpus = torch.cuda.device_count()
    mem = torch.cuda.get_device_properties(0).total_memory / GB if gpus else pc.gpu_mem_gb
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GB
    return Resources("local", gpus, mem, host, None)


def split_rows(ds: DatasetConfig) -> dict[str, int]:
    """Rows each stage reads: 'train' and every test set (a local file counted, else the hub size)."""
    from imm.data.benchmarks import read_rows

    def rows(name: str, split: str, cap: int) -> int:
        path = getattr(ds.files.get(name), split, None)
        n = len(read_rows(path)) if path else HUB_ROWS.get((name, split), 0)
        return min(n, cap) if cap else n

    if ds.kind != "benchmarks":
        return {"train": ds.n_train, "tests": ds.n_test * max(1, len(ds.id_sets) + len(ds.ood_sets))}
    return {"train": rows(ds.train_set, "train", ds.n_train)} | {s: rows(s, "test", ds.n_test) for s in ds.test_sets}


def plan_job(cfg, res: Resources, label: str = "job") -> Plan:
    """The job's plan; ``plan.problems`` lists every reason it does not fit ``res`` (empty: it fits)."""
    pc: PlanConfig = cfg.plan
    m, g, e, s = cfg.model, cfg.generate, cfg.engine, cfg.sft
    arch = architecture(m.path)
    if arch is None:
        plan = Plan(label, m.device, res.gpus, 0)
        plan.problems.append(f"model.path={m.path!r}: no config.json there and not a known hub id "
                             f"(imm/plan/memory.py ARCHITECTURES); the plan cannot size it")
        return plan
    on_gpu = res.gpus > 0 if m.device == "auto" else resolve_device(m.device).type != "cpu"
    if res.where == "local" and m.device == "auto":
        on_gpu = resolve_device("auto").type != "cpu"
    device = ("cuda" if on_gpu else "cpu") if m.device == "auto" else m.device
    plan = Plan(label, device, res.gpus, arch.params)
    zero3 = bool(s.deepspeed) and s.backend == "trl"
    seq = pc.question_tokens + g.max_new_tokens
    plan.sft_gb = sft_memory(arch, zero3, res.gpus, s.batch_size, seq)
    shots = cfg.dataset.shots if cfg.dataset.kind == "benchmarks" else 0
    prompt = pc.question_tokens + shots * pc.shot_tokens
    util = e.gpu_memory_utilization if e.backend == "vllm" else 1.0
    room = res.gpu_mem_gb * util - pc.overhead_gb
    tp = e.tensor_parallel_size if e.backend == "vllm" else 1
    plan.sample_gb = sample_memory(arch, m.dtype, prompt + max(g.max_new_tokens, cfg.eval.max_new_tokens), room, tp)
    plan.host_gb = pc.host_overhead_gb + arch.params * BYTES[m.dtype] / GB * (1 if zero3 or res.gpus <= 1 else res.gpus)

    rows = split_rows(cfg.dataset)
    evals = 1 + (1 if cfg.method.merges else 0)  # models evaluated per iteration
    if cfg.run.evaluate == "final":  # one model in the whole job (the base is first_eval)
        evals = 1 / cfg.run.iterations
    kept = rows["train"] * g.k  # an upper bound: every sample kept
    plan.tokens = {"generated": rows["train"] * g.k * g.max_new_tokens,
                   "evaluated": evals * cfg.eval.n * cfg.eval.max_new_tokens * sum(v for k, v in rows.items() if k != "train"),
                   "trained": kept * s.epochs * seq}
    if on_gpu:
        decode = pc.decode_mfu * pc.gpu_tflops * 1e12 / (2 * arch.params) * tp
        train = pc.train_mfu * pc.gpu_tflops * 1e12 / (6 * arch.params) * (res.gpus if zero3 else 1)
    else:
        decode = pc.cpu_tokens_per_s * 1.35e8 / arch.params
        train = decode / 3
    first_eval = cfg.eval.n * cfg.eval.max_new_tokens * sum(v for k, v in rows.items() if k != "train") / decode
    per_iter = (plan.tokens["generated"] + plan.tokens["evaluated"]) / decode + plan.tokens["trained"] / train
    plan.hours = (first_eval + cfg.run.iterations * per_iter) / 3600
    plan.gpu_hours = plan.hours * res.gpus
    if not on_gpu and m.device == "auto" and plan.params >= CPU_PARAMS:
        fix = "hydra.launcher.gpus_per_node=N" if res.where == "slurm" else "run it where a GPU is visible"
        plan.at_start.append(f"{m.name} ({plan.params / 1e9:.2f}B) would run on the CPU: no GPU requested ({fix}), "
                             f"or say model.device=cpu if that is meant")
    plan.problems = plan.at_start + problems(cfg, res, plan, on_gpu, zero3)
    return plan


def problems(cfg, res: Resources, plan: Plan, on_gpu: bool, zero3: bool) -> list[str]:
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
        if plan.sample_gb["sequences"] < 1:
            out.append(f"sampling: the weights ({plan.sample_gb['weights']:.1f} GB) and one sequence's KV cache "
                       f"({plan.sample_gb['kv_per_seq']:.2f} GB) do not fit the GPU's share "
                       f"(engine.gpu_memory_utilization, engine.tensor_parallel_size)")
        if e.backend == "vllm" and e.tensor_parallel_size > max(1, res.gpus):
            out.append(f"engine.tensor_parallel_size={e.tensor_parallel_size} > the job's {res.gpus} GPUs")
    host = plan.host_gb if on_gpu else plan.host_gb + plan.sft_gb["total"]
    if res.mem_gb and host > res.mem_gb:
        asked = "the job asks for" if res.where == "slurm" else "this machine has"
        out.append(f"host memory: needs ~{host:.0f} GB, {asked} {res.mem_gb:.0f} (hydra.launcher.mem_gb)")
    if res.hours and plan.hours > res.hours * (1 + res.requeues):
        out.append(f"time: ~{plan.hours:.1f} h estimated, {res.hours:.1f} h x {1 + res.requeues} runs asked "
                   f"(hydra.launcher.timeout_min, max_num_timeout)")
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
