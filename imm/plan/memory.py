"""A job's resource plan before it runs: where it runs, the memory SFT and sampling need, the tokens an
iteration generates and trains on, and GPU-hours from a stated throughput; ``problems`` says why a job
does not fit what it asked for.

    python -m imm.main run.dry_run=true model=qwen2.5-1.5b-instruct dataset=gsm8k
    python -m imm.main -m -cd sweeps -cn self_improvement_gsm8k hydra/launcher=slurm run.dry_run=true

Model sizes come from architecture numbers: a local folder's config.json, or ``ARCHITECTURES`` for the
hub ids imm names (no hub is asked). The memory model, per GPU, in bytes (P parameters, L layers,
hidden h, vocabulary V, s tokens a sequence, b sequences a micro-batch):

- SFT, one process (sft.backend=torch, or trl without DeepSpeed: one full copy per GPU): fp32 weights,
  fp32 gradients and AdamW's two fp32 moments, 16·P (bf16 autocast casts on the fly);
- SFT on ZeRO-3 over n GPUs: bf16 weights and gradients and the fp32 master + moments, all
  partitioned, 16·P/n (ZeRO, Rajbhandari et al. 2020, §5: 2+2+K with K = 12);
- activations without recomputation, with a fused attention kernel: 34·s·b·h·L (Korthikanti et al. 2022,
  Eq. 1 without its 5·a·s/h attention-score term), plus the fp32 logits and their gradient 8·s·b·V;
- sampling: the model in its storage dtype, 2·L·kv_heads·head_dim·bytes of KV cache per token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

GB = 1e9
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Arch:
    """The numbers of a decoder-only transformer (Llama / Qwen2 layout) that size it."""
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool  # lm_head shares the embedding matrix
    qkv_bias: bool = False  # Qwen2: biases on q, k, v

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def params(self) -> int:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        attn = 2 * h * h + 2 * h * kv + (h + 2 * kv if self.qkv_bias else 0)
        layer = attn + 3 * h * self.intermediate + 2 * h
        return self.vocab * h * (1 if self.tied else 2) + self.layers * layer + h

    def kv_bytes_per_token(self, dtype: str) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * BYTES[dtype]


# The configs' numbers (config.json of each hub repository), so no hub is needed to plan.
ARCHITECTURES: dict[str, Arch] = {
    "Qwen/Qwen2.5-0.5B-Instruct": Arch(24, 896, 14, 2, 4864, 151936, tied=True, qkv_bias=True),
    "Qwen/Qwen2.5-1.5B-Instruct": Arch(28, 1536, 12, 2, 8960, 151936, tied=True, qkv_bias=True),
    "Qwen/Qwen2.5-7B-Instruct": Arch(28, 3584, 28, 4, 18944, 152064, tied=False, qkv_bias=True),
    "meta-llama/Llama-2-7b-hf": Arch(32, 4096, 32, 32, 11008, 32000, tied=False),
    "meta-llama/Meta-Llama-3-8B": Arch(32, 4096, 32, 8, 14336, 128256, tied=False),
}


def architecture(path: str) -> Arch | None:
    """A local folder's config.json, else the table's entry for a hub id; None when neither knows it."""
    config = Path(path) / "config.json"
    if config.is_file():
        c = json.loads(config.read_text())
        c = c.get("text_config", c)
        return Arch(c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"],
                    c.get("num_key_value_heads") or c["num_attention_heads"], c["intermediate_size"],
                    c["vocab_size"], bool(c.get("tie_word_embeddings", False)),
                    qkv_bias=c.get("model_type") == "qwen2" or bool(c.get("attention_bias")))
    return ARCHITECTURES.get(path)


@dataclass
class PlanConfig:
    """What the plan assumes where a config does not say it (a SLURM request names no GPU model)."""
    gpu_mem_gb: float = 80.0  # memory of one GPU (A100/H100 80 GB)
    gpu_tflops: float = 312.0  # dense bf16 peak of one GPU (A100: 312, H100 SXM: 989)
    train_mfu: float = 0.35  # share of the peak SFT reaches (6·P FLOPs a trained token)
    decode_mfu: float = 0.10  # share of the peak batched decoding reaches (2·P FLOPs a token; memory-bound)
    cpu_tokens_per_s: float = 100.0  # decoding on a CPU (a 135M model on 2 cores: ~100 new tokens/s)
    question_tokens: int = 200  # a training row's question and template
    shot_tokens: int = 150  # one worked example of a few-shot prompt
    concurrency: int = 256  # sequences a vLLM engine decodes at once (its max_num_seqs)
    overhead_gb: float = 3.0  # CUDA context, allocator slack, kernels' workspace per GPU
    host_overhead_gb: float = 8.0  # Python, tokenizer, data, grading pool on the host


@dataclass
class Resources:
    """What a job gets: GPUs of ``gpu_mem_gb`` each, host memory and time (None = not limited/known)."""
    where: str  # slurm | local
    gpus: int
    gpu_mem_gb: float
    mem_gb: float | None = None
    hours: float | None = None
    requeues: int = 0  # SLURM: runs after a timeout (each resumes where the last stopped)


@dataclass
class Plan:
    label: str
    device: str
    gpus: int
    params: int
    sft_gb: dict[str, float] = field(default_factory=dict)  # per GPU: weights, grads, optimizer, activations, total
    sample_gb: dict[str, float] = field(default_factory=dict)  # weights, kv_per_seq, kv_room, sequences
    host_gb: float = 0.0
    tokens: dict[str, float] = field(default_factory=dict)  # per iteration: generated, evaluated, trained
    gpu_hours: float = 0.0
    hours: float = 0.0
    problems: list[str] = field(default_factory=list)  # why the job does not fit: refused before launch
    at_start: list[str] = field(default_factory=list)  # those a starting job refuses too (a large model without a GPU)

    def line(self) -> str:
        s, g = self.sft_gb, self.sample_gb
        out = (f"{self.label}: {self.device} x{self.gpus}, {self.params / 1e9:.2f}B params | SFT {s['total']:.1f} GB/GPU "
               f"(weights {s['weights']:.1f} + grads {s['grads']:.1f} + optimizer {s['optimizer']:.1f} + activations "
               f"{s['activations']:.1f}) | sampling weights {g['weights']:.1f} GB, KV {g['kv_per_seq'] * 1e3:.0f} MB/seq, "
               f"{g['sequences']:.0f} seqs fit | host {self.host_gb:.0f} GB | per iteration "
               f"{self.tokens['generated'] / 1e6:.1f}M generated, {self.tokens['evaluated'] / 1e6:.1f}M evaluated, "
               f"{self.tokens['trained'] / 1e6:.1f}M trained | ~{self.gpu_hours:.1f} GPU-h, ~{self.hours:.1f} h wall")
        return out + "".join(f"\n  REFUSED: {p}" for p in self.problems)


def sft_memory(arch: Arch, zero3: bool, gpus: int, batch: int, seq: int) -> dict[str, float]:
    """Per-GPU SFT memory in GB (see the module docstring)."""
    p = arch.params
    shards = max(1, gpus) if zero3 else 1
    weights, grads, optimizer = (2 * p, 2 * p, 12 * p) if zero3 else (4 * p, 4 * p, 8 * p)
    act = 34 * seq * batch * arch.hidden * arch.layers + 8 * seq * batch * arch.vocab
    out = {"weights": weights / shards / GB, "grads": grads / shards / GB, "optimizer": optimizer / shards / GB,
           "activations": act / GB}
    out["total"] = sum(out.values())
    return out


def sample_memory(arch: Arch, dtype: str, seq: int, room_gb: float, tp: int = 1) -> dict[str, float]:
    """One engine's weights and KV cache (GB) and how many sequences of ``seq`` tokens its cache holds."""
    weights = arch.params * BYTES[dtype] / tp / GB
    kv = arch.kv_bytes_per_token(dtype) * seq / tp / GB
    free = room_gb - weights
    return {"weights": weights, "kv_per_seq": kv, "kv_room": max(0.0, free), "sequences": max(0.0, free / kv)}
