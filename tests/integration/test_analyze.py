"""Layer importance (Eq. 3) and weight change (Eq. 4): hand-computed values and the CLI."""

import csv
import math

import pytest
import torch
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from imm.analysis import cli as analyze
from imm.analysis.importance import importance_per_layer, plain_examples
from imm.models import ASSETS, load_tokenizer
from imm.analysis.weight_change import run_weight_change, shares, sft_steps, weight_change

TESTBED = ASSETS / "testbed"


def write_ckpt(path, tensors):
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"))
    return path


def hand_pair(tmp_path):
    a = {"model.layers.0.a.weight": torch.zeros(2, 2), "model.layers.0.b.weight": torch.ones(3),
         "model.layers.1.a.weight": torch.zeros(2, 2), "model.embed_tokens.weight": torch.zeros(4, 2)}
    b = {"model.layers.0.a.weight": torch.tensor([[3.0, 0.0], [0.0, 4.0]]),  # ‖·‖ = 5
         "model.layers.0.b.weight": torch.tensor([1.0, 3.0, 1.0]),  # ‖·‖ = 2
         "model.layers.1.a.weight": torch.tensor([[0.0, 1.0], [1.0, 0.0]]),  # ‖·‖ = √2
         "model.embed_tokens.weight": torch.ones(4, 2)}  # not in a layer: not counted
    return write_ckpt(tmp_path / "a", a), write_ckpt(tmp_path / "b", b)


def test_weight_change_is_the_sum_of_norms(tmp_path):
    a, b = hand_pair(tmp_path)
    change = weight_change(a, b)
    assert change == pytest.approx({0: 7.0, 1: math.sqrt(2)})
    assert sum(shares(change).values()) == pytest.approx(1.0)
    assert shares(change)[0] == pytest.approx(7 / (7 + math.sqrt(2)))


def test_weight_change_refuses_different_shapes(tmp_path):
    a, _ = hand_pair(tmp_path)
    c = write_ckpt(tmp_path / "c", {"model.layers.0.a.weight": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="different architectures|shape"):
        weight_change(a, c)


def test_run_steps_start_from_merge_or_previous_sft(tmp_path):
    for name, value in (("base", 0.0), ("sft1", 1.0), ("merge1", 0.5), ("sft2", 2.5), ("sft3", 4.5)):
        write_ckpt(tmp_path / name, {"model.layers.0.w": torch.full((2,), value)})
    steps = sft_steps(tmp_path, tmp_path / "base")
    assert [(i, s.name) for i, s, _ in steps] == [(1, "base"), (2, "merge1"), (3, "sft2")]
    changes = run_weight_change(tmp_path, tmp_path / "base")
    assert changes[1][0] == pytest.approx(math.sqrt(2) * 1.0)  # sft1 − base
    assert changes[2][0] == pytest.approx(math.sqrt(2) * 2.0)  # sft2 − merge1
    assert changes[3][0] == pytest.approx(math.sqrt(2) * 2.0)  # sft3 − sft2 (no merge2)


def test_weight_change_run_cli(tmp_path):
    run = tmp_path / "run"
    for name, value in (("sft1", 1.0), ("merge1", 0.5), ("sft2", 2.0)):
        write_ckpt(run / name, {"model.layers.0.w": torch.full((2,), value), "model.layers.1.w": torch.full((2,), value / 2)})
    write_ckpt(tmp_path / "base", {"model.layers.0.w": torch.zeros(2), "model.layers.1.w": torch.zeros(2)})
    (run / "config.yaml").write_text(f"model:\n  path: {tmp_path / 'base'}\n")
    analyze.main(["weight-change-run", str(run)])
    rows = list(csv.DictReader(open(run / "analysis" / "weight-change-run.csv")))
    assert [(r["iteration"], r["layer"]) for r in rows] == [("1", "0"), ("1", "1"), ("2", "0"), ("2", "1")]
    assert float(rows[0]["share"]) == pytest.approx(2 / 3)  # layer 0 moved twice as far as layer 1
    assert (run / "analysis" / "weight-change-run.png").stat().st_size > 0


def test_weight_change_cli(tmp_path):
    a, b = hand_pair(tmp_path)
    analyze.main(["weight-change", str(a), str(b), "--out", str(tmp_path / "out")])
    rows = list(csv.DictReader(open(tmp_path / "out" / "weight-change.csv")))
    assert [float(r["change"]) for r in rows] == pytest.approx([7.0, math.sqrt(2)])
    assert (tmp_path / "out" / "weight-change.png").is_file()


def tiny_model():
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg)


def examples(n=6):
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        ids = torch.randint(1, 50, (5 + i,), generator=g).tolist()
        out.append((ids, [-100] * 2 + ids[2:]))
    return out


def test_importance_nonnegative_and_zero_for_a_zeroed_layer():
    model = tiny_model()
    scores = importance_per_layer(model, examples(), pad_id=0, batch_size=4)
    assert sorted(scores) == [0, 1, 2] and all(v > 0 for v in scores.values())
    with torch.no_grad():
        for p in model.model.layers[1].parameters():
            p.zero_()
    scores = importance_per_layer(model, examples(), pad_id=0, batch_size=4)
    assert scores[1] == 0.0 and scores[0] > 0 and scores[2] > 0
    assert all(p.grad is None for p in model.parameters())  # gradients cleared afterwards


def test_importance_matches_eq3_by_hand():
    """One batch: I_n = Σ |∂L/∂W · W| over layer n's parameters, computed here directly."""
    from imm.sft.torch_loop import collate

    model = tiny_model()
    exs = examples(4)
    scores = importance_per_layer(model, exs, pad_id=0, batch_size=8)
    ids, labels, mask = collate(exs, list(range(4)), 0)
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    for n in range(3):
        expected = sum(float((p.grad * p.detach()).abs().sum()) for p in model.model.layers[n].parameters())
        assert scores[n] == pytest.approx(expected, rel=1e-5)


@pytest.mark.skipif(not (TESTBED / "config.json").is_file(), reason="testbed model not built")
@pytest.mark.parametrize("data", ["reasoning", "plain"])
def test_importance_cli_on_testbed(tmp_path, data):
    scores = analyze.main(["importance", "--model", str(TESTBED), "--data", data, "--n", "8", "--out", str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / f"importance-{data}.csv")))
    assert len(rows) == len(scores) > 0 and all(float(r["importance"]) > 0 for r in rows)
    assert sum(float(r["share"]) for r in rows) == pytest.approx(1.0)
    assert (tmp_path / f"importance-{data}.png").is_file()


def test_plain_examples_put_loss_on_every_token():
    if not (TESTBED / "tokenizer.json").is_file():
        pytest.skip("testbed tokenizer not built")
    tok = load_tokenizer(str(TESTBED))
    (ids, labels), = plain_examples(tok, ["Tom has 3 apples."])
    assert ids == labels and ids[-1] == tok.eos_token_id
