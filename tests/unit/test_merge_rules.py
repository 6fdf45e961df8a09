"""DELLA, LiNeS and ExPO against their formulas in float64, through ``merge_checkpoints`` (what the
loop runs); task arithmetic beside them. Each reference is written out here from the paper's
formula, so a change of the rule's arithmetic fails its test."""

import pytest
import torch

from imm.merge.magprune import della_update, keep_chances
from imm.merge.mask import DareMask, tensor_seed
from imm.merge.rules import MERGE_RULES, MergeConfig
from tests.unit.test_configs import CONF
from tests.unit.test_merge import F32_REL, merge, randn

NAMES = ("model.embed_tokens.weight", "model.layers.0.mlp.w", "model.layers.1.mlp.w", "model.layers.2.attn.w",
         "model.norm.weight")


def states(shape=(6, 9)):
    """base, prev, sft in float32 (δ = sft − prev is then the engine's float32 difference)."""
    return [{n: randn(shape if "norm" not in n else shape[-1:], 10 * i + j) for j, n in enumerate(NAMES)}
            for i in range(3)]


def combine(base, prev, update, alpha):
    """α·θ + (1−α)·(θ_prev + update) in float64 and the summed magnitudes of its terms."""
    b, pr = base.double(), prev.double()
    return alpha * b + (1 - alpha) * (pr + update), alpha * b.abs() + (1 - alpha) * (pr.abs() + update.abs())


def close(got, ref, terms):
    err = (got.double() - ref).abs()
    return bool((err <= F32_REL * terms + 1e-12).all())


def delta64(prev, sft):
    return (sft - prev).double()  # the float32 difference the engine takes, then float64 onwards


def test_task_arithmetic_matches_float64_reference(tmp_path):
    """θ_m = α·θ + (1−α)·(θ_prev + λ·δ) (arXiv 2212.04089): no drop, whatever p says."""
    base, prev, sft = states()
    alpha, lam = 0.3, 0.7
    out, _ = merge(tmp_path, base, prev, sft, MergeConfig(name="task_arithmetic", alpha=alpha, lam=lam, p=0.4))
    for n in NAMES:
        assert close(out[n], *combine(base[n], prev[n], lam * delta64(prev[n], sft[n]), alpha)), n


def test_della_matches_float64_reference(tmp_path):
    """k_i = (1−p) − ε/2 + ε·r_i/(n−1), r_i the rank of |δ_i| in its row; kept when the tensor's
    i-th uniform draw is below k_i, then δ_i/k_i."""
    base, prev, sft = states()
    alpha, p, eps, seed, it = 0.4, 0.3, 0.2, 5, 1
    out, stats = merge(tmp_path, base, prev, sft, MergeConfig(name="della", alpha=alpha, p=p, epsilon=eps, seed=seed), it)
    for n in NAMES:
        d = delta64(prev[n], sft[n])
        rows = d.reshape(-1, d.shape[-1])
        ranks = torch.empty_like(rows)
        for r in range(rows.shape[0]):  # rank by magnitude, written out row by row
            order = sorted(range(rows.shape[1]), key=lambda i: (abs(float(rows[r, i])), i))
            for rank, i in enumerate(order):
                ranks[r, i] = rank
        k = ((1 - p) - eps / 2 + eps * ranks / (rows.shape[1] - 1)).view(d.shape)
        u = DareMask(tensor_seed(seed, it, n)).uniforms(d.numel()).double().view(d.shape)
        update = torch.where(u < k, d / k, torch.zeros_like(d))
        assert close(out[n], *combine(base[n], prev[n], update, alpha)), n
    assert 0.5 < stats.density < 0.9  # about 1 − p kept


