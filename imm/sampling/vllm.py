"""Sampling and evaluation with vLLM (the ``vllm`` backend; GPU only, ``pip install -e .[vllm]``).

One engine per call: ``synthesize_vllm(model_path, prompts, cfg, iteration, stops)`` starts
``vllm.LLM`` on a saved model folder, sends every (prompt, temperature) pair as one request in a
single batched ``llm.generate`` call, regroups the outputs into the order of
``imm.sampling.synthesize`` (sample i at temperatures[i % len]) and shuts the engine down so that
training can have the GPU back. ``complete_vllm`` is the same for evaluation (greedy or n samples).

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


def run_requests(model_path: str, requests: list[tuple[str, dict]], *, seed: int, tensor_parallel_size: int,
                 dtype: str, gpu_memory_utilization: float) -> list[list[str]]:
    """Texts of every request, from one engine and one batched ``generate`` call."""
    vllm = import_vllm()
    llm = vllm.LLM(model=model_path, tensor_parallel_size=tensor_parallel_size, seed=seed, dtype=dtype,
                   gpu_memory_utilization=gpu_memory_utilization)
    try:
        params = [vllm.SamplingParams(**p) for _, p in requests]
        outs = llm.generate([prompt for prompt, _ in requests], params)
        return [[c.text for c in o.outputs] for o in outs]
    finally:
        shutdown(llm)


def complete_vllm(model_path: str, prompts: list[str], *, n: int = 1, temperatures: list[float] | float = 0.0,
                  top_p: float = 1.0, max_new_tokens: int = 96, seed: int = 0,
                  stops: tuple[str, ...] = STOP_STRINGS, tensor_parallel_size: int = 1, dtype: str = "bfloat16",
                  gpu_memory_utilization: float = 0.9, at_answer: bool = True, stats: dict | None = None
                  ) -> list[list[str]]:
    """n completions per prompt (sample j at temperatures[j % len]; 0 = greedy), like ``imm.sampling.complete``
    (``stats`` is not filled: vLLM's own logs give its figures)."""
    temps = sample_temperatures(temperatures, n)
    requests = requests_for(prompts, temps, top_p=top_p, max_tokens=max_new_tokens, seed=seed, stops=stops)
    outputs = run_requests(model_path, requests, seed=seed, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                           gpu_memory_utilization=gpu_memory_utilization)
    return regroup(outputs, temps, stops, at_answer)


def synthesize_vllm(model_path: str, prompts: list[str], cfg: GenerateConfig, iteration: int,
                    stops: tuple[str, ...] = STOP_STRINGS, tensor_parallel_size: int = 1, dtype: str = "bfloat16",
                    gpu_memory_utilization: float = 0.9) -> list[list[dict]]:
    """k samples per prompt as [{"text", "temperature"}], sample i at temperatures[i % len]."""
    temps = sample_temperatures(cfg.temperatures, cfg.k)
    requests = build_requests(prompts, cfg, iteration, stops)
    outputs = run_requests(model_path, requests, seed=run_seed(cfg.seed, iteration),
                           tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                           gpu_memory_utilization=gpu_memory_utilization)
    return [[{"text": t, "temperature": temp} for t, temp in zip(group, temps)]
            for group in regroup(outputs, temps, stops, cfg.stop_at_answer)]
