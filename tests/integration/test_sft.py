"""SFT: response-only labels, length-grouped batches, the loss going down, and a NaN stopping the run."""

import math
import random

import pytest

from imm import sft
from imm.models import ModelConfig, load_model, load_tokenizer
from imm.data.world import problems


@pytest.fixture()
def model_tok(tiny_model):
    return load_model(ModelConfig(path=str(tiny_model))), load_tokenizer(str(tiny_model))


def rows(n=64):
    return [{"question": i["question"], "response": i["solution"]}
            for i in problems.make_split(problems.ID_FAMILY, "train", n, 0)]


def test_labels_cover_the_response_only(model_tok):
    _, tok = model_tok
    prompt = problems.format_prompt("Tom has 3 apples. How many?")
    ids, labels = sft.encode(tok, prompt, "3 = 3. The answer is 3.")
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [sft.IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n_prompt:-1]).strip() == "3 = 3. The answer is 3."


def test_length_grouped_batches_have_little_padding(model_tok):
    _, tok = model_tok
    examples = [sft.encode(tok, problems.format_prompt(r["question"]), r["response"]) for r in rows(256)]
    chunks = sft.batches(examples, 16, random.Random(0))
    assert sorted(i for c in chunks for i in c) == list(range(256))  # every example once
    real = sum(len(examples[i][0]) for c in chunks for i in c)
    padded = sum(len(c) * max(len(examples[i][0]) for i in c) for c in chunks)
    assert 1 - real / padded < 0.05


def test_loss_goes_down_and_stats(model_tok):
    model, tok = model_tok
    stats = sft.train(model, tok, rows(), problems.format_prompt, sft.SFTConfig(epochs=3, lr=3e-3, batch_size=8), 0)
    assert stats["loss"] < stats["first_loss"] - 0.5
    assert stats["steps"] == 3 * math.ceil(64 / 8)
    assert 0 <= stats["pad_share"] < 0.1


def test_nan_loss_raises(model_tok):
    model, tok = model_tok
    with pytest.raises(FloatingPointError, match="SFT loss became"):
        sft.train(model, tok, rows(32), problems.format_prompt,
                  sft.SFTConfig(epochs=3, lr=1e30, batch_size=8, max_grad_norm=0.0), 0)


@pytest.mark.parametrize("how", ["grad_decay", "grad_clip", "weight_mask"])
def test_interventions_change_training(model_tok, how, tiny_model):
    """Each SFT intervention of the paper's Table 5 trains a model different from plain SFT."""
    import torch

    from imm.models import ModelConfig, load_model, weights

    def trained(intervention):
        model = load_model(ModelConfig(path=str(tiny_model)))
        cfg = sft.SFTConfig(epochs=3, lr=3e-3, batch_size=8, intervention=intervention,
                            intervention_value=0.05 if intervention == "grad_clip" else 0.0)
        stats = sft.train(model, model_tok[1], rows(32), problems.format_prompt, cfg, 0)
        return weights(model), stats

    base = weights(load_model(ModelConfig(path=str(tiny_model))))
    plain, _ = trained("none")
    changed, stats = trained(how)
    assert any(not torch.equal(plain[k], changed[k]) for k in plain)
    moved = sum(float((changed[k] - base[k]).norm()) for k in base)
    assert moved < sum(float((plain[k] - base[k]).norm()) for k in base)  # each one restrains the update
    if how == "weight_mask":
        assert abs(stats["kept_share"] - 0.3) < 0.01
        share = sum(int((changed[k] != base[k]).sum()) for k in base) / sum(t.numel() for t in base.values())
        assert share <= 0.31


def test_intervention_config_checks():
    with pytest.raises(ValueError, match="sft.intervention"):
        sft.SFTConfig(intervention="dropout")
    with pytest.raises(ValueError, match="needs sft.backend=torch"):
        sft.SFTConfig(intervention="grad_clip", backend="trl")


