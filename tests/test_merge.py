"""DARE and the IMM merge formula (Eq. 5-7) as tensor properties."""

import pytest
import torch

from imm.merge import (MergeConfig, check_compatible, dare, dare_linear, importance_scales, layer_index,
                       merge_state_dicts, tensor_seed)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_dare_drop_share_and_rescale():
    delta = torch.randn(200_000)
    out = dare(delta, 0.3, gen())
    kept = out != 0
    assert abs(1 - kept.float().mean().item() - 0.3) < 0.01  # dropped share ≈ p
    assert torch.allclose(out[kept], delta[kept] / 0.7)  # kept entries rescaled by 1/(1-p)
    assert abs(out.sum().item() - delta.sum().item()) < 0.02 * delta.abs().sum().item()  # unbiased


def test_dare_deterministic_and_seed_sensitive():
    delta = torch.randn(1000)
    assert torch.equal(dare(delta, 0.5, gen(1)), dare(delta, 0.5, gen(1)))
    assert not torch.equal(dare(delta, 0.5, gen(1)), dare(delta, 0.5, gen(2)))


def test_dare_p0_is_identity():
    delta = torch.randn(100)
    assert torch.equal(dare(delta, 0.0, gen()), delta)


def test_merge_alpha_extremes():
    base, prev, sft = torch.randn(50), torch.randn(50), torch.randn(50)
    assert torch.allclose(dare_linear(base, prev, sft, alpha=1.0, p=0.4, generator=gen()), base)
    expected = prev + dare(sft - prev, 0.4, gen())
    assert torch.allclose(dare_linear(base, prev, sft, alpha=0.0, p=0.4, generator=gen()), expected, atol=1e-6)
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


@pytest.mark.parametrize("field,value", [("alpha", 1.5), ("alpha", -0.1), ("p", 1.0), ("p", -0.2)])
def test_merge_config_ranges(field, value):
    with pytest.raises(ValueError, match=f"merge.{field}"):
        MergeConfig(**{field: value})