def test_della_keeps_large_entries_more_often_and_is_unbiased():
    """Ranked drop: the largest tenth survives more often than the smallest tenth, and the mean of
    U(δ) is δ's (each kept entry divided by its own keep chance)."""
    n, p, eps = 200_000, 0.5, 0.8
    delta = torch.linspace(0.01, 1.0, n)  # sorted: rank = index
    draws = DareMask(3).uniforms(n)
    out = della_update(delta.clone(), p, draws, eps)
    kept = out != 0
    low, high = kept[: n // 10].double().mean(), kept[-n // 10:].double().mean()
    assert float(low) == pytest.approx(0.14, abs=0.01) and float(high) == pytest.approx(0.86, abs=0.01)
    k = keep_chances(delta, p, eps).double()
    sigma = float((delta.double() ** 2 * (1 - k) / k).sum()) ** 0.5 / n
    assert abs(float(out.double().mean() - delta.double().mean())) < 5 * sigma
    assert float(keep_chances(delta, p, eps).mean()) == pytest.approx(1 - p, abs=1e-4)  # p: the mean drop


def test_lines_scales_the_update_with_depth(tmp_path):
    """λ_ℓ = λ_first + (λ − λ_first)·ℓ/(L−1) (arXiv 2410.17146): 0.2, 0.6, 1.0 over three layers; the
    embeddings take λ_first, the final norm λ."""
    base, prev, sft = states()
    alpha = 0.25
    out, _ = merge(tmp_path, base, prev, sft, MergeConfig(name="lines", alpha=alpha, lam=1.0, lam_first=0.2))
    lams = dict(zip(NAMES, (0.2, 0.2, 0.6, 1.0, 1.0)))
    for n in NAMES:
        assert close(out[n], *combine(base[n], prev[n], lams[n] * delta64(prev[n], sft[n]), alpha)), n


def test_expo_extrapolates_past_the_tuned_model(tmp_path):
    """α = −γ: θ_new + γ·(θ_new − θ_base), θ_new = θ_prev + λ·δ (arXiv 2404.16792)."""
    base, prev, sft = states()
    gamma, lam = 0.5, 1.0
    cfg = MergeConfig(name="expo", alpha=-gamma, lam=lam, extrapolate=True)
    out, _ = merge(tmp_path, base, prev, sft, cfg)
    for n in NAMES:
        new = prev[n].double() + lam * delta64(prev[n], sft[n])
        ref = new + gamma * (new - base[n].double())
        terms = (1 + gamma) * (prev[n].double().abs() + delta64(prev[n], sft[n]).abs()) + gamma * base[n].double().abs()
        assert close(out[n], ref, terms), n
        # past θ_sft, away from θ_base: farther from the base than the tuned model is
        assert (out[n] - base[n]).norm() > (sft[n] - base[n]).norm()


@pytest.mark.parametrize("cfg", [dict(name="expo", alpha=-0.5), dict(name="dare_linear", alpha=-0.5, extrapolate=True),
                                 dict(name="expo", alpha=-0.5, extrapolate=True, schedule="steps")],
                         ids=["not-asked", "not-expo", "steps"])
def test_negative_alpha_is_refused_before_compute(cfg):
    with pytest.raises(ValueError, match="merge.alpha"):
        MergeConfig(**cfg)


@pytest.mark.parametrize("field,value", [("epsilon", 0.9), ("lam_first", -1.0), ("schedule", "hourly"),
                                         ("every", 0), ("beta", 1.0)])
def test_new_settings_are_range_checked(field, value):
    with pytest.raises(ValueError, match=f"merge.{field}"):
        MergeConfig(**{"name": "della", field: value})


def test_key_fields_hold_what_changes_a_merge_only():
    """The schedule and the extrapolation switch never enter a merge's key, a rule's own setting
    enters for that rule only: the default merge's key fields are the ones stored before these
    settings existed."""
    old = {"name": "dare_linear", "alpha": 0.5, "p": 0.1, "seed": 0, "lam": 1.0, "alpha_schedule": "ramp",
           "alpha_last": 0.5, "alpha_by_layer": [], "exclude": [], "exclude_from": "sft"}
    assert MergeConfig().key_fields() == old
    assert MergeConfig(schedule="final", every=3, beta=0.2).key_fields() == old
    assert MergeConfig(name="della").key_fields()["epsilon"] == 0.1
    assert MergeConfig(name="lines", lam_first=0.3).key_fields()["lam_first"] == 0.3
    assert "epsilon" not in MergeConfig(name="lines").key_fields()


def test_every_rule_has_its_config_file():
    assert {p.stem for p in (CONF / "merge").glob("*.yaml")} == set(MERGE_RULES)