def one_step(tiny_model, tok, amp=None, weights_dtype="float32"):
    """Weights before and after one AdamW step at the paper's lr 2e-5 on a bf16 checkpoint's values."""
    import torch

    from imm.models import weights

    model = load_model(ModelConfig(path=str(tiny_model), dtype="bfloat16")).to(getattr(torch, weights_dtype))
    before = {k: v.float() for k, v in weights(model).items()}
    cfg = sft.SFTConfig(epochs=1, lr=2e-5, batch_size=16, warmup_ratio=0.0)
    sft.train(model, tok, rows(16), problems.format_prompt, cfg, 0, amp=amp)
    return before, {k: v.float() for k, v in weights(model).items()}


def update_error(tiny_model, tok, **how) -> tuple[float, float]:
    """(share of weights the step changed, relative error of the update vs the fp32 reference step)."""
    import torch

    before, ref = one_step(tiny_model, tok)  # fp32 weights, fp32 compute
    before_b, after = one_step(tiny_model, tok, **how)
    assert all(torch.equal(before[k], before_b[k]) for k in before)
    d_ref = torch.cat([(ref[k] - before[k]).flatten() for k in before])
    d = torch.cat([(after[k] - before[k]).flatten() for k in before])
    return float((d != 0).float().mean()), float((d - d_ref).norm() / d_ref.norm())


def test_mixed_precision_step_moves_weights_as_fp32_does(model_tok, tiny_model):
    """fp32 master weights under bf16 autocast take the fp32 step (within 10%: the bf16 forward changes
    the gradient a little); bf16 weights updated in place lose most of it to rounding."""
    tok = model_tok[1]
    changed, err = update_error(tiny_model, tok, amp="bfloat16")
    naive_changed, naive_err = update_error(tiny_model, tok, weights_dtype="bfloat16")
    print(f"\nbf16 weights updated directly: {naive_changed:.1%} of weights changed, relative error {naive_err:.3f}"
          f"\nfp32 master + bf16 autocast:   {changed:.1%} of weights changed, relative error {err:.3f}")
    assert changed > 0.95 and err < 0.1
    assert naive_err > 0.5  # what the mixed precision is for


def test_fine_tune_stores_the_checkpoint_dtype_and_trains_fp32(tiny_model, model_tok, tmp_path):
    import torch

    tok = model_tok[1]
    cfg = ModelConfig(path=str(tiny_model), dtype="bfloat16", device="cpu")
    seen = []
    real_train = sft.train

    def spy(model, *a, **kw):
        seen.append((next(model.parameters()).dtype, kw.get("amp")))
        return real_train(model, *a, **kw)

    sft.train = spy
    try:
        net, stats = sft.fine_tune(lambda: load_model(cfg), tiny_model, tok, rows(16), problems.format_prompt,
                                   sft.SFTConfig(epochs=1, lr=2e-5, batch_size=8), 0, tmp_path, "bfloat16", "cpu")
    finally:
        sft.train = real_train
    assert seen == [(torch.float32, "bfloat16")]
    assert next(net.parameters()).dtype == torch.bfloat16 and stats["device"] == "cpu"
    assert next(load_model(cfg, str(tmp_path / "model")).parameters()).dtype == torch.bfloat16


def test_global_batch_sets_the_accumulation():
    cfg = sft.SFTConfig(batch_size=4, global_batch=128)
    assert (cfg.accumulation(1), cfg.accumulation(8), sft.SFTConfig(grad_accum=3).accumulation(8)) == (32, 4, 3)
    with pytest.raises(ValueError, match="not a multiple"):
        cfg.accumulation(3)


def test_global_batch_in_the_stats(model_tok):
    model, tok = model_tok
    stats = sft.train(model, tok, rows(32), problems.format_prompt, sft.SFTConfig(epochs=1, batch_size=4,
                                                                                   global_batch=16), 0)
    assert stats["global_batch"] == 16 and stats["steps"] == 2 and stats["device"] == "cpu"
