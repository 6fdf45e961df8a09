"""The slots decoder's draw read from the top logits: the same token as the whole vocabulary's CDF."""

import torch

from imm.sampling import batching


def test_top_logits_give_the_full_cdfs_token_for_peaked_and_flat_rows(monkeypatch):
    g = torch.Generator().manual_seed(0)
    vocab = 5000
    peaked = torch.randn(64, vocab, generator=g) * 3
    peaked[:, :8] += 40  # a few likely tokens: at temperature 0.3 the rest hold < 1e-30 of the mass
    flat = torch.randn(64, vocab, generator=g) * 0.1  # nearly uniform: the top 64 hold ~1% of the mass
    logits = torch.cat([peaked, flat])
    temps = torch.full((128,), 0.3)
    u = torch.rand(128, generator=g)
    full = batching._inverse_cdf(logits / temps[:, None], u)
    ours = batching._from_top(logits, temps, u)
    assert torch.equal(ours, full)
    calls = []
    real = batching._inverse_cdf
    monkeypatch.setattr(batching, "_inverse_cdf", lambda x, v: calls.append(x.shape) or real(x, v))
    batching._from_top(logits, temps, u)
    assert calls == [(128, batching.TOP_K), (64, vocab)]  # the peaked rows stayed within their top logits
    assert len(set(ours[64:].tolist())) > 32  # the flat rows really were drawn from the whole vocabulary
