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
    from imm.plan.memory import ARCHITECTURES
    llama = 2 * 32000 * 4096 + 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096) + 4096  # untied, no biases
    assert ARCHITECTURES["meta-llama/Llama-2-7b-hf"].params == llama == 6_738_415_616
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


def test_activations_off_the_peak_and_a_tensor_parallel_engine():
    from imm.plan.memory import ARCHITECTURES, activation_bytes, sample_memory

    qwen = ARCHITECTURES["Qwen/Qwen2.5-0.5B-Instruct"]
    # float32, without the logits' gradient: 24·(36·896 + 8·128 + 16·4864) + 12·896 + 4·151936 bytes a token
    per_token = 24 * (36 * 896 + 8 * 128 + 16 * 4864) + 12 * 896 + 4 * 151936
    assert activation_bytes(qwen, 10, 3, "float32", peak=False) == per_token * 10 * 3
    assert activation_bytes(qwen, 10, 3, "float32") == (per_token + 4 * 151936) * 10 * 3
    # two GPUs an engine: each holds half the weights and half of each sequence's KV cache
    two = sample_memory(qwen, "bfloat16", 280, 77.0, tp=2)
    assert two["weights"] == pytest.approx(P / 1e9) and two["kv_per_seq"] == pytest.approx(12_288 * 280 / 2 / 1e9)
    assert two["sequences"] == pytest.approx((77 - P / 1e9) / (12_288 * 280 / 2 / 1e9))


def test_a_model_that_fills_the_gpu_leaves_no_room_for_sequences():
    from imm.plan.memory import ARCHITECTURES, sample_memory

    full = sample_memory(ARCHITECTURES["meta-llama/Llama-2-7b-hf"], "bfloat16", 1000, 10.0)  # 13.5 GB of weights
    assert (full["kv_room"], full["sequences"]) == (0.0, 0.0)


def test_evaluations_a_round_follow_the_method_and_run_evaluate():
    generated = 100 * 4 * 80
    vanilla = plan_for(SLURM_1, *JOB, "method=vanilla")  # one model evaluated a round, no merge
    assert vanilla.tokens["evaluated"] == pytest.approx(200 * 80)
    final = plan_for(SLURM_1, *JOB, "run.evaluate=final")  # the last model only, once in the job
    assert final.tokens["evaluated"] == pytest.approx(200 * 80 / 2) and final.tokens["generated"] == generated
    assert final.stage_hours["evaluation 1"] == 0.0 and final.stage_hours["evaluation 2"] > 0


def test_an_engines_context_holds_the_few_shot_prompt_and_the_longest_answer():
    from imm.plan.job import context_tokens
    from tests.unit.test_plan import compose_cfg

    cfg = compose_cfg("dataset=gsm8k", "generate.max_new_tokens=100", "eval.max_new_tokens=300")
    assert cfg.dataset.shots > 0
    assert context_tokens(cfg) == 200 + cfg.dataset.shots * 150 + 300  # question, exemplars, eval's 300
    assert context_tokens(compose_cfg("generate.max_new_tokens=100", "eval.max_new_tokens=30")) == 200 + 100
