"""A real pretrained instruct LLM through the whole loop: SmolLM2-135M-Instruct (tests/integration).

One IMM iteration on a handful of the world's questions written as benchmark files (GSM8K, SVAMP,
ASDiv, MAWPS schemas), through ``python -m imm.main`` and the paper's few-shot prompts: sampling,
filtering, SFT, the DARE merge and evaluation, then checked in the job folder and the MLflow store.
The model runs on past its answers and has two EOS tokens and tied embeddings, as real ones do.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
from safetensors import safe_open

from imm.data.benchmarks import GSM8K_GOLD_RE
from imm.grading.answers import final_answer, trails_answer
from imm.grading.checks import numeric_equal

ROOT = Path(__file__).resolve().parents[2]
SETS = ("gsm8k", "svamp", "asdiv", "mawps")
# 16 questions of the ID family (the base answers about half of them): the test needs kept samples to check
SIZES = ["dataset.n_train=16", "dataset.n_test=3", "dataset.shots=1", "generate.k=2", "run.seed=1", "generate.max_new_tokens=64",
         "eval.max_new_tokens=64", "sft.epochs=2", "sft.lr=1e-4", "sft.batch_size=4", "sft.global_batch=0",
         "run.iterations=1"]


def test_smollm2_runs_one_imm_iteration_through_every_stage(smollm2, tmp_path):
    # the suite runs one test at a time: this job, its longest, may use the machine's cores
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(min(4, os.cpu_count() or 1)))
    cmd = [sys.executable, "-m", "imm.main", "model=smollm2-135m-instruct", f"model.path={smollm2}", "dataset=world_nl",
           "method=imm", *SIZES, f"outputs={tmp_path}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (job,) = (tmp_path / "jobs").iterdir()

    kept = [json.loads(line) for line in (job / "samples" / "iter1.jsonl").read_text().splitlines()]
    assert kept, "the real model kept no sample: nothing to train on"
    train = {json.loads(r)["question"]: GSM8K_GOLD_RE.search(json.loads(r)["answer"]).group(1)
             for r in (tmp_path / "data" / "world-nl-v2-s0" / "gsm8k" / "train.jsonl").read_text().splitlines()}
    for row in kept:
        answer = final_answer(row["response"])
        assert answer is not None and numeric_equal(answer, train[row["question"]])  # parses, and is right
        assert not trails_answer(row["response"])  # ends where its answer ends
        assert row["response"][:1].isspace()  # as written after "step by step." (SFT joins it so)

    stats = json.loads((job / "sft1" / ".." / "stats.json").resolve().read_text())
    assert stats["loss"] < stats["first_loss"]  # SFT lowers the training loss

    merged = job / "merge1"
    config = json.loads((merged / "config.json").read_text())
    names = set()
    for shard in merged.glob("*.safetensors"):  # the streaming merge writes shards and an index
        with safe_open(shard, "pt") as f:
            names |= set(f.keys())
    assert config["tie_word_embeddings"] and "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(merged)
    assert net.lm_head.weight.data_ptr() == net.model.embed_tokens.weight.data_ptr()  # still tied once loaded

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (exp,) = [e for e in client.search_experiments() if e.name == "imm-smollm2-135m-instruct-world_nl"]
    (run,) = client.search_runs([exp.experiment_id])
    m = run.data.metrics
    assert run.info.status == "FINISHED"
    for kind in ("base", "sft", "merged"):
        for name in SETS:
            for key in (name, f"{name}/no_answer", f"{name}/ran_to_limit", f"{name}/stopped"):
                assert f"eval/{kind}/{key}" in m, f"eval/{kind}/{key} missing"
        assert {f"eval/{kind}/id", f"eval/{kind}/ood"} <= m.keys()
    assert m["gen/kept"] == len(kept) and m["gen/kept_trailing"] == 0.0 and m["gen/kept_tokens"] > 0
    assert 0 <= m["gen/ran_to_limit"] < 1 and m["gen/stopped"] > 0  # the real model does run on: stops end it
