"""This machine's roofline for a decoder LLM: measured matmul rates and memory bandwidth, and the
FLOPs and bytes of one decode step and of one trained token.

    python -m bench.roofline --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch


def matmul_rate(dtype: torch.dtype, m: int = 1024, k: int = 1024, n: int = 1024, seconds: float = 1.0) -> float:
    """GFLOP/s of an m×k by k×n matmul in ``dtype`` (the best of repeated calls for ``seconds``)."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    torch.mm(a, b)
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """GB/s of a large copy (bytes read + bytes written), the best of ``repeats``."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def shape(config) -> dict:
    """Layers, widths and the matmul parameter count of a Llama-shaped config."""
    d, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", heads) * (d // heads)
    per_layer = d * (d + 2 * kv) + d * d + 3 * d * config.intermediate_size
    return {"d": d, "layers": L, "vocab": V, "kv": kv, "matmul_params": L * per_layer + d * V}


def decode_step(config, rows: int, prefix: int, own: int, weight_bytes: int = 2, kv_bytes: int = 2) -> dict:
    """FLOPs and bytes of one decode step of ``rows`` rows, each attending to a shared ``prefix`` and to
    ``own`` tokens of its own: the weights read once, the prefix's keys and values once (shared), each
    row's own keys and values."""
    s = shape(config)
    flops = 2 * s["matmul_params"] * rows + 4 * s["layers"] * s["d"] * (prefix + own) * rows
    kv_token = 2 * s["layers"] * s["kv"] * kv_bytes
    bytes_ = s["matmul_params"] * weight_bytes + kv_token * (prefix + own * rows)
    return {"flops": flops, "bytes": bytes_}


def bound(step: dict, rows: int, gflops: float, gbs: float) -> dict:
    """New tokens/s at the compute bound, the memory bound, and the lower of the two."""
    compute = rows / (step["flops"] / (gflops * 1e9))
    memory = rows / (step["bytes"] / (gbs * 1e9))
    return {"compute": compute, "memory": memory, "roofline": min(compute, memory)}


def train_token_flops(config, length: int) -> float:
    """FLOPs of one trained token: 6 × matmul parameters plus attention over ``length`` (forward and
    backward, causal: half the square)."""
    s = shape(config)
    return 6 * s["matmul_params"] + 6 * s["layers"] * s["d"] * length


def measure(threads: int) -> dict:
    if threads:
        torch.set_num_threads(threads)
    return {"bf16": matmul_rate(torch.bfloat16), "fp32": matmul_rate(torch.float32), "gbs": bandwidth()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    m = measure(args.threads)
    print(f"{torch.get_num_threads()} threads: bf16 matmul {m['bf16']:.0f} GFLOP/s, float32 {m['fp32']:.0f} GFLOP/s, "
          f"copy bandwidth {m['gbs']:.1f} GB/s")


if __name__ == "__main__":
    main()
