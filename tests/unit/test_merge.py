"""DARE and the IMM merge formula (Eq. 5-7): the rules as tensor properties, and merges through
``merge_checkpoints`` (what the loop runs) on small safetensors checkpoints written here."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from imm.merge.engine import merge_checkpoints
from imm.merge.mask import DareMask, tensor_seed
from imm.merge.rules import (CHUNK_ELEMS, MERGE_RULES, MergeConfig, check_compatible, count_nonzero, get,
                             importance_scales, layer_index, merge_blocks, merge_tensor, row_ranges, ties_merge,
                             ties_update)
from imm.merge.stats import tensor_group

# float32 merges round a handful of times (δ, ×mask, +θ_prev, ×(1−α), +α·θ, each to 2⁻²⁴ relative):
# 1e-6 of the summed magnitudes of the terms bounds them with room to spare
F32_REL = 1e-6
# bf16 storage rounds the float32 result once more, to 8 significant bits: at most 2⁻⁸ of |result|
BF16_REL = 2.0**-8


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def randn(shape, seed, mean=0.0):
    return torch.randn(shape, generator=gen(seed)) + mean


def merge(tmp_path, base, prev, sft, cfg, iteration=0, layer_scales=None):
    """Write three state dicts as safetensors checkpoints, merge them with the engine, read it back."""
    for name, state in (("base", base), ("prev", prev), ("sft", sft)):
        (tmp_path / name).mkdir(parents=True, exist_ok=True)
        save_file(state, str(tmp_path / name / "model.safetensors"))
    out = tmp_path / "out"
    stats = merge_checkpoints(tmp_path / "base", tmp_path / "prev", tmp_path / "sft", out, cfg, iteration, layer_scales)
    return {k: v for f in sorted(out.glob("model-*.safetensors")) for k, v in load_file(f).items()}, stats


def state(seed, shape=(4, 4)):
    return {"model.layers.0.w": randn(shape, seed), "model.layers.1.w": randn(shape, seed + 100)}


def layered(seed, n=3):
    return {f"model.layers.{i}.w": randn(6, 10 * seed + i) for i in range(n)} | {"model.norm.weight": randn(6, seed + 1000)}


# ---- the DARE mask -------------------------------------------------------------------------------

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


def test_tensor_seed_stable_and_distinct():
    assert tensor_seed(0, 1, "a.weight") == tensor_seed(0, 1, "a.weight")
    assert len({tensor_seed(0, 1, "a"), tensor_seed(0, 2, "a"), tensor_seed(1, 1, "a"), tensor_seed(0, 1, "b")}) == 4


def test_blocks_give_the_bits_of_one_draw():
    """Row blocks share one mask stream, so a tensor merged in 10 blocks equals it merged in one."""
    base, prev, sft = (randn((37, 11), i).bfloat16() for i in range(3))
    cfg = MergeConfig(p=0.3, seed=5)
    ranges = row_ranges("dare_linear", (37, 11), chunk_elems=50)
    assert len(ranges) == 10  # 4 rows of 11 per block
    blocks = merge_blocks(cfg, "w", ((base[r], prev[r], sft[r]) for r in ranges), 2, 0.4, 1.0)
    (whole, _), = merge_blocks(cfg, "w", [(base, prev, sft)], 2, 0.4, 1.0)
    assert torch.equal(torch.cat([b for b, _ in blocks]), whole)
    assert row_ranges("ties", (37, 11)) == [...]  # TIES needs every magnitude at once


# ---- the registry ---------------------------------------------------------------------------------

def test_registry_get_fails_with_the_valid_names():
    assert get("ties") is MERGE_RULES["ties"]
    with pytest.raises(ValueError, match="task_arithmetic"):
        get("slerp")
    with pytest.raises(ValueError, match="merge.name='slerp' is not one of"):
        MergeConfig(name="slerp")


@pytest.mark.parametrize("name", sorted(MERGE_RULES))
def test_every_rule_alpha_zero_keeps_sft_alpha_one_gives_base(tmp_path, name):
    """α=0, p=0, λ=1 (at every depth): θ_prev + U(θ_sft − θ_prev) with nothing dropped is θ_sft
    (bf16 → float32 and back is exact); α=1: θ_base, whatever U drops."""
    base, prev, sft = ({"model.layers.0.w": randn((40, 30), i).bfloat16()} for i in range(3))
    out, _ = merge(tmp_path / "a0", base, prev, sft, MergeConfig(name=name, alpha=0.0, alpha_last=0.0, p=0.0,
                                                                 lam_first=1.0))
    assert out["model.layers.0.w"].dtype == torch.bfloat16
    assert torch.equal(out["model.layers.0.w"], sft["model.layers.0.w"])
    out, _ = merge(tmp_path / "a1", base, prev, sft, MergeConfig(name=name, alpha=1.0, alpha_last=1.0, p=0.5))
    assert torch.equal(out["model.layers.0.w"], base["model.layers.0.w"])


# ---- DARE through the engine -----------------------------------------------------------------------

def test_dare_is_unbiased(tmp_path):
    """E[DARE(δ)] = δ: with α=0 the merge moves θ_prev by DARE(δ). δ has mean 1, so the mean move
    over n entries must be mean(δ) within 5 standard deviations, σ² = Σδ²·p/(1−p)/n²; without the
    1/(1−p) rescale it would be (1−p)·mean(δ), 0.3 away, about 100σ."""
    n, p = 100_000, 0.3
    prev = {"model.layers.0.w": randn((100, 1000), 0)}
    sft = {"model.layers.0.w": prev["model.layers.0.w"] + randn((100, 1000), 1, mean=1.0)}
    out, _ = merge(tmp_path, prev, prev, sft, MergeConfig(alpha=0.0, p=p, seed=2))
    delta = (sft["model.layers.0.w"] - prev["model.layers.0.w"]).double()
    moved = out["model.layers.0.w"].double() - prev["model.layers.0.w"].double()
    sigma = (float((delta**2).sum()) * p / (1 - p)) ** 0.5 / n
    assert abs(float(moved.mean() - delta.mean())) < 5 * sigma
    assert abs(float((1 - p) * moved.mean() - delta.mean())) > 5 * sigma  # no rescale: biased
    assert abs(float((moved == 0).double().mean()) - p) < 5 * (p * (1 - p) / n) ** 0.5


def reference(base, prev, sft, alpha, p, keep):
    """θ_m = α·θ_base + (1−α)·(θ_prev + keep·(θ_sft − θ_prev)/(1−p)) in float64, and the summed
    magnitudes of its terms (what float32 rounding error scales with)."""
    b, pr, s = base.double(), prev.double(), sft.double()
    update = keep.double().view(s.shape) * (s - pr) / (1 - p)
    return alpha * b + (1 - alpha) * (pr + update), alpha * b.abs() + (1 - alpha) * (pr.abs() + update.abs())


@pytest.mark.parametrize("dtype,rel", [(torch.float32, 0.0), (torch.bfloat16, BF16_REL)], ids=["f32", "bf16"])
def test_imm_merge_matches_float64_reference(tmp_path, dtype, rel):
    """α in (0, 1), p > 0 and θ_prev ≠ θ_base together, against Eq. 6 in float64 with the mask the
    engine draws for each tensor (``DareMask(tensor_seed(seed, iteration, name))``). The big tensor
    spans several row blocks; the odd-sized one splits 64-bit words of the mask stream."""
    alpha, p, seed, iteration = 0.3, 0.4, 11, 2
    shapes = {"model.layers.0.mlp.w": (CHUNK_ELEMS // 256 + 37, 512), "model.layers.1.attn.w": (333, 7),
              "model.norm.weight": (96,)}
    base, prev, sft = ({k: randn(s, 10 * i + j).to(dtype) for j, (k, s) in enumerate(shapes.items())}
                       for i in range(3))
    out, stats = merge(tmp_path, base, prev, sft, MergeConfig(alpha=alpha, p=p, seed=seed), iteration)
    dropped = total = kept_moved = moved = 0
    delta_sq = update_sq = 0.0
    for name in shapes:
        keep = DareMask(tensor_seed(seed, iteration, name)).multipliers(sft[name].numel(), p) != 0
        ref, terms = reference(base[name], prev[name], sft[name], alpha, p, keep)
        got = out[name]
        assert got.dtype == dtype and got.shape == ref.shape
        err = (got.double() - ref).abs()
        assert (err <= rel * ref.abs() + F32_REL * terms).all(), f"{name}: max error {float(err.max()):.3g}"
        dropped, total = dropped + int((~keep).sum()), total + keep.numel()
        nonzero = (sft[name] != prev[name]).view(-1)  # bf16 inputs may coincide: δ = 0 is not counted
        kept_moved, moved = kept_moved + int((keep & nonzero).sum()), moved + int(nonzero.sum())
        delta_sq += float(((sft[name].double() - prev[name].double()) ** 2).sum())
        update_sq += float(((ref - prev[name].double()) ** 2).sum())
    assert abs(dropped / total - p) < 5 * (p * (1 - p) / total) ** 0.5
    assert stats.density == pytest.approx(kept_moved / moved)
    assert stats.delta_norm == pytest.approx(delta_sq ** 0.5, rel=1e-4)  # ‖θ_sft − θ_prev‖
    assert stats.update_norm == pytest.approx(update_sq ** 0.5, rel=1e-2)  # ‖θ_m − θ_prev‖


def test_merge_reproducible_per_iteration(tmp_path):
    base, prev, sft = state(0), state(1), state(2)
    cfg = MergeConfig(alpha=0.5, p=0.5, seed=3)
    a, stats = merge(tmp_path / "a", base, prev, sft, cfg, iteration=1)
    b, _ = merge(tmp_path / "b", base, prev, sft, cfg, iteration=1)
    c, _ = merge(tmp_path / "c", base, prev, sft, cfg, iteration=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # masks differ per iteration
    assert 0.3 < stats.density < 0.7
    assert stats.delta_norm > 0 and stats.update_norm > 0


def test_merge_tensor_stats():
    prev, sft = torch.zeros(1000), torch.ones(1000)
    sft[:200] = 0.0  # 800 nonzero deltas
    _, stats = merge_tensor("dare_linear", prev, prev, sft, alpha=0.0, p=0.5, keep=DareMask(0).multipliers(1000, 0.5))
    assert stats.nonzero == 800 and 330 < stats.kept < 470
    assert stats.delta_sq == pytest.approx(800.0)
    assert stats.update_sq == pytest.approx(stats.kept * 4.0)  # kept entries moved by 1/(1−p) = 2


def test_count_nonzero_in_pieces():
    x = torch.randn(10_001)
    x[torch.rand(10_001, generator=gen()) < 0.3] = 0
    for scratch in (torch.empty(10_001), torch.empty(64)):  # one piece; 157 pieces
        assert count_nonzero(x, scratch) == int(torch.count_nonzero(x))


# ---- the other rules, layer scales, exclusion -------------------------------------------------------

def test_layer_scales_apply_per_layer(tmp_path):
    base, prev, sft = state(0), state(1), state(2)
    out, _ = merge(tmp_path, base, prev, sft, MergeConfig(alpha=0.0, p=0.0), 0, layer_scales={0: 0.0, 1: 2.0})
    assert torch.equal(out["model.layers.0.w"], prev["model.layers.0.w"])
    k = "model.layers.1.w"
    assert torch.allclose(out[k], prev[k] + 2 * (sft[k] - prev[k]), atol=1e-6)


def test_task_arithmetic_lambda(tmp_path):
    base, prev, sft = state(0), state(1), state(2)
    out, _ = merge(tmp_path / "one", base, prev, sft, MergeConfig(name="task_arithmetic", alpha=0.0, lam=1.0, p=0.5))
    assert all(torch.allclose(out[k], sft[k], atol=1e-6) for k in out)  # p is not used
    out, _ = merge(tmp_path / "half", base, prev, sft, MergeConfig(name="task_arithmetic", alpha=0.0, lam=0.5))
    assert all(torch.allclose(out[k], (prev[k] + sft[k]) / 2, atol=1e-6) for k in out)


def test_ties_trims_the_right_share(tmp_path):
    delta = torch.randperm(1000, generator=gen()).float() - 500.5  # distinct magnitudes
    out = ties_update(delta, p=0.3)
    kept = out != 0
    assert int(kept.sum()) == 700
    assert delta.abs()[kept].min() > delta.abs()[~kept].max()  # the largest magnitudes survive
    assert torch.equal(out[kept], delta[kept])  # one task vector: its own sign, no rescaling
    zero = {"model.layers.0.w": torch.zeros(1000)}
    merged, _ = merge(tmp_path, zero, zero, {"model.layers.0.w": delta}, MergeConfig(name="ties", alpha=0.0, p=0.3))
    assert torch.equal(merged["model.layers.0.w"], out)


def test_ties_elects_sign_and_takes_disjoint_mean():
    deltas = torch.tensor([[3.0, -1.0, 2.0], [-1.0, -2.0, -4.0], [-1.0, 3.0, 0.5]])
    # trim to 2 of 3 per vector: [3, 0, 2], [0, -2, -4], [-1, 3, 0]
    # elected signs of the sums [2, 1, -2]: +, +, −; means of the agreeing entries: 3, 3, −4
    assert torch.equal(ties_merge(deltas, density=2 / 3), torch.tensor([3.0, 3.0, -4.0]))
    # without trimming: sums [1, 0, −1.5] → column 1 has no elected sign and stays 0
    assert torch.equal(ties_merge(deltas, density=1.0), torch.tensor([3.0, 0.0, -4.0]))


@pytest.mark.parametrize("cfg,alphas", [
    (MergeConfig(name="layer_adaptive", alpha=1.0, alpha_last=0.0, p=0.0), [1.0, 0.5, 0.0]),
    (MergeConfig(name="layer_adaptive", alpha=0.5, alpha_schedule="list", alpha_by_layer=[0.2, 0.9, 0.4], p=0.0),
     [0.2, 0.9, 0.4]),
], ids=["ramp", "list"])
def test_layer_adaptive_applies_alpha_per_layer(tmp_path, cfg, alphas):
    base, prev, sft = layered(0), layered(1), layered(2)
    out, _ = merge(tmp_path, base, prev, sft, cfg)
    for i, a in enumerate(alphas):
        k = f"model.layers.{i}.w"
        assert torch.allclose(out[k], a * base[k] + (1 - a) * sft[k], atol=1e-6)
    k = "model.norm.weight"  # outside the layers: the config's alpha
    assert torch.allclose(out[k], cfg.alpha * base[k] + (1 - cfg.alpha) * sft[k], atol=1e-6)


def test_layer_adaptive_from_importance(tmp_path):
    base, prev, sft = layered(0), layered(1), layered(2)
    cfg = MergeConfig(name="layer_adaptive", alpha=0.5, alpha_schedule="importance", p=0.0)
    scales = importance_scales({0: 1.0, 1: 0.0, 2: 2.0})  # 1, 0, 2
    out, _ = merge(tmp_path / "ok", base, prev, sft, cfg, layer_scales=scales)
    for i, a in enumerate([0.5, 1.0, 0.0]):  # 1−α_n = 0.5·s_n, clipped to [0, 1]
        k = f"model.layers.{i}.w"
        assert torch.allclose(out[k], a * base[k] + (1 - a) * sft[k], atol=1e-6)
    with pytest.raises(ValueError, match="importance"):
        merge(tmp_path / "none", base, prev, sft, cfg)
    with pytest.raises(ValueError, match="alpha_by_layer has 2 values"):
        merge(tmp_path / "two", base, prev, sft, MergeConfig(name="layer_adaptive", alpha_schedule="list",
                                                             alpha_by_layer=[0.1, 0.2]))


def test_exclude_rule(tmp_path):
    base, prev, sft = layered(0), layered(1), layered(2)
    cfg = MergeConfig(p=0.5, exclude=[r"^model\.norm"], exclude_from="prev")
    out, stats = merge(tmp_path, base, prev, sft, cfg)
    assert torch.equal(out["model.norm.weight"], prev["model.norm.weight"])
    assert not torch.equal(out["model.layers.0.w"], prev["model.layers.0.w"])
    assert "norms" not in stats.groups and "layers.0.other" in stats.groups


# ---- configuration, shapes, names ------------------------------------------------------------------

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


def test_refuses_different_architectures():
    with pytest.raises(ValueError, match="shape"):
        check_compatible(state(0), state(1, shape=(5, 4)), "a and b")
    with pytest.raises(ValueError, match="architectures"):
        check_compatible(state(0), {"model.layers.0.w": torch.zeros(4, 4)}, "a and b")


def test_importance_scales_average_to_one():
    scales = importance_scales({0: 1.0, 1: 3.0, 2: 0.0, 3: 4.0})
    assert scales == pytest.approx({0: 0.5, 1: 1.5, 2: 0.0, 3: 2.0})
    assert sum(scales.values()) / len(scales) == pytest.approx(1.0)


def test_layer_index():
    assert layer_index("model.layers.12.mlp.up_proj.weight") == 12
    assert layer_index("model.embed_tokens.weight") is None


def test_tensor_groups():
    assert tensor_group("model.layers.3.self_attn.q_proj.weight") == "layers.3.attention"
    assert tensor_group("model.layers.3.mlp.up_proj.weight") == "layers.3.mlp"
    assert tensor_group("model.layers.0.input_layernorm.weight") == "layers.0.norms"
    assert tensor_group("model.embed_tokens.weight") == "embeddings"
    assert tensor_group("lm_head.weight") == "lm_head"
    assert tensor_group("model.norm.weight") == "norms"


def test_merge_stats_summary_by_hand():
    from imm.merge.stats import TensorStats

    assert TensorStats(delta_sq=9.0, update_sq=16.0, nonzero=4, kept=1).summary() == \
        {"update_norm": 4.0, "delta_norm": 3.0, "density": 0.25}
    assert TensorStats().summary()["density"] == 0.0  # no entry moved
