"""DARE and the IMM merge formula (Eq. 5-7) as tensor properties."""

import numpy as np
import pytest
import torch

from imm.merge.rules import (MERGE_METHODS, UPDATE_RULES, DareMask, MergeConfig, check_compatible, count_nonzero, dare,
                       dare_linear, get, importance_scales, layer_index, merge_blocks, merge_state_dicts, merge_tensor,
                       row_ranges, task_arithmetic, tensor_group, tensor_seed, ties, ties_merge, ties_update)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def mask(seed=0):
    return DareMask(seed)


def test_dare_drop_share_and_rescale():
    delta = torch.randn(200_000)
    out = dare(delta, 0.3, mask())
    kept = out != 0
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.01  # dropped share ≈ p
    assert torch.allclose(out[kept], delta[kept] / 0.7)  # kept entries rescaled by 1/(1-p)
    assert abs(out.sum().item() - delta.sum().item()) < 0.02 * delta.abs().sum().item()  # unbiased


def test_dare_deterministic_and_seed_sensitive():
    delta = torch.randn(1000)
    assert torch.equal(dare(delta, 0.5, mask(1)), dare(delta, 0.5, mask(1)))
    assert not torch.equal(dare(delta, 0.5, mask(1)), dare(delta, 0.5, mask(2)))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 2**-12])
def test_dare_mask_drops_a_p_share(p):
    n = 4_000_000
    keep = DareMask(3).multipliers(n, p)
    dropped = int((keep == 0).sum())
    sigma = (n * p * (1 - p)) ** 0.5
    assert abs(dropped - n * p) < 5 * sigma  # Bernoulli(p): within 5 standard deviations
    assert torch.equal(keep.unique(), torch.tensor([0.0, 1.0 / (1.0 - p)], dtype=torch.float32))


def test_dare_mask_blocks_give_one_draw_and_stable_bits():
    """Any split into blocks (odd sizes carry half a 64-bit word) draws the bits of one draw."""
    whole = DareMask(7).words(101)
    parts = DareMask(7)
    assert np.array_equal(np.concatenate([parts.words(k) for k in (7, 0, 1, 33, 1, 59)]), whole)
    # numpy's raw SFC64 stream is stable across versions; a change here changes every merge
    assert DareMask(0).words(4).tolist() == [-1184210126, -1852465569, 1518247713, 1008588962]


def test_dare_mask_deterministic_and_seed_sensitive():
    assert torch.equal(DareMask(1).multipliers(1000, 0.3), DareMask(1).multipliers(1000, 0.3))
    assert not torch.equal(DareMask(1).multipliers(1000, 0.3), DareMask(2).multipliers(1000, 0.3))
    out = torch.empty(1000)
    assert DareMask(1).multipliers(1000, 0.3, out=out).data_ptr() == out.data_ptr()


def test_count_nonzero_in_pieces():
    x = torch.randn(10_001)
    x[torch.rand(10_001, generator=gen()) < 0.3] = 0
    for scratch in (torch.empty(10_001), torch.empty(64)):  # one piece; 157 pieces
        assert count_nonzero(x, scratch) == int(torch.count_nonzero(x))


def test_dare_p0_is_identity():
    delta = torch.randn(100)
    assert torch.equal(dare(delta, 0.0, mask()), delta)


def test_merge_alpha_extremes():
    base, prev, sft = torch.randn(50), torch.randn(50), torch.randn(50)
    assert torch.allclose(dare_linear(base, prev, sft, alpha=1.0, p=0.4, generator=mask()), base)
    expected = prev + dare(sft - prev, 0.4, mask())
    assert torch.allclose(dare_linear(base, prev, sft, alpha=0.0, p=0.4, generator=mask()), expected, atol=1e-6)
    half = dare_linear(base, prev, sft, alpha=0.5, p=0.0)
    assert torch.allclose(half, 0.5 * base + 0.5 * sft, atol=1e-6)  # p=0: α·θ + (1−α)·θ_sft


