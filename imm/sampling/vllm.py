"""Sampling and evaluation with vLLM (the ``vllm`` backend; GPU only, ``pip install -e .[vllm]``).

One call: ``synthesize_vllm(model_path, prompts, cfg, iteration, stops)`` starts ``vllm.LLM`` on a
saved model folder, sends every (prompt, temperature) pair as one request in a single batched
``llm.generate`` call, regroups the outputs into the order of ``imm.sampling.synthesize`` (sample i
at temperatures[i % len]) and shuts the engine down so that training can have the GPU back.
``complete_vllm`` is the same for evaluation (greedy or n samples).

On several GPUs the call runs ``replicas`` engines at once, each in its own process on its own
``tensor_parallel_size`` GPUs (CUDA_VISIBLE_DEVICES), ``python -m imm.sampling.vllm --worker``:
request r goes to engine r % replicas, and the outputs are put back in request order. Every request
carries its own seed, so what a job samples does not depend on how many engines share the work.

Request building and regrouping are pure functions (``build_requests``, ``regroup``), tested without
vLLM installed: python -m pytest tests/unit/test_vllm_requests.py
"""

from __future__ import annotations

import contextlib
import gc
import hashlib

from imm.grading.answers import STOP_STRINGS, cut_sample
from imm.sampling import GenerateConfig

INSTALL_HINT = "install the vllm extra: pip install -e .[vllm]; it needs a GPU"
GREEDY_EPS = 1e-5  # vLLM treats temperatures below this as greedy and then refuses n > 1
SEED_SPACE = 2 ** 31


def sample_temperatures(temperatures: list[float] | float, n: int) -> list[float]:
    """Temperature of each of the n samples of a prompt: sample j at temperatures[j % len]."""
    if isinstance(temperatures, (int, float)):
        return [float(temperatures)] * n
    return [float(temperatures[j % len(temperatures)]) for j in range(n)]


def layout(sample_temps: list[float]) -> list[tuple[float, list[int]]]:
    """Distinct temperatures (first-seen order) with the sample positions each one fills."""
    slots: dict[float, list[int]] = {}
    for j, t in enumerate(sample_temps):
        slots.setdefault(t, []).append(j)
    return list(slots.items())


def run_seed(seed: int, iteration: int) -> int:
    """The seed of one generation call: stable across processes, different for every iteration."""
    digest = hashlib.blake2b(f"{seed}/{iteration}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % SEED_SPACE


def requests_for(prompts: list[str], sample_temps: list[float], *, top_p: float, max_tokens: int, seed: int,
                 stops: tuple[str, ...] | list[str]) -> list[tuple[str, dict]]:
    """One request per (prompt, distinct temperature), prompt-major; sampling params as plain dicts.

    vLLM gives the n children of a seeded request the seeds seed, seed+1, ..., seed+n-1, so request r
    gets seed + r·len(sample_temps): no two samples of a call share a seed. A greedy temperature is
    sent with n=1 (vLLM refuses n > 1 there) and ``regroup`` repeats its one output.
    """
    slots = layout(sample_temps)
    width = len(sample_temps)
    out = []
    for i, prompt in enumerate(prompts):
        for j, (temp, positions) in enumerate(slots):
            r = i * len(slots) + j
            out.append((prompt, {
                "n": 1 if temp < GREEDY_EPS else len(positions),
                "temperature": temp,
                "top_p": top_p,
                "max_tokens": max_tokens,
                "seed": (seed + r * width) % SEED_SPACE,
                "stop": list(stops),
            }))
    return out


def build_requests(prompts: list[str], cfg: GenerateConfig, iteration: int,
                   stops: tuple[str, ...] | list[str] = STOP_STRINGS) -> list[tuple[str, dict]]:
    """The requests of ``synthesize_vllm``: cfg.k samples per prompt spread over cfg.temperatures."""
    return requests_for(prompts, sample_temperatures(cfg.temperatures, cfg.k), top_p=cfg.top_p,
                        max_tokens=cfg.max_new_tokens, seed=run_seed(cfg.seed, iteration), stops=stops)


def regroup(outputs: list[list[str]], sample_temps: list[float],
            stops: tuple[str, ...] | list[str] = STOP_STRINGS, at_answer: bool = True) -> list[list[str]]:
    """Texts per prompt in sample order, from the texts of each request (in ``requests_for`` order).

    Texts are cut as the hf backend cuts them (``imm.grading.answers.cut_sample``): at the stop strings
    again (vLLM stops on them already, but one can also appear inside a longer piece of detokenised
    text) and, with ``at_answer``, after the first final-answer statement (vLLM has no such stop, so
    it writes on to its limit or EOS and the text past the answer is dropped here).
    """
    slots = layout(sample_temps)
    if len(outputs) % len(slots):
        raise ValueError(f"{len(outputs)} request outputs do not split into prompts of {len(slots)} requests")
    grouped = []
    for i in range(len(outputs) // len(slots)):
        texts: list[str | None] = [None] * len(sample_temps)
        for j, (temp, positions) in enumerate(slots):
            got = outputs[i * len(slots) + j]
            if temp < GREEDY_EPS and len(got) == 1:
                got = got * len(positions)
            if len(got) != len(positions):
                raise ValueError(f"prompt {i}, temperature {temp}: expected {len(positions)} outputs, got {len(got)}")
            for pos, text in zip(positions, got):
                texts[pos] = cut_sample(text, tuple(stops), at_answer)
        grouped.append(texts)
    return grouped


def import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"generate.backend=vllm: vllm is not installed ({err}); {INSTALL_HINT}") from err
    return vllm


def shutdown(llm) -> None:
    """Free the engine's GPU memory now rather than at garbage collection (training needs it next)."""
    for stop in (getattr(llm, "shutdown", None),
                 getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)):
        if stop is not None:
            with contextlib.suppress(Exception):
                stop()
            break
    del llm
    with contextlib.suppress(Exception):
        from vllm.distributed import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        torch.cuda.empty_cache()


