"""The streaming merge engine on tiny random Qwen2 checkpoints: exactness, sharding, rules, refusals."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from imm.merge.rules import MERGE_RULES, MergeConfig
from imm.merge.engine import Checkpoint, merge_checkpoints


def tiny_config(vocab=96, tie=True):
    return Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       tie_word_embeddings=tie)


def save_model(path, seed, base_state=None, vocab=96, tie=True, shard=None):
    """A tiny model; with ``base_state`` its weights are that state plus a small seeded perturbation."""
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config(vocab, tie))
    if base_state is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, t in model.state_dict().items():
                t.copy_(base_state[name] + 0.01 * torch.randn(t.shape, generator=g))
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, **kw)
    (path / "tokenizer.json").write_text('{"marker": true}')
    return {k: v.clone() for k, v in model.state_dict().items()}


def load(path):
    ck = Checkpoint(path)
    try:
        return {n: ck.read(n) for n in ck.names}
    finally:
        ck.close()


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    base = save_model(root / "base", 0)
    save_model(root / "prev", 1, base)
    save_model(root / "sft", 2, base)
    save_model(root / "sft_sharded", 2, base, shard="20KB")
    return root


@pytest.mark.parametrize("name", sorted(MERGE_RULES))
def test_every_rule_same_from_sharded_inputs_into_small_shards(trio, tmp_path, name):
    """Where tensors live (one file or shards, in and out) changes no bit and no statistic."""
    cfg, scales = MergeConfig(name=name, alpha=0.3, alpha_last=0.7, p=0.4, seed=7), {0: 0.5, 1: 1.0, 2: 1.5}
    one = merge_checkpoints(trio / "base", trio / "prev", trio / "sft", tmp_path / "a", cfg, 2, scales)
    many = merge_checkpoints(trio / "base", trio / "prev", trio / "sft_sharded", tmp_path / "b", cfg, 2, scales,
                             max_shard_bytes=30_000)
    a, b, sft = load(tmp_path / "a"), load(tmp_path / "b"), load(trio / "sft")
    assert a.keys() == b.keys() == sft.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not any(torch.equal(a[k], sft[k]) for k in a)  # every tensor was merged
    assert one == many


def test_dare_density_recorded(trio, tmp_path):
    stats = merge_checkpoints(trio / "base", trio / "prev", trio / "sft", tmp_path, MergeConfig(p=0.4), 0)
    assert 0.55 < stats.density < 0.65  # DARE kept ≈ 1 − p of the nonzero update
    assert stats.update_norm < stats.delta_norm  # α = 0.5 pulls the merged model back toward θ


def test_sharded_output_index(trio, tmp_path):
    merge_checkpoints(trio / "base", trio / "prev", trio / "sft_sharded", tmp_path, MergeConfig(p=0.2), 0,
                      max_shard_bytes=30_000)
    assert len(list((trio / "sft_sharded").glob("model-*.safetensors"))) > 1
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and all((tmp_path / s).is_file() for s in shards)


def test_output_loads_with_from_pretrained(trio, tmp_path):
    merge_checkpoints(trio / "base", trio / "prev", trio / "sft", tmp_path, MergeConfig(), 0)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    merged = load(tmp_path)
    assert torch.equal(model.model.layers[1].mlp.up_proj.weight, merged["model.layers.1.mlp.up_proj.weight"])
    assert "lm_head.weight" not in merged  # tied and absent in the inputs: not invented
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == {"marker": True}
    assert (tmp_path / "config.json").is_file() and (tmp_path / "generation_config.json").is_file()
    logits = model(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


def test_excluded_tensors_copied_from_the_named_model(trio, tmp_path):
    cfg = MergeConfig(p=0.3, exclude=[r"embed_tokens", r"\.norm\.weight$"], exclude_from="base")
    merge_checkpoints(trio / "base", trio / "prev", trio / "sft", tmp_path, cfg, 0)
    got, base, sft = load(tmp_path), load(trio / "base"), load(trio / "sft")
    assert torch.equal(got["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert torch.equal(got["model.norm.weight"], base["model.norm.weight"])
    assert not torch.equal(got["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(got["model.layers.0.mlp.up_proj.weight"], sft["model.layers.0.mlp.up_proj.weight"])
    record = json.loads((tmp_path / "merge.json").read_text())
    assert record["excluded"] == ["model.embed_tokens.weight", "model.norm.weight"]
    meta = Checkpoint(tmp_path).files
    assert all(json.loads(sf.metadata["merge"])["method"]["exclude_from"] == "base" for sf in meta.values())


def test_untied_lm_head_is_merged(tmp_path):
    base = save_model(tmp_path / "base", 0, tie=False)
    save_model(tmp_path / "prev", 1, base, tie=False)
    save_model(tmp_path / "sft", 2, base, tie=False)
    merge_checkpoints(tmp_path / "base", tmp_path / "prev", tmp_path / "sft", tmp_path / "out", MergeConfig(), 0)
    got = load(tmp_path / "out")
    assert "lm_head.weight" in got and not torch.equal(got["lm_head.weight"], got["model.embed_tokens.weight"])


def test_group_stats_recorded(trio, tmp_path):
    merge_checkpoints(trio / "base", trio / "prev", trio / "sft", tmp_path, MergeConfig(p=0.5), 0)
    groups = json.loads((tmp_path / "merge.json").read_text())["stats"]["groups"]
    for g in ("embeddings", "norms", "layers.0.attention", "layers.2.mlp", "layers.1.norms"):
        assert groups[g]["delta_norm"] > 0 and groups[g]["update_norm"] > 0
    assert all(0.4 < groups[g]["density"] < 0.6 for g in ("embeddings", "layers.0.mlp"))
    assert "lm_head" not in groups


def test_different_vocabulary_refused_before_writing(trio, tmp_path):
    save_model(tmp_path / "other", 3, vocab=120)
    with pytest.raises(ValueError, match="embed_tokens.weight has shape"):
        merge_checkpoints(trio / "base", trio / "prev", tmp_path / "other", tmp_path / "out", MergeConfig(), 0)
    assert not (tmp_path / "out").exists()


def test_different_architecture_refused(trio, tmp_path):
    (tmp_path / "two").mkdir()
    state = load(trio / "sft")
    from safetensors.torch import save_file
    save_file({k: v for k, v in state.items() if ".layers.2." not in k}, str(tmp_path / "two" / "model.safetensors"))
    with pytest.raises(ValueError, match="different architectures"):
        merge_checkpoints(trio / "base", trio / "prev", tmp_path / "two", tmp_path / "out", MergeConfig(), 0)
    assert not (tmp_path / "out").exists()


def test_engine_output_is_deterministic(trio, tmp_path):
    cfg = MergeConfig(p=0.3, seed=4)
    for out in ("a", "b"):
        merge_checkpoints(trio / "base", trio / "prev", trio / "sft", tmp_path / out, cfg, 1)
    a, b = (tmp_path / o / "model-00001-of-00001.safetensors" for o in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()


def test_reused_read_buffer_gives_the_same_rows(trio):
    ck = Checkpoint(trio / "sft")
    try:
        name = "model.embed_tokens.weight"
        first = ck.read(name, slice(0, 5), reuse=True).clone()
        assert torch.equal(first, ck.read(name)[0:5])
        whole = ck.read(name, reuse=True).clone()  # grows the buffer
        rows = ck.read(name, slice(3, 9), reuse=True)
        assert torch.equal(rows, whole[3:9])
        assert rows.data_ptr() == ck.buffer.data_ptr()  # the next reused read overwrites it
    finally:
        ck.close()
