"""The resource model: a model's size from its architecture numbers, the memory SFT and sampling need
of a GPU, and how many vLLM engines a job's GPUs hold. imm/plan/job.py plans one job with it.

Model sizes come from architecture numbers: a local folder's config.json, or ``ARCHITECTURES`` for the
hub ids imm names (no hub is asked). The memory model, per GPU, in bytes (P parameters, L layers,
hidden h, MLP width i, KV width kv = kv_heads·head_dim, vocabulary V, s tokens a sequence, b
sequences a micro-batch):

- SFT, one process (sft.backend=torch, or trl without DeepSpeed: one full copy per GPU): fp32 weights,
  fp32 gradients and AdamW's two fp32 moments, 16·P (bf16 autocast casts on the fly);
- SFT on ZeRO-3 over n GPUs: bf16 weights and gradients and the fp32 master + moments, all
  partitioned, 16·P/n (ZeRO, Rajbhandari et al. 2020, §5: 2+2+K with K = 12);
- activations without recomputation, with a fused attention kernel (``ACTIVATION_BYTES``): what the
  transformers Llama / Qwen2 layers keep for the backward pass, counted tensor by tensor, per token
  and layer c_h·h + c_kv·kv + c_i·i bytes, plus the last norm and the logits (c_V·V, with the
  logits' gradient at the peak). Korthikanti et al. 2022's 34·h (16-bit, a 4h MLP, two LayerNorms)
  leaves out the RMSNorms' fp32 copies and the SwiGLU MLP's third matrix: for Llama-2-7B the count
  here is 51.5·h a layer, 1.5x theirs. tests/unit/test_plan_activations.py checks it against the
  bytes a CPU forward pass keeps for two shapes, in float32 and under bf16 autocast;
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


# Bytes one token keeps for the backward pass, by how SFT computes (see the module docstring):
# (c_h, c_kv, c_i) per layer, (c_h, c_V) for the last norm and the logits. Per layer in float32:
# each of the two RMSNorms keeps its input, the normalised value and its output (3 h each), attention
# q, its output and the output projection's input (3 h) and k, v (2 kv), the MLP gate, its SiLU,
# up and their product (4 i); 4 bytes each. Under bf16 autocast the norms stay fp32 and hand a bf16
# copy to the next matmul (2 x (4 + 4 + 2) h), the rest is bf16 (3 h, 2 kv, 4 i at 2 bytes). In bf16
# weights (ZeRO-3) a norm's input is cast up to fp32 once (4 + 2 + 2 h). The logits: kept for the
# loss in fp32 (float32 4 V; bf16: the bf16 logits and their fp32 copy, 6 V), and at the peak of the
# backward pass their fp32 gradient (4 V) besides.
ACTIVATION_BYTES: dict[str, tuple[tuple[int, int, int], tuple[int, int]]] = {
    "float32": ((36, 8, 16), (12, 4)),
    "autocast": ((26, 4, 8), (10, 6)),
    "bfloat16": ((22, 4, 8), (8, 6)),
}
LOGITS_GRAD_BYTES = 4  # the fp32 gradient of the logits, alive at the start of the backward pass


def activation_bytes(arch: Arch, seq: int, batch: int, compute: str, peak: bool = True) -> float:
    """Bytes of activations a micro-batch keeps for the backward pass (``peak``: with the logits'
    gradient). ``compute``: float32 | autocast (bf16/fp16 over fp32 weights) | bfloat16 (16-bit weights)."""
    (ch, ckv, ci), (head_h, head_v) = ACTIVATION_BYTES[compute]
    kv = arch.kv_heads * arch.head_dim
    per_token = arch.layers * (ch * arch.hidden + ckv * kv + ci * arch.intermediate) + head_h * arch.hidden \
        + (head_v + (LOGITS_GRAD_BYTES if peak else 0)) * arch.vocab
    return per_token * seq * batch


def sft_compute(dtype: str, zero3: bool) -> str:
    """How SFT computes: ZeRO-3 holds 16-bit weights; otherwise fp32 master weights under autocast."""
    if dtype == "float32":
        return "float32"
    return "bfloat16" if zero3 else "autocast"


def sft_memory(arch: Arch, zero3: bool, gpus: int, batch: int, seq: int, dtype: str = "bfloat16") -> dict[str, float]:
    """Per-GPU SFT memory in GB (see the module docstring)."""
    p = arch.params
    shards = max(1, gpus) if zero3 else 1
    weights, grads, optimizer = (2 * p, 2 * p, 12 * p) if zero3 else (4 * p, 4 * p, 8 * p)
    act = activation_bytes(arch, seq, batch, sft_compute(dtype, zero3))
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


def engine_layout(arch: Arch, dtype: str, gpus: int, room_gb: float, seq: int, tp: int = 0, replicas: int = 0,
                  min_sequences: int = 32) -> tuple[int, int]:
    """(engines, GPUs per engine) for sampling and evaluation on vLLM: every GPU of the job busy.

    ``tp`` (engine.tensor_parallel_size) 0 = the fewest GPUs (1, 2, 4, ...) that hold the weights and
    the KV cache of ``min_sequences`` sequences of ``seq`` tokens, each GPU having ``room_gb``; a
    model that fits one GPU runs one engine per GPU (data parallel: no all-reduce per token).
    ``replicas`` (engine.replicas) 0 = as many engines as the GPUs hold at that width."""
    gpus = max(1, gpus)
    if not tp:
        tp = 1
        while tp < gpus and sample_memory(arch, dtype, seq, room_gb, tp)["sequences"] < min_sequences:
            tp *= 2
        tp = min(tp, gpus)
    return replicas or max(1, gpus // tp), tp