def shard(requests: list, replicas: int) -> list[list]:
    """Engine e's requests: every replicas-th one from the e-th (lengths spread evenly over the engines)."""
    return [requests[e::replicas] for e in range(replicas)]


def unshard(parts: list[list], total: int) -> list:
    """The engines' outputs back in request order (the inverse of ``shard``)."""
    out: list = [None] * total
    for e, part in enumerate(parts):
        out[e::len(parts)] = part
    return out


def device_groups(replicas: int, tensor_parallel_size: int, visible: str | None = None) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each engine: consecutive groups of the GPUs this process sees."""
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        import torch

        ids = [str(i) for i in range(torch.cuda.device_count())]
    need = replicas * tensor_parallel_size
    if len(ids) < need:
        raise RuntimeError(f"{replicas} vLLM engines x {tensor_parallel_size} GPUs need {need} GPUs, this process "
                           f"sees {len(ids)} (engine.replicas, engine.tensor_parallel_size)")
    return [",".join(ids[e * tensor_parallel_size:(e + 1) * tensor_parallel_size]) for e in range(replicas)]


def engines_for(model_path: str, dtype: str, engine, context_tokens: int, min_sequences: int = 32,
                overhead_gb: float = 3.0) -> tuple[int, int]:
    """(engines, GPUs per engine) on the GPUs this process sees, chosen as the plan chooses them
    (imm/plan/memory.py ``engine_layout``); without a GPU or a known architecture, as configured."""
    import torch

    from imm.plan.memory import GB, architecture, engine_layout

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    arch = architecture(model_path)
    if arch is None or gpus == 0:
        return max(1, engine.replicas), max(1, engine.tensor_parallel_size)
    room = torch.cuda.get_device_properties(0).total_memory / GB * engine.gpu_memory_utilization - overhead_gb
    return engine_layout(arch, dtype, gpus, room, context_tokens, engine.tensor_parallel_size, engine.replicas,
                         min_sequences)


def run_requests(model_path: str, requests: list[tuple[str, dict]], *, seed: int, tensor_parallel_size: int,
                 dtype: str, gpu_memory_utilization: float, replicas: int = 1) -> list[list[str]]:
    """Texts of every request: one engine here, or ``replicas`` engine processes at once (``run_sharded``)."""
    if replicas > 1:
        return run_sharded(model_path, requests, seed=seed, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                           gpu_memory_utilization=gpu_memory_utilization, replicas=replicas)
    vllm = import_vllm()
    llm = vllm.LLM(model=model_path, tensor_parallel_size=tensor_parallel_size, seed=seed, dtype=dtype,
                   gpu_memory_utilization=gpu_memory_utilization)
    try:
        params = [vllm.SamplingParams(**p) for _, p in requests]
        outs = llm.generate([prompt for prompt, _ in requests], params)
        return [[c.text for c in o.outputs] for o in outs]
    finally:
        shutdown(llm)


def run_sharded(model_path: str, requests: list[tuple[str, dict]], *, seed: int, tensor_parallel_size: int,
                dtype: str, gpu_memory_utilization: float, replicas: int) -> list[list[str]]:
    """``replicas`` worker processes, one engine each on its own GPUs, each on its shard of the requests."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    groups = device_groups(replicas, tensor_parallel_size)
    with tempfile.TemporaryDirectory(prefix="imm-vllm-") as tmp:
        procs = []
        for e, (part, devices) in enumerate(zip(shard(requests, replicas), groups)):
            spec = Path(tmp) / f"engine{e}.json"
            spec.write_text(json.dumps({"model": model_path, "requests": part, "seed": seed, "dtype": dtype,
                                        "tensor_parallel_size": tensor_parallel_size,
                                        "gpu_memory_utilization": gpu_memory_utilization}))
            env = os.environ | {"CUDA_VISIBLE_DEVICES": devices}
            procs.append(subprocess.Popen([sys.executable, "-m", "imm.sampling.vllm", "--worker", str(spec),
                                           str(Path(tmp) / f"out{e}.json")], env=env))
        failed = [e for e, proc in enumerate(procs) if proc.wait() != 0]
        if failed:
            raise RuntimeError(f"vLLM engine(s) {failed} of {replicas} failed (GPUs {[groups[e] for e in failed]}); "
                               f"their log is above")
        parts = [json.loads((Path(tmp) / f"out{e}.json").read_text()) for e in range(replicas)]
    return unshard(parts, len(requests))


