"""A paper-shaped rehearsal through the real entrypoint, on CPU.

What it proves: ``python -m imm.main`` runs the paper's GSM8K and MATH settings end to end on a
checkpoint folder laid out exactly as a hub download (real Qwen2 architecture, byte-level BPE
tokenizer, random weights) and on hub-schema local files, train and test split apart: every
benchmark loader (GSM8K, MATH, MATH-500, SVAMP, ASDiv, MAWPS, MathQA, SAT-Math, MMLU-STEM), the
paper's few-shot prompts and answer grading, 2 iterations of ``method=imm`` through sampling,
filtering, SFT, DARE merging and evaluation of the base, SFT and merged models; and MLflow holds
every expected metric, for every test set, at every step.

What it does not prove: anything about accuracy (a random model scores 0; the training rows are
gold solutions, ``run.rehearsal_gold=true``), nor speed or memory at paper scale (the same builder
makes a Qwen2.5-0.5B-shaped checkpoint for a GPU: ``--shape qwen2.5-0.5b``).
"""

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from imm.data.rehearsal import SUITES, build, overrides

ROOT = Path(__file__).resolve().parents[2]
# Small enough for a loaded 2-core machine: one torch thread (intra-op threads fight other
# processes for the cores), few questions, two shots, short generations.
SMALL = ["method=imm", "run.iterations=2", "dataset.n_train=8", "dataset.n_test=4", "dataset.shots=2",
         "generate.k=2", "generate.max_new_tokens=24", "eval.max_new_tokens=24", "sft.epochs=1", "model.threads=1"]


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    return build(tmp_path_factory.mktemp("rehearsal"), shape="tiny", n_train=8, n_test=4)


def test_checkpoint_folder_is_hub_shaped(rehearsal):
    names = {p.name for p in Path(rehearsal["model"]).iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= names
    from transformers import AutoConfig

    from imm.models import load_tokenizer

    assert AutoConfig.from_pretrained(rehearsal["model"]).model_type == "qwen2"
    tok = load_tokenizer(rehearsal["model"])
    text = "Ava has 12 apples. The answer is $\\frac{1}{2}$."
    assert tok.decode(tok(text)["input_ids"]) == text and tok.eos_token and tok.pad_token


def metrics(db: Path) -> dict[tuple[str, int], float]:
    with sqlite3.connect(db) as con:
        (status,) = con.execute("SELECT status FROM runs").fetchone()
        assert status == "FINISHED"
        return {(k, s): v for k, s, v in con.execute("SELECT key, step, value FROM metrics")}


@pytest.mark.parametrize("dataset", ["gsm8k", "math"])
def test_paper_shaped_run_logs_every_metric(rehearsal, dataset, tmp_path):
    cmd = [sys.executable, "-m", "imm.main", *overrides(rehearsal, dataset), *SMALL, f"outputs={tmp_path}"]
    try:
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as e:  # a hang fails the test instead of stalling the suite
        pytest.fail(f"the run did not finish in 600 s; last output: {str(e.stderr)[-1500:]}")
    assert out.returncode == 0, out.stderr[-3000:]

    got = metrics(tmp_path / "mlflow.db")
    sets = SUITES[dataset] + ["id", "ood"]
    expected = [(f"eval/base/{s}", 0) for s in sets]
    expected += [(f"eval/{kind}/{s}", step) for kind in ("sft", "merged") for s in sets for step in (1, 2)]
    expected += [(f"data/overlap/{s}", 0) for s in SUITES[dataset]]
    expected += [(k, step) for k in ("gen/sampled", "gen/yield", "gen/gold_rows", "sft/loss", "sft/rows",
                                     "merge/density", "merge/delta_norm") for step in (1, 2)]
    missing = [key for key in expected if key not in got]
    assert not missing, f"missing metrics: {missing}"
    assert all(got[(f"data/overlap/{s}", 0)] == 0 for s in SUITES[dataset])
    assert got[("gen/sampled", 1)] == 16 and got[("sft/rows", 1)] >= 1  # 8 questions x k 2; gold rows trained
    assert 0.8 < got[("merge/density", 1)] < 1.0  # DARE p 0.1 dropped about a tenth of the update
    job = next((tmp_path / "jobs").iterdir())
    for name in ("sft1", "merge1", "sft2", "merge2"):  # the merge writes shards and an index
        assert list((job / name).glob("model*.safetensors")), name