def test_importance_scale_multiplies_update():
    base, prev, sft = torch.zeros(10), torch.ones(10), torch.full((10,), 3.0)
    out = dare_linear(base, prev, sft, alpha=0.0, p=0.0, scale=0.5)
    assert torch.allclose(out, torch.full((10,), 2.0))  # 1 + 0.5·(3−1)


def test_importance_scales_average_to_one():
    scales = importance_scales({0: 1.0, 1: 3.0, 2: 0.0, 3: 4.0})
    assert scales == pytest.approx({0: 0.5, 1: 1.5, 2: 0.0, 3: 2.0})
    assert sum(scales.values()) / len(scales) == pytest.approx(1.0)


def test_tensor_seed_stable_and_distinct():
    assert tensor_seed(0, 1, "a.weight") == tensor_seed(0, 1, "a.weight")
    assert len({tensor_seed(0, 1, "a"), tensor_seed(0, 2, "a"), tensor_seed(1, 1, "a"), tensor_seed(0, 1, "b")}) == 4


def test_layer_index():
    assert layer_index("model.layers.12.mlp.up_proj.weight") == 12
    assert layer_index("model.embed_tokens.weight") is None


def state(seed, shape=(4, 4)):
    g = gen(seed)
    return {"model.layers.0.w": torch.randn(shape, generator=g), "model.layers.1.w": torch.randn(shape, generator=g)}