def worker(spec_path: str, out_path: str) -> None:
    """One engine of ``run_sharded``: the GPUs it sees are its own (CUDA_VISIBLE_DEVICES)."""
    import json
    from pathlib import Path

    spec = json.loads(Path(spec_path).read_text())
    requests = [(prompt, params) for prompt, params in spec.pop("requests")]
    texts = run_requests(spec.pop("model"), requests, **spec)
    Path(out_path).write_text(json.dumps(texts))


def complete_vllm(model_path: str, prompts: list[str], *, n: int = 1, temperatures: list[float] | float = 0.0,
                  top_p: float = 1.0, max_new_tokens: int = 96, seed: int = 0,
                  stops: tuple[str, ...] = STOP_STRINGS, tensor_parallel_size: int = 1, dtype: str = "bfloat16",
                  gpu_memory_utilization: float = 0.9, at_answer: bool = True, stats: dict | None = None,
                  replicas: int = 1) -> list[list[str]]:
    """n completions per prompt (sample j at temperatures[j % len]; 0 = greedy), like ``imm.sampling.complete``
    (``stats`` is not filled: vLLM's own logs give its figures)."""
    temps = sample_temperatures(temperatures, n)
    requests = requests_for(prompts, temps, top_p=top_p, max_tokens=max_new_tokens, seed=seed, stops=stops)
    outputs = run_requests(model_path, requests, seed=seed, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                           gpu_memory_utilization=gpu_memory_utilization, replicas=replicas)
    return regroup(outputs, temps, stops, at_answer)


def synthesize_vllm(model_path: str, prompts: list[str], cfg: GenerateConfig, iteration: int,
                    stops: tuple[str, ...] = STOP_STRINGS, tensor_parallel_size: int = 1, dtype: str = "bfloat16",
                    gpu_memory_utilization: float = 0.9, replicas: int = 1) -> list[list[dict]]:
    """k samples per prompt as [{"text", "temperature"}], sample i at temperatures[i % len]."""
    temps = sample_temperatures(cfg.temperatures, cfg.k)
    requests = build_requests(prompts, cfg, iteration, stops)
    outputs = run_requests(model_path, requests, seed=run_seed(cfg.seed, iteration),
                           tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                           gpu_memory_utilization=gpu_memory_utilization, replicas=replicas)
    return [[{"text": t, "temperature": temp} for t, temp in zip(group, temps)]
            for group in regroup(outputs, temps, stops, cfg.stop_at_answer)]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="one vLLM engine of a sharded call (imm.sampling.vllm.run_sharded)")
    ap.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), required=True)
    worker(*ap.parse_args().worker)
