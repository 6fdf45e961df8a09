"""Which dtype SFT computes in, and the stochastic rounding of its bf16 compute weights."""

import torch

from imm import sft
from imm.sampling import engine
from imm.sft.precision import StochasticRounding


def test_float32_weights_train_in_the_compute_dtype_and_bf16_weights_in_their_own(monkeypatch):
    assert sft.arithmetic("bfloat16", "float32", "cpu") == "bfloat16"  # mixed precision, as before
    assert sft.arithmetic("float16", "auto", "cpu") == "float16"
    assert sft.arithmetic("float32", "float32", "cpu") == "float32"  # forced: stays float32 on any hardware
    assert sft.arithmetic("float32", "bfloat16", "cpu") == "bfloat16"
    monkeypatch.setattr(engine, "fast_bf16", lambda device: True)
    assert sft.arithmetic("float32", "auto", "cpu") == "bfloat16"
    monkeypatch.setattr(engine, "fast_bf16", lambda device: False)
    assert sft.arithmetic("float32", "auto", "cpu") == "float32"


def round_many(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=torch.bfloat16)
    StochasticRounding(x.numel(), "cpu", seed)(x, out)
    return out.float()


def test_stochastic_rounding_is_unbiased_between_the_two_neighbours():
    n = 200_000
    for value in (1.0 + 2 ** -9, -(1.0 + 2 ** -9), 3.0e-5 * (1 + 2 ** -8)):
        x = torch.full((n,), value)
        low = x.view(torch.int32).bitwise_and(-65536).view(torch.float32)  # cut: the neighbour nearer 0
        y = round_many(x)
        ulp = (torch.nextafter(low.abs().to(torch.bfloat16), torch.tensor(float("inf"), dtype=torch.bfloat16))
               .float() - low.abs())[0]
        assert set(y.abs().unique().tolist()) <= {low.abs()[0].item(), (low.abs()[0] + ulp).item()}
        share_up = float((x.abs() - low.abs())[0] / ulp)
        se = float(ulp) * (share_up * (1 - share_up) / n) ** 0.5
        assert abs(float(y.mean()) - value) < 4 * se + 1e-12


def test_values_bf16_holds_are_left_exactly_as_they_are():
    x = torch.randn(10_000).to(torch.bfloat16).float()
    assert torch.equal(round_many(x, seed=3), x)


def test_each_call_draws_fresh_noise():
    x = torch.full((50_000,), 1.0 + 2 ** -8)
    rounding, a, b = StochasticRounding(x.numel(), "cpu"), torch.empty(50_000, dtype=torch.bfloat16), torch.empty(50_000, dtype=torch.bfloat16)
    rounding(x, a)
    rounding(x, b)
    assert not torch.equal(a, b)
