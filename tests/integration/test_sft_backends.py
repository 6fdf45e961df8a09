"""The TRL SFT backend (response-only labels, loss, NaN) and DeepSpeed ZeRO-3 on CPU.

    python -m pytest tests/integration/test_sft_backends.py

The ZeRO-3 tests run in subprocesses (DeepSpeed's process group and accelerate's state would leak
into other tests), launched as the loop launches them: one rank through sft.fine_tune, then two ranks.
The first run compiles DeepSpeed's shared-memory comm op (about 50-100 s on 2 cores) into
outputs/torch_extensions; later runs load it from there (about 15 s a test).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from imm import sft
from imm.models import ModelConfig, load_model, load_tokenizer, weights
from imm.data.world import problems

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ZERO3 = os.path.join(ROOT, "conf", "deepspeed", "zero3.json")
CFG = sft.SFTConfig(epochs=2, lr=3e-3, batch_size=8, grad_accum=2)  # 32 rows: 4 micro-batches, 2 steps an epoch

pytest.importorskip("trl", reason="the trl backend needs trl: pip install -e .[bench]")
from imm.sft.trl_trainer import first_batch, train_trl  # noqa: E402


def rows(n=32):
    return [{"question": i["question"], "response": i["solution"]}
            for i in problems.make_split(problems.ID_FAMILY, "train", n, 0)]


@pytest.fixture()
def model_tok(tiny_model):
    return load_model(ModelConfig(path=str(tiny_model))), load_tokenizer(str(tiny_model))


def unpadded(batch, row):
    n = int(batch["attention_mask"][row].sum())
    return batch["input_ids"][row, :n].tolist(), batch["labels"][row, :n].tolist()


def test_trl_batch_labels_mask_the_prompt_like_the_torch_backend(model_tok):
    model, tok = model_tok
    data = rows(8)
    batch = first_batch(model, tok, data, problems.format_prompt, sft.SFTConfig(batch_size=4))
    expected = [sft.encode(tok, problems.format_prompt(r["question"]), r["response"]) for r in data]
    assert batch["input_ids"].shape[0] == 4
    for row in range(4):
        ids, labels = unpadded(batch, row)
        assert (ids, labels) in expected  # same tokens, prompt -100, response + EOS labelled
        n_prompt = labels.index(next(x for x in labels if x != sft.IGNORE))
        assert n_prompt > 5 and labels[-1] == tok.eos_token_id
    assert (batch["labels"][batch["attention_mask"] == 0] == sft.IGNORE).all()  # padding never labelled


def test_trl_loss_goes_down_and_weights_change(model_tok):
    model, tok = model_tok
    before = weights(model)
    stats = train_trl(model, tok, rows(), problems.format_prompt, CFG, 0)
    assert stats["steps"] == CFG.epochs * math.ceil(math.ceil(32 / CFG.batch_size) / CFG.grad_accum)
    assert math.isfinite(stats["loss"]) and stats["loss"] < stats["first_loss"] - 0.1
    assert 0 <= stats["pad_share"] < 0.2 and stats["tokens_per_s"] > 0
    after = weights(model)
    assert max_diff(after, before) > 1e-4
    assert all(t.dtype == torch.float32 for t in after.values()) and not model.training


def test_trl_nan_loss_raises(model_tok):
    model, tok = model_tok
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")  # every logit NaN from the first step
    with pytest.raises(FloatingPointError, match="SFT loss became nan .*trl backend"):
        train_trl(model, tok, rows(16), problems.format_prompt, sft.SFTConfig(epochs=1, batch_size=8), 0)


def test_deepspeed_sft_config_holds_the_paper_values():
    yaml = OmegaConf.load(os.path.join(ROOT, "conf", "sft", "deepspeed_zero3.yaml"))
    assert (yaml.epochs, yaml.lr, yaml.batch_size, yaml.global_batch, yaml.warmup_ratio) == (3, 2e-5, 4, 128, 0.03)
    assert yaml.backend == "trl" and os.path.isfile(os.path.join(ROOT, yaml.deepspeed))
    known = {f.name for f in dataclasses.fields(sft.SFTConfig)}
    cfg = sft.SFTConfig(**{k: v for k, v in OmegaConf.to_container(yaml).items() if k in known and k != "seed"})
    assert cfg.accumulation(8) == 4 and cfg.accumulation(1) == 32  # the paper's 4 × 4 × 8 GPUs = 128
    ds = json.load(open(ZERO3))
    assert ds["zero_optimization"]["stage"] == 3 and "offload_optimizer" not in ds["zero_optimization"]
    # hyperparameters come from SFTConfig through the Trainer, never from the JSON
    assert "optimizer" not in ds and "scheduler" not in ds
    assert ds["train_micro_batch_size_per_gpu"] == ds["gradient_accumulation_steps"] == "auto"


def max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in b)


# DeepSpeed on the CPU; its comm op is compiled once into outputs/torch_extensions and reused
DS_ENV = dict(DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
              TORCH_EXTENSIONS_DIR=os.path.join(ROOT, "outputs", "torch_extensions"))


@pytest.fixture()
def reference(model_tok):
    """Weights before and after the plain single-process run of CFG, and its stats (the ZeRO-3 targets)."""
    if importlib.util.find_spec("deepspeed") is None:  # not imported here: it would pick its accelerator now
        pytest.skip("DeepSpeed is not installed: DS_BUILD_OPS=0 pip install -e .[deepspeed]")
    if shutil.which("c++") is None:
        pytest.skip("DeepSpeed's CPU accelerator compiles its shm comm op at first use: no C++ compiler here")
    model, tok = model_tok
    before = weights(model)
    plain = train_trl(model, tok, rows(), problems.format_prompt, CFG, 0)
    return before, weights(model), plain


def test_zero3_on_one_rank_is_launched_with_its_environment_and_matches_the_single_process_run(
        reference, tiny_model, tmp_path, monkeypatch):
    """The loop's own call (sft.fine_tune) with DeepSpeed on one device: it goes through the launcher, which
    sets RANK, WORLD_SIZE and MASTER_ADDR (nothing here sets them; without them DeepSpeed looks for MPI)."""
    before, trained, plain = reference
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in DS_ENV.items():
        monkeypatch.setenv(key, value)
    cfg = dataclasses.replace(CFG, backend="trl", deepspeed="conf/deepspeed/zero3.json")
    tok = load_tokenizer(str(tiny_model))
    net, stats = sft.fine_tune(lambda: pytest.fail("the model is trained in the launched process"), tiny_model, tok,
                               rows(), problems.format_prompt, cfg, 0, tmp_path, "float32", "cpu")
    assert net is None and math.isfinite(stats["loss"]) and stats["loss"] < stats["first_loss"]
    assert stats["threads"] == len(os.sched_getaffinity(0))  # one rank: every core of the job
    assert stats["tokens_per_s"] == pytest.approx(stats["rank_tokens_per_s"])
    zero3 = weights(load_model(ModelConfig(path=str(tmp_path / "model"))))
    assert max_diff(zero3, before) > 1e-4  # it trained
    # one rank, same seed, same torch AdamW: ZeRO-3 must give the single-process result
    assert stats["steps"] == plain["steps"] and abs(stats["loss"] - plain["loss"]) < 1e-4
    assert max_diff(zero3, trained) < 1e-5


def test_launch_two_ranks_shards_and_matches_one_process(reference, tiny_model, tmp_path, monkeypatch):
    """torchrun with 2 gloo ranks: ZeRO-3 builds each rank's shard in from_pretrained, trains, and the ranks
    gather the 16-bit weights once for rank 0 to save (fp32 here: the same numbers as one process)."""
    from imm.sft.trl_trainer import launch

    before, trained, plain = reference
    for key, value in DS_ENV.items():
        monkeypatch.setenv(key, value)
    # 2 ranks × batch 8 × 1 accumulation = 1 rank × batch 8 × 2 accumulations, the same examples per step
    two = dataclasses.replace(CFG, grad_accum=1)
    stats = launch(str(tiny_model), rows(), problems.format_prompt, two, 0, str(tmp_path), nproc=2,
                   deepspeed="conf/deepspeed/zero3.json", dtype="float32")
    assert stats["steps"] == plain["steps"] and abs(stats["loss"] - plain["loss"]) < 1e-4
    assert stats["sharded_init"]  # each rank built its shard in from_pretrained, not a full copy
    assert stats["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)  # the cores shared by the two ranks
    assert stats["tokens_per_s"] > 1.5 * stats["rank_tokens_per_s"]  # both ranks' tokens, not rank 0's
    launched = weights(load_model(ModelConfig(path=str(tmp_path / "model"))))
    assert max_diff(launched, before) > 1e-4
    assert max_diff(launched, trained) < 1e-5

