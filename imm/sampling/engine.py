"""How the model is run when it samples or is evaluated, apart from what is sampled.

``engine.*`` holds the settings of the machinery (backend, compiled step, GPUs per vLLM engine,
batch size); ``generate.*`` what is drawn (k, temperatures, top-p, length, seed) and ``model.device``
where. The stage keys (imm/stages.py) take from here only what changes a result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

BACKENDS = ("hf", "vllm")


def fast_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run faster than float32 here: a GPU that supports bf16, or a CPU with
    AMX or AVX512-BF16 (there oneDNN's bf16 matmul runs ~7x float32's)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def decoding_plan(decoder: str, compute_dtype: str, storage_dtype: str, device: torch.device) -> dict:
    """The decoder a model config asks for and the dtype its arithmetic runs in, on ``device``:
    {"decoder": "slots" | "hf" | "auto", "dtype": ...}. ``auto`` stays auto until the model is loaded
    (imm.sampling.slots.supports decides); the hf decoder computes in the storage dtype."""
    if decoder == "auto" and device.type != "cpu":
        decoder = "hf"
    if decoder == "hf":
        return {"decoder": "hf", "dtype": storage_dtype}
    if compute_dtype == "auto":
        compute_dtype = "bfloat16" if fast_bf16(device) else "float32"
    return {"decoder": decoder, "dtype": compute_dtype}


@dataclass
class EngineConfig:
    backend: str = "hf"  # hf: transformers model + imm's batched decoding | vllm: one engine per stage (GPU)
    compile: bool = False  # hf only: static KV cache + compiled step (CUDA graphs on a GPU), rows stay in the batch
    tensor_parallel_size: int = 0  # vllm only: GPUs one engine spans; 0 = the fewest that hold the model (imm/plan/memory.py engine_layout)
    replicas: int = 0  # vllm only: engines at once, each on its share of the prompts; 0 = every GPU busy
    batch_size: int = 0  # hf sampling: prompts per decoding call; 0 = chosen from the KV-cache size and memory
    gpu_memory_utilization: float = 0.9  # vllm only: share of each GPU's memory one engine may take (weights + KV cache)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"engine.backend={self.backend!r} is not one of {BACKENDS}")
        if self.compile and self.backend != "hf":
            raise ValueError("engine.compile applies to the hf backend (vllm captures its own CUDA graphs)")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"engine.gpu_memory_utilization={self.gpu_memory_utilization} must lie in (0, 1]")
        if self.batch_size < 0 or self.tensor_parallel_size < 0 or self.replicas < 0:
            raise ValueError("engine.batch_size, engine.tensor_parallel_size and engine.replicas must be >= 0")

    def given(self, overrides: dict) -> "EngineConfig":
        """These settings with ``overrides`` (the former generate.* names) applied, validated again."""
        return dataclasses.replace(self, **overrides) if overrides else self
