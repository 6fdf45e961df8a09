"""The slots decoder (continuous batching, packed weights, shared prefix) against the hf decoder, its
sampler against the distribution it draws from, and the choice of its dtype."""

from pathlib import Path

import pytest
import torch

from imm.data.world import problems
from imm.models import ModelConfig, load_model, load_tokenizer
from imm.sampling import complete
from imm.sampling import engine
from imm.sampling.batching import draw, packed
from imm.sampling.slots import supports

TESTBED = str(Path(__file__).resolve().parents[2] / "imm" / "assets" / "testbed")


@pytest.fixture(scope="module")
def testbed():
    return load_model(ModelConfig(path=TESTBED)), load_tokenizer(TESTBED)


@pytest.fixture(scope="module")
def tiny_llama(testbed):
    """A random 3-layer Llama (no q/k/v bias, 4 query heads on 2 KV heads) on the testbed's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = testbed[1]
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=1024,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


def questions(n=6):
    items = [i for f in (problems.ID_FAMILY, *problems.OOD_FAMILIES) for i in problems.make_split(f, "test", n, 0)]
    return [problems.format_prompt(i["question"]) for i in items]


def shared(prompts, head="Solve each problem step by step and end with the answer. " * 6):
    """The prompts behind one common head (the shape of a few-shot prefix: the slots decoder runs it once)."""
    return [head + p for p in prompts]


@pytest.mark.parametrize("which", ["testbed", "tiny_llama"])
@pytest.mark.parametrize("head", [False, True])
def test_greedy_float32_equals_hf_decoder(request, which, head):
    """float32, greedy: every answer the same text as the hf decoder's, with and without a shared prefix,
    with fewer slots than rows (rows wait for slots, then the batch shrinks)."""
    model, tok = request.getfixturevalue(which)
    assert supports(model)
    prompts = shared(questions()) if head else questions()
    kw = dict(n=1, temperatures=0.0, max_new_tokens=40, at_answer=True)
    ref_stats, stats = {}, {}
    ref = complete(model, tok, prompts, batch_size=8, stats=ref_stats, **kw)
    ours = complete(model, tok, prompts, batch_size=5, decoder="slots", dtype="float32", stats=stats, **kw)
    assert ours == ref
    assert stats["decoder"] == "slots" and stats["dtype"] == "float32" and stats["rows_per_call"] == 5
    assert stats["endings"] == ref_stats["endings"] and stats["lengths"] == ref_stats["lengths"]
    assert (stats["prefix_tokens"] > 0) == head


def test_samples_of_a_prompt_share_its_prefill_and_follow_their_temperatures(testbed):
    """n = 4 samples at temperatures 0 and 1: the greedy ones equal the greedy answer, the others vary;
    the same seed gives the same samples."""
    model, tok = testbed
    prompts = questions(2)
    greedy = complete(model, tok, prompts, n=1, temperatures=0.0, max_new_tokens=40, decoder="slots", dtype="float32")
    kw = dict(n=4, temperatures=[0.0, 1.0], max_new_tokens=40, decoder="slots", dtype="float32", batch_size=3, seed=5)
    a, b = complete(model, tok, prompts, **kw), complete(model, tok, prompts, **kw)
    assert a == b
    assert all(group[0] == group[2] == g[0] for group, g in zip(a, greedy))
    hot = [s for group in a for s in (group[1], group[3])]
    assert len(set(hot)) > len(hot) // 2


def test_draw_follows_the_softmax_at_each_rows_temperature():
    """The inverse-CDF draw: frequencies within 4 standard errors of softmax(logits / T); T = 0 rows argmax."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0]] * 3)
    temps = torch.tensor([1.0, 0.5, 0.0])
    gen = torch.Generator().manual_seed(0)
    n = 20000
    counts = torch.zeros(3, 5)
    for _ in range(n // 500):
        rows = draw(logits.repeat(500, 1), temps.repeat(500), 1.0, gen, hot=1000)
        counts += torch.nn.functional.one_hot(rows.view(500, 3), 5).sum(0).T.float().T
    freq = counts / n
    for r, t in enumerate((1.0, 0.5)):
        p = (logits[r] / t).softmax(-1)
        se = (p * (1 - p) / n).sqrt()
        assert ((freq[r] - p).abs() <= 4 * se + 1e-9).all(), (freq[r], p)
    assert freq[2, 0] == 1.0
    assert freq[:, 4].sum() == 0  # a token of probability ~1e-14 is never drawn


def test_dtype_auto_follows_the_hardware_and_a_float32_run_stays_float32(testbed, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(engine, "fast_bf16", lambda device: True)
    assert engine.decoding_plan("slots", "auto", "float32", cpu) == {"decoder": "slots", "dtype": "bfloat16"}
    assert engine.decoding_plan("slots", "float32", "float32", cpu)["dtype"] == "float32"
    assert engine.decoding_plan("hf", "auto", "float32", cpu) == {"decoder": "hf", "dtype": "float32"}
    assert engine.decoding_plan("auto", "auto", "float32", torch.device("cuda"))["decoder"] == "hf"
    monkeypatch.setattr(engine, "fast_bf16", lambda device: False)
    assert engine.decoding_plan("auto", "auto", "float32", cpu)["dtype"] == "float32"
    model, tok = testbed
    stats = {}
    complete(model, tok, questions(1), max_new_tokens=8, decoder="slots", dtype="float32", stats=stats)
    assert stats["dtype"] == "float32"
    assert packed(model, torch.float32).embed.dtype == torch.float32
    assert packed(model, torch.bfloat16).layers[0].qkv.w.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="needs model.decoder=slots"):
        ModelConfig(path=TESTBED, decoder="hf", compute_dtype="bfloat16")


def test_packed_weights_follow_an_in_place_update(testbed):
    """SFT changes the model in place: the next call packs the new weights, not the old ones."""
    import copy

    model = copy.deepcopy(testbed[0])
    before = packed(model, torch.float32)
    with torch.no_grad():
        model.model.norm.weight.mul_(2)
    after = packed(model, torch.float32)
    assert after is not before and torch.equal(after.norm, model.model.norm.weight)


def test_packed_weights_follow_bf16_sft_through_master_weights(testbed):
    """bf16 SFT swaps every weight through ``.data`` (float32 masters, imm/sft/precision.py), which bumps no
    version counter: the model it leaves behind is repacked all the same, and decodes as a freshly loaded
    copy of it does (not as the weights packed before SFT)."""
    import copy

    from imm.sft.precision import MasterWeights

    model, tok = copy.deepcopy(testbed[0]), testbed[1]
    prompts = questions(4)
    greedy = dict(max_new_tokens=12, decoder="slots", dtype="float32")
    complete(model, tok, prompts, **greedy)  # packs the weights before SFT
    before = packed(model, torch.float32)
    weights = MasterWeights(model, torch.bfloat16, stochastic=True, seed=0)
    with torch.no_grad():
        for m in weights.master:
            m.add_(torch.randn_like(m) * 0.05)  # a large update, so the greedy texts move
    weights.refresh()
    weights.finish()
    assert all(p._version == 0 for p in model.parameters())  # what the version check alone relied on
    after = packed(model, torch.float32)
    assert after is not before and torch.equal(after.norm, model.model.norm.weight)
    fresh = copy.deepcopy(model)
    assert complete(model, tok, prompts, **greedy) == complete(fresh, tok, prompts, **greedy)


def test_bfloat16_keeps_most_greedy_answers(testbed):
    """bf16 arithmetic on the testbed: most greedy answers as in float32 (the full comparison on SmolLM2
    is in bench/RESULTS.md)."""
    model, tok = testbed
    prompts = questions(8)
    kw = dict(n=1, temperatures=0.0, max_new_tokens=40, decoder="slots")
    f32 = complete(model, tok, prompts, dtype="float32", **kw)
    bf16 = complete(model, tok, prompts, dtype="bfloat16", **kw)
    same = sum(a == b for a, b in zip(f32, bf16)) / len(prompts)
    assert same >= 0.6, same
