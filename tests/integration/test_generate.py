"""Our batched decoding against transformers' generate, and the sampling contract of synthesize."""

import shutil
from pathlib import Path

import pytest
import torch

from imm.sampling.decode import sample_next
from imm.sampling import GenerateConfig, auto_batch_size, complete, synthesize
from imm.models import ModelConfig, load_model, load_tokenizer
from imm.data.world import problems


@pytest.fixture(scope="module")
def model_tok(tiny_model):
    return load_model(ModelConfig(path=str(tiny_model))), load_tokenizer(str(tiny_model))


def prompts(n=24):
    items = problems.make_split(problems.ID_FAMILY, "test", n, 0) + problems.make_split("ood_multistep", "test", n, 0)
    return [problems.format_prompt(i["question"]) for i in items]


@pytest.fixture(scope="module")
def testbed():
    """The shipped pretrained testbed model: it writes real, prompt-dependent solutions."""
    path = str(Path(__file__).resolve().parents[2] / "imm" / "assets" / "testbed")
    return load_model(ModelConfig(path=path)), load_tokenizer(path)


def family_prompts(n=4):
    """n questions of each family: prompts of 36 to 48 tokens, answers of 15 to 40."""
    items = [i for f in (problems.ID_FAMILY, *problems.OOD_FAMILIES) for i in problems.make_split(f, "test", n, 0)]
    return [problems.format_prompt(i["question"]) for i in items]


def test_greedy_equals_transformers_generate(testbed):
    """Left-padded batches of mixed prompt lengths; short answers end at EOS, long ones at the limit."""
    model, tok = testbed
    ps = family_prompts()
    ours = complete(model, tok, ps, max_new_tokens=30, batch_size=8, stops=(), at_answer=False)
    tok.padding_side = "left"
    lengths = {len(tok(p)["input_ids"]) for p in ps}
    order = sorted(range(len(ps)), key=lambda i: len(tok(ps[i])["input_ids"]))  # the same batches as ours
    by_index = {}
    for b in range(0, len(order), 8):
        idx = order[b:b + 8]
        enc = tok([ps[i] for i in idx], return_tensors="pt", padding=True, return_token_type_ids=False)
        out = model.generate(**enc, do_sample=False, max_new_tokens=30, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        for j, i in enumerate(idx):
            by_index[i] = tok.decode(out[j, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    ref = [by_index[i] for i in range(len(ps))]
    assert [o[0].strip() for o in ours] == ref
    assert all(o[0].startswith(" ") for o in ours)  # as written after the prompt: SFT joins it so
    assert len(lengths) > 5  # every batch mixes prompt lengths: padding is exercised
    assert len(set(ref)) == len(ref)  # each prompt its own answer
    assert any(r.endswith("The answer is " + r.split()[-1]) for r in ref)  # some ended at EOS ...
    assert any("The answer is" not in r for r in ref)  # ... and some ran into the 30-token limit


def test_rows_leave_the_batch_at_eos(model_tok):
    """Force EOS after 3 tokens on some rows: those end at 3 tokens, the others run to the limit."""
    model, tok = model_tok
    from imm.sampling.decode import decode

    enc = tok(prompts(2), return_tensors="pt", padding=True, return_token_type_ids=False)
    calls = []
    real_forward = model.forward

    def forward(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        calls.append(out.logits.shape[0])
        if len(calls) == 3:  # after the prefill and two steps, rows 0 and 2 must say EOS
            out.logits[[0, 2], -1, :] = -1e9
            out.logits[[0, 2], -1, tok.eos_token_id] = 1e9
        return out

    model.forward = forward
    try:
        ids = decode(model, tok, enc["input_ids"], enc["attention_mask"], n=1, temps=[0.0], max_new_tokens=10)
    finally:
        model.forward = real_forward
    assert [len(x) for x in ids] == [2, 10, 2, 10]
    assert calls[3:] == [2] * (len(calls) - 3)  # the finished rows left the batch


def test_synthesize_k_samples_over_temperatures(model_tok):
    model, tok = model_tok
    cfg = GenerateConfig(k=5, temperatures=[0.2, 0.6], max_new_tokens=12, batch_size=8)
    out = synthesize(model, tok, prompts(6), cfg, iteration=0)
    assert len(out) == 12 and all(len(g) == 5 for g in out)
    assert [s["temperature"] for s in out[0]] == [0.2, 0.6, 0.2, 0.6, 0.2]
    again = synthesize(model, tok, prompts(6), cfg, iteration=0)
    assert out == again  # seeded
    other = synthesize(model, tok, prompts(6), cfg, iteration=1)
    assert out != other


def test_sample_next_greedy_rows_and_top_p():
    logits = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0], [10.0, 9.9, -50.0]])
    g = torch.Generator().manual_seed(0)
    draws = [sample_next(logits, torch.tensor([0.0, 1e-3, 1.0]), 0.5, g).tolist() for _ in range(50)]
    assert all(d[0] == 1 and d[1] == 1 for d in draws)  # greedy row, and near-greedy temperature
    assert {d[2] for d in draws} == {0}  # top_p 0.5 keeps only the most likely token


def test_stop_strings_end_a_sample(testbed):
    """The model writes "=" mid-solution: each sample ends at its first "=" (cut from the text), and up to there
    it is the text the model writes without the stop string."""
    model, tok = testbed
    ps = family_prompts(2)
    full = complete(model, tok, ps, max_new_tokens=40, batch_size=8, stops=())
    stopped = complete(model, tok, ps, max_new_tokens=40, batch_size=8, stops=("=",))
    for (whole,), (cut,) in zip(full, stopped):
        assert "=" in whole and whole.index("=") < len(whole) - 1  # the stop string occurs mid-text
        assert cut == whole[:whole.index("=")].rstrip()  # cut at the stop string, which is not kept
    assert len({c[0] for c in stopped}) == len(ps)  # each prompt its own text up to the stop


def test_auto_batch_size(model_tok):
    model, _ = model_tok
    assert 1 <= auto_batch_size(model, 4, 200) <= 512 // 4


def test_row_sampling_processor_greedy_rows_and_top_p():
    from imm.sampling.decode_compiled import RowSampling

    scores = torch.tensor([[0.0, 5.0, 1.0], [10.0, 9.9, -50.0], [1.0, 0.5, 0.0]])
    out = RowSampling(torch.tensor([0.0, 1.0, 2.0]), 0.5)(None, scores)
    # row 0 greedy; row 1 keeps its top token (p > 0.5); row 2 at T=2 has p .42/.33/.25: two tokens reach 0.5
    assert torch.isfinite(out).tolist() == [[False, True, False], [True, False, False], [True, True, False]]
    full = RowSampling(torch.tensor([0.5, 2.0]), 1.0)(None, scores[:2])
    assert torch.allclose(full, scores[:2] / torch.tensor([[0.5], [2.0]]))


def test_until_eos_drops_eos_and_trailing_padding():
    from imm.sampling.decode_compiled import _until_eos

    assert _until_eos([5, 6, 1, 7, 0, 0], eos=1, pad=0) == [5, 6]
    assert _until_eos([5, 6, 7, 0, 0], eos=1, pad=0) == [5, 6, 7]  # ended at a stop string
    assert _until_eos([5, 6, 7], eos=1, pad=1) == [5, 6, 7]


needs_compiler = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")),
                                    reason="torch.compile on the CPU needs a C compiler")


