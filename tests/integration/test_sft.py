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