def test_merge_state_dicts_reproducible_and_stats():
    base, prev, sft = state(0), state(1), state(2)
    cfg = MergeConfig(alpha=0.5, p=0.5, seed=3)
    a, stats = merge_state_dicts(base, prev, sft, cfg, iteration=1)
    b, _ = merge_state_dicts(base, prev, sft, cfg, iteration=1)
    c, _ = merge_state_dicts(base, prev, sft, cfg, iteration=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # masks differ per iteration
    assert 0.3 < stats.density < 0.7
    assert stats.delta_norm > 0 and stats.update_norm > 0


def test_layer_scales_apply_per_layer():
    base, prev, sft = state(0), state(1), state(2)
    cfg = MergeConfig(alpha=0.0, p=0.0)
    out, _ = merge_state_dicts(base, prev, sft, cfg, 0, layer_scales={0: 0.0, 1: 2.0})
    assert torch.allclose(out["model.layers.0.w"], prev["model.layers.0.w"])
    assert torch.allclose(out["model.layers.1.w"], prev["model.layers.1.w"] + 2 * (sft["model.layers.1.w"] - prev["model.layers.1.w"]))


def test_refuses_different_architectures():
    with pytest.raises(ValueError, match="shape"):
        check_compatible(state(0), state(1, shape=(5, 4)), "a and b")
    with pytest.raises(ValueError, match="architectures"):
        check_compatible(state(0), {"model.layers.0.w": torch.zeros(4, 4)}, "a and b")


@pytest.mark.parametrize("field,value", [
    ("alpha", 1.5), ("alpha", -0.1), ("p", 1.0), ("p", -0.2), ("lam", -1.0), ("lam", float("inf")),
    ("alpha_schedule", "cosine"), ("alpha_last", 2.0), ("alpha_by_layer", [0.5, 1.2]),
    ("exclude_from", "teacher"), ("exclude", ["("]), ("name", "slerp"),
])
def test_merge_config_ranges(field, value):
    with pytest.raises(ValueError, match=f"merge.{field}"):
        MergeConfig(**{field: value})


def test_list_schedule_needs_values():
    with pytest.raises(ValueError, match="merge.alpha_by_layer"):
        MergeConfig(name="layer_adaptive", alpha_schedule="list")


def test_registry_names_and_get():
    assert set(MERGE_METHODS) == set(UPDATE_RULES) == {"dare_linear", "task_arithmetic", "ties", "layer_adaptive"}
    assert get("ties") is ties
    with pytest.raises(KeyError, match="task_arithmetic"):
        get("slerp")


@pytest.mark.parametrize("name", sorted(MERGE_METHODS))
def test_methods_leave_inputs_alone_and_keep_dtype(name):
    base, prev, sft = (torch.randn(8, 8, generator=gen(i)) for i in range(3))
    copies = [t.clone() for t in (base, prev, sft)]
    out = MERGE_METHODS[name](base, prev, sft.bfloat16(), alpha=0.3, p=0.5, generator=mask())
    assert out.dtype == torch.bfloat16 and out.shape == sft.shape
    assert all(torch.equal(a, b) for a, b in zip((base, prev, sft), copies))


def test_task_arithmetic_lambda_one_is_sft():
    base, prev, sft = (torch.randn(100, generator=gen(i)) for i in range(3))
    assert torch.allclose(task_arithmetic(base, prev, sft, alpha=0.0, p=0.5, scale=1.0), sft, atol=1e-6)
    half = task_arithmetic(base, prev, sft, alpha=0.0, p=0.0, scale=0.5)
    assert torch.allclose(half, (prev + sft) / 2, atol=1e-6)
    cfg = MergeConfig(name="task_arithmetic", alpha=0.0, lam=1.0)
    out, _ = merge_state_dicts(state(0), state(1), state(2), cfg, 0)
    assert all(torch.allclose(out[k], state(2)[k], atol=1e-6) for k in out)


def test_ties_trims_the_right_share():
    delta = torch.randperm(1000).float() - 500.5  # distinct magnitudes
    out = ties_update(delta, p=0.3)
    kept = out != 0
    assert int(kept.sum()) == 700
    assert delta.abs()[kept].min() > delta.abs()[~kept].max()  # the largest magnitudes survive
    assert torch.equal(out[kept], delta[kept])  # one task vector: its own sign, no rescaling
    out = ties(torch.zeros(1000), torch.zeros(1000), delta, alpha=0.0, p=0.3)
    assert int((out != 0).sum()) == 700


def test_ties_elects_sign_and_takes_disjoint_mean():
    deltas = torch.tensor([[3.0, -1.0, 2.0], [-1.0, -2.0, -4.0], [-1.0, 3.0, 0.5]])
    # trim to 2 of 3 per vector: [3, 0, 2], [0, -2, -4], [-1, 3, 0]
    # elected signs of the sums [2, 1, -2]: +, +, −; means of the agreeing entries: 3, 3, −4
    assert torch.equal(ties_merge(deltas, density=2 / 3), torch.tensor([3.0, 3.0, -4.0]))
    # without trimming: sums [1, 0, −1.5] → column 1 has no elected sign and stays 0
    assert torch.equal(ties_merge(deltas, density=1.0), torch.tensor([3.0, 0.0, -4.0]))


def layered(seed, n=3):
    g = gen(seed)
    return {f"model.layers.{i}.w": torch.randn(6, generator=g) for i in range(n)} | {"model.norm.weight": torch.randn(6, generator=g)}


@pytest.mark.parametrize("cfg,alphas", [
    (MergeConfig(name="layer_adaptive", alpha=1.0, alpha_last=0.0, p=0.0), [1.0, 0.5, 0.0]),
    (MergeConfig(name="layer_adaptive", alpha=0.5, alpha_schedule="list", alpha_by_layer=[0.2, 0.9, 0.4], p=0.0),
     [0.2, 0.9, 0.4]),
])
def test_layer_adaptive_applies_alpha_per_layer(cfg, alphas):
    base, prev, sft = layered(0), layered(1), layered(2)
    out, _ = merge_state_dicts(base, prev, sft, cfg, 0)
    for i, a in enumerate(alphas):
        k = f"model.layers.{i}.w"
        assert torch.allclose(out[k], a * base[k] + (1 - a) * sft[k], atol=1e-6)
    k = "model.norm.weight"  # outside the layers: the config's alpha
    assert torch.allclose(out[k], cfg.alpha * base[k] + (1 - cfg.alpha) * sft[k], atol=1e-6)


def test_layer_adaptive_from_importance():
    base, prev, sft = layered(0), layered(1), layered(2)
    cfg = MergeConfig(name="layer_adaptive", alpha=0.5, alpha_schedule="importance", p=0.0)
    scales = importance_scales({0: 1.0, 1: 0.0, 2: 2.0})  # 1, 0, 2
    out, _ = merge_state_dicts(base, prev, sft, cfg, 0, layer_scales=scales)
    for i, a in enumerate([0.5, 1.0, 0.0]):  # 1−α_n = 0.5·s_n, clipped to [0, 1]
        k = f"model.layers.{i}.w"
        assert torch.allclose(out[k], a * base[k] + (1 - a) * sft[k], atol=1e-6)
    with pytest.raises(ValueError, match="importance"):
        merge_state_dicts(base, prev, sft, cfg, 0)
    with pytest.raises(ValueError, match="alpha_by_layer has 2 values"):
        merge_state_dicts(base, prev, sft, MergeConfig(name="layer_adaptive", alpha_schedule="list",
                                                       alpha_by_layer=[0.1, 0.2]), 0)


def test_blocks_give_the_bits_of_one_draw():
    """Row blocks share one generator, so DARE over blocks equals DARE over the whole tensor."""
    base, prev, sft = (torch.randn(37, 11, generator=gen(i)).bfloat16() for i in range(3))
    cfg = MergeConfig(p=0.3, seed=5)
    whole = dare_linear(base, prev, sft, alpha=0.4, p=0.3, generator=DareMask(tensor_seed(5, 2, "w")))
    ranges = row_ranges("dare_linear", (37, 11), chunk_elems=50)
    assert len(ranges) == 10  # 4 rows of 11 per block
    blocks = merge_blocks(cfg, "w", ((base[r], prev[r], sft[r]) for r in ranges), 2, 0.4, 1.0)
    assert torch.equal(torch.cat([b for b, _ in blocks]), whole)
    assert row_ranges("ties", (37, 11)) == [...]  # TIES needs every magnitude at once


def test_merge_tensor_stats():
    prev, sft = torch.zeros(1000), torch.ones(1000)
    sft[:200] = 0.0  # 800 nonzero deltas
    _, stats = merge_tensor("dare_linear", prev, prev, sft, alpha=0.0, p=0.5, keep=mask().multipliers(1000, 0.5))
    assert stats.nonzero == 800 and 330 < stats.kept < 470
    assert stats.delta_sq == pytest.approx(800.0)
    assert stats.update_sq == pytest.approx(stats.kept * 4.0)  # kept entries moved by 1/(1−p) = 2


def test_tensor_groups():
    assert tensor_group("model.layers.3.self_attn.q_proj.weight") == "layers.3.attention"
    assert tensor_group("model.layers.3.mlp.up_proj.weight") == "layers.3.mlp"
    assert tensor_group("model.layers.0.input_layernorm.weight") == "layers.0.norms"
    assert tensor_group("model.embed_tokens.weight") == "embeddings"
    assert tensor_group("lm_head.weight") == "lm_head"
    assert tensor_group("model.norm.weight") == "norms"


def test_exclude_rule_in_memory():
    base, prev, sft = layered(0), layered(1), layered(2)
    cfg = MergeConfig(p=0.5, exclude=[r"^model\.norm"], exclude_from="prev")
    out, stats = merge_state_dicts(base, prev, sft, cfg, 0)
    assert torch.equal(out["model.norm.weight"], prev["model.norm.weight"])
    assert not torch.equal(out["model.layers.0.w"], prev["model.layers.0.w"])
    assert "norms" not in stats.groups and "layers.0.other" in stats.groups