@needs_compiler
def test_compiled_static_path_matches_row_dropping_loop(model_tok):
    """Greedy text is the same on both paths, with and without stop strings, over a short last batch;
    mixed greedy/sampled rows on the static path: greedy rows equal the greedy completion, seeded."""
    model, tok = model_tok
    ps = prompts(10)  # 20 prompts, batches of 8: the last batch is padded to 8 and cut back
    for stops in [(), ("=",)]:
        ours = complete(model, tok, ps, max_new_tokens=24, batch_size=8, stops=stops)
        static = complete(model, tok, ps, max_new_tokens=24, batch_size=8, stops=stops, compile=True)
        assert static == ours
    mixed = complete(model, tok, ps, n=2, temperatures=[0.0, 1.0], max_new_tokens=24, batch_size=4, seed=1,
                     stops=("=",), compile=True)
    greedy = complete(model, tok, ps, max_new_tokens=24, batch_size=8, stops=("=",))
    assert [m[0] for m in mixed] == [g[0] for g in greedy]
    assert mixed == complete(model, tok, ps, n=2, temperatures=[0.0, 1.0], max_new_tokens=24, batch_size=4, seed=1,
                             stops=("=",), compile=True)
    assert any(m[1] != m[0] for m in mixed)  # temperature 1 rows are sampled
    twice_greedy = complete(model, tok, ps[:4], n=2, temperatures=0.0, max_new_tokens=24, batch_size=4,
                            stops=("=",), compile=True)
    assert twice_greedy == [[g[0], g[0]] for g in greedy[:4]]


def test_compile_is_for_the_hf_backend():
    from imm.sampling.engine import EngineConfig

    with pytest.raises(ValueError, match="compile"):
        EngineConfig(backend="vllm", compile=True)


def test_auto_batch_size_is_sized_in_tokens(model_tok, monkeypatch):
    """The KV cache holds tokens: the longest prompt enters in tokens, not characters."""
    import imm.sampling

    model, tok = model_tok
    asked = []
    monkeypatch.setattr(imm.sampling, "auto_batch_size", lambda m, n, max_tokens: asked.append(max_tokens) or 4)
    ps = prompts(6)
    complete(model, tok, ps, max_new_tokens=10)
    longest = max(len(tok(p)["input_ids"]) for p in ps)
    assert asked == [longest + 10] and longest < max(map(len, ps))


def test_batch_for_memory_on_a_paper_shaped_model():
    """Qwen2.5-0.5B's shape in bf16: 12 KiB of KV cache a token; 768 tokens × 4 samples in 20 GB."""
    from transformers import Qwen2Config

    from imm.sampling import batch_for_memory, kv_bytes_per_token

    c = Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                    intermediate_size=4864, vocab_size=151936)
    assert kv_bytes_per_token(c, 2) == 2 * 24 * 2 * 64 * 2
    free = 80 * 10**9
    rows = int(free * 0.25 // (12288 * 768))
    assert batch_for_memory(c, 2, 4, 768, free, 4096) == rows // 4
    assert batch_for_memory(c, 2, 4, 768, free, 64) == 16  # the cap bounds the rows, not the prompts


def test_sample_next_known_hot_rows_draw_the_same():
    """Telling sample_next how many rows are hot (no device wait) changes no draw."""
    logits = torch.randn(6, 50)
    for temps in (torch.zeros(6), torch.full((6,), 0.7)):
        hot = int((temps > 0).sum())
        told = sample_next(logits, temps, 0.9, torch.Generator().manual_seed(3), hot_rows=hot)
        found = sample_next(logits, temps, 0.9, torch.Generator().manual_seed(3))
        assert told.tolist() == found.tolist()
