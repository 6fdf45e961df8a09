"""The numbers a GPU job's plan prints, worked out by hand for Qwen2.5-0.5B on one GPU: parameters, SFT
memory term by term, the sampling engine's weights, KV cache and sequences, host memory, tokens a
round and hours (imm/plan/memory.py, imm/plan/job.py, imm/plan/throughput.py).

    python -m pytest tests/unit/test_plan_by_hand.py
"""

from __future__ import annotations

import pytest

from tests.unit.test_plan import SLURM_1, plan_for

# Qwen2.5-0.5B: 24 layers, hidden 896, 14 heads of 64, 2 KV heads (kv width 128), MLP 4864, vocabulary
# 151936, tied embeddings, q/k/v biases
ATTENTION = 2 * 896 * 896 + 2 * 896 * 128 + (896 + 2 * 128)  # q, o; k, v; biases
LAYER = ATTENTION + 3 * 896 * 4864 + 2 * 896  # + gate, up, down; two RMSNorms
P = 151936 * 896 + 24 * LAYER + 896  # one embedding matrix, the layers, the final norm
JOB = ("model=qwen2.5-0.5b-instruct", "dataset.n_train=100", "dataset.n_test=50", "method=imm", "run.iterations=2",
       "run.evaluate=all", "generate.k=4")  # testbed sets: 4 x 50 items; 80 new tokens, 6 epochs, batch 16, bf16


@pytest.fixture(scope="module")
def plan():
    return plan_for(SLURM_1, *JOB)


def test_parameters_and_sft_memory(plan):
    assert P == 494_032_768 and plan.params == P
    # one process under bf16 autocast: fp32 weights 4·P, gradients 4·P, AdamW moments 8·P; activations per
    # token 24·(26·896 + 4·128 + 8·4864) + 10·896 + (6 + 4)·151936 bytes, 280 tokens (200 + 80) x 16 rows
    per_token = 24 * (26 * 896 + 4 * 128 + 8 * 4864) + 10 * 896 + (6 + 4) * 151936
    assert per_token == 3_033_600
    expected = {"weights": 4 * P / 1e9, "grads": 4 * P / 1e9, "optimizer": 8 * P / 1e9,
                "activations": per_token * 280 * 16 / 1e9}
    assert plan.sft_gb == pytest.approx(expected | {"total": 16 * P / 1e9 + per_token * 280 * 16 / 1e9})


def test_sampling_memory_and_host(plan):
    # bf16 weights 2·P; KV 2 (k, v) x 24 layers x 2 heads x 64 x 2 bytes = 12,288 bytes a token, 280 tokens;
    # room 80 GB - 3 GB overhead (the hf backend uses the whole GPU)
    weights, kv = 2 * P / 1e9, 12_288 * 280 / 1e9
    assert plan.sample_gb == pytest.approx({"weights": weights, "kv_per_seq": kv, "kv_room": 77 - weights,
                                            "sequences": (77 - weights) / kv})
    assert plan.host_gb == pytest.approx(8 + 2 * P / 1e9)  # host overhead + one copy of the weights


def test_tokens_and_hours(plan):
    generated = 100 * 4 * 80  # questions x k x new tokens (every sample to its limit: an upper bound)
    trained = 100 * 4 * 6 * (200 + 80)  # every sample kept, 6 epochs, question + answer tokens
    evaluated = 2 * 200 * 80  # the SFT and the merged model, 200 test items, 80 new tokens
    assert plan.tokens == pytest.approx({"generated": generated, "evaluated": evaluated, "trained": trained})
    decode = 0.10 * 312e12 / (2 * P)  # decoded tokens/s: 10% of 312 TFLOPS at 2·P FLOPs a token
    train = 0.35 * 312e12 / (6 * P)  # trained tokens/s: 35% at 6·P
    seconds = 200 * 80 / decode + 2 * (generated / decode + trained / train + evaluated / decode)  # base eval first
    assert plan.hours == pytest.approx(seconds / 3600) and plan.gpu_hours == pytest.approx(seconds / 3600)
    assert plan.stage_hours["SFT 2"] == pytest.approx(trained / train / 3600)
    assert plan.rounds == pytest.approx([(generated / decode + trained / train + evaluated / decode) / 3600] * 2)
