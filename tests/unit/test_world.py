"""The testbed world: problem families, splits, gold solutions, tokenizer and the shipped model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from imm.grading.answers import final_answer
from imm.grading.checks import grade
from imm.data.world import problems
from imm.data.world.problems import (
    FAMILIES, GAIN_VERBS, ID_FAMILY, LOSS_VERBS, OOD_FAMILIES, PROMPT_TEMPLATE, format_prompt, make_split, render,
    sample_problems, split_of,
)

ASSETS = Path(__file__).resolve().parents[2] / "imm" / "assets" / "testbed"
ALL = (ID_FAMILY, *OOD_FAMILIES)
EQ = re.compile(r"(\d+(?: [-+*] \d+)+) = (\d+)")


def _eval_chain(expr: str) -> int:
    """Left-to-right value of "a op b op c" (products only ever come first in this world)."""
    toks = expr.split()
    v = int(toks[0])
    for op, x in zip(toks[1::2], toks[2::2]):
        v = {"+": v + int(x), "-": v - int(x), "*": v * int(x)}[op]
    return v


@pytest.fixture(scope="module")
def tok():
    from imm.data.world.tokenizer import build_tokenizer
    return build_tokenizer()


def test_registry():
    assert ID_FAMILY in FAMILIES and ID_FAMILY not in OOD_FAMILIES
    assert len(OOD_FAMILIES) >= 3 and set(OOD_FAMILIES) <= set(FAMILIES)
    assert format_prompt("Q?") == PROMPT_TEMPLATE.format(question="Q?")
    assert format_prompt("Q?") == "Question: Q?\nAnswer: Let's think step by step."
    with pytest.raises(KeyError):
        make_split("nope", "train", 1, 0)
    with pytest.raises(ValueError):
        make_split(ID_FAMILY, "dev", 1, 0)


@pytest.mark.parametrize("family", ALL)
def test_make_split_deterministic_and_seeded(family):
    a = make_split(family, "train", 40, 0)
    assert a == make_split(family, "train", 40, 0)
    b = make_split(family, "train", 40, 1)
    assert [i["question"] for i in a] != [i["question"] for i in b]
    assert len({i["question"] for i in a}) == 40
    assert all(set(i) == {"question", "answer", "solution", "family"} and i["family"] == family
               for i in a)


@pytest.mark.parametrize("family", ALL)
def test_splits_disjoint(family):
    qs = {s: {i["question"] for i in make_split(family, s, 300, seed)}
          for s, seed in (("test", 0), ("train", 0), ("pretrain", 0))}
    more_train = {i["question"] for seed in (1, 2) for i in make_split(family, "train", 300, seed)}
    assert not qs["test"] & (qs["train"] | qs["pretrain"] | more_train)
    assert not qs["train"] & qs["pretrain"]
    assert all(split_of(q) == "test" for q in qs["test"])


@pytest.mark.parametrize("family", ALL)
def test_gold_solutions_are_right(family):
    for it in make_split(family, "test", 150, 0):
        sol = it["solution"]
        m = re.search(r"The answer is (-?\d+)\.$", sol)
        assert m and m.group(1) == it["answer"], sol
        assert sol.count("The answer is") == 1
        eqs = EQ.findall(sol)
        assert eqs, sol
        for lhs, rhs in eqs:
            assert _eval_chain(lhs) == int(rhs), sol
        assert int(eqs[-1][1]) == int(it["answer"])
        assert int(it["answer"]) >= 0
        assert final_answer(sol) == it["answer"]


def test_styles_diverse_and_shortcuts_render():
    p = sample_problems(ID_FAMILY, "train", 1, 3)[0]
    full = {render(p, s) for s in problems.FULL_STYLES}
    assert len(full) == len(problems.FULL_STYLES)
    merged, direct = render(p, "merged"), render(p, "direct")
    assert direct == f"The answer is {p.answer}."
    (lhs, rhs), = EQ.findall(merged)
    assert len(lhs.split()) == 5 and _eval_chain(lhs) == p.answer == int(rhs)
    golds = {it["solution"].split()[0] for it in make_split(ID_FAMILY, "train", 60, 0)}
    assert len(golds) >= 3  # gold styles vary with the seed
    with pytest.raises(ValueError):
        render(p, "bogus")


def test_families_differ_in_difficulty():
    mult = sample_problems("ood_mult", "test", 50, 0)
    assert all(len(p.start) == 2 for p in mult)
    steps = sample_problems("ood_multistep", "test", 50, 0)
    assert all(len(p.ops) in (3, 4) for p in steps)
    idp = sample_problems(ID_FAMILY, "test", 50, 0)
    assert all(len(p.ops) == 2 and max(x for _, x in p.ops) <= 9 for p in idp)
    wording = sample_problems("ood_wording", "test", 50, 0)
    assert max(x for p in wording for _, x in p.ops) >= 10


def test_tokenizer_digits_and_round_trip(tok):
    for d in "0123456789":
        assert len(tok.tokenize(d)) == 1
    ids = tok(" The answer is 1234.")["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["1", "2", "3", "4"]
    assert tok.unk_token_id not in ids
    for fam in ALL:
        for it in make_split(fam, "test", 30, 0):
            text = format_prompt(it["question"]) + " " + it["solution"]
            ids = tok(text)["input_ids"]
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == text
            assert len(ids) < 130
            dec = tok.decode(tok(" " + it["solution"])["input_ids"] + [tok.eos_token_id],
                             skip_special_tokens=True)
            assert grade(dec, it)
    assert (tok.pad_token, tok.eos_token, tok.unk_token) == ("<pad>", "<eos>", "<unk>")
    assert tok.pad_token_id != tok.eos_token_id


def test_tokenizer_save_load(tok, tmp_path):
    from imm.data.world.tokenizer import load_tokenizer
    tok.save_pretrained(tmp_path)
    t2 = load_tokenizer(tmp_path)
    text = format_prompt("Tom has 12 pens.") + " 12 + 7 = 19. The answer is 19."
    assert t2(text)["input_ids"] == tok(text)["input_ids"]
    assert t2.decode(t2(text)["input_ids"]) == text


@pytest.mark.skipif(not (ASSETS / "model.safetensors").exists(), reason="assets not built")
def test_shipped_model_loads_and_answers():
    import torch
    from transformers import Qwen2ForCausalLM

    from imm.data.world.tokenizer import load_tokenizer

    tok = load_tokenizer(ASSETS)
    model = Qwen2ForCausalLM.from_pretrained(ASSETS)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, cfg.intermediate_size) == (128, 4, 4, 2, 512)
    assert cfg.vocab_size == len(tok) and cfg.eos_token_id == tok.eos_token_id
    n = sum(p.numel() for p in model.parameters())
    assert 0.8e6 < n < 1.3e6
    size = sum(f.stat().st_size for f in ASSETS.iterdir())
    assert size < 10 * 2**20
    rec = json.loads((ASSETS / "pretrain.json").read_text())
    assert set(rec["test_accuracy"]) == set(ALL)
    assert 0.25 <= rec["test_accuracy"][ID_FAMILY] <= 0.6
    # greedy completions of a few ID test prompts parse to an answer
    torch.set_num_threads(1)
    items = make_split(ID_FAMILY, "test", 6, 0)
    tok.padding_side = "left"
    enc = tok([format_prompt(i["question"]) for i in items], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=48, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert sum(final_answer(t) is not None for t in texts) >= 4


# ----------------------------------------------------------------------------- the second world

V2_ID, V2_OOD = problems.WORLDS["testbed_v2"]


def test_worlds_registry_and_configs():
    assert problems.WORLDS["testbed"] == (ID_FAMILY, OOD_FAMILIES)  # the shipped default
    for id_family, ood in problems.WORLDS.values():
        assert id_family in FAMILIES and set(ood) <= set(FAMILIES) and id_family not in ood
    import yaml
    conf = Path(__file__).resolve().parents[2] / "conf"
    ds = yaml.safe_load((conf / "dataset" / "testbed_v2.yaml").read_text())
    assert (ds["kind"], ds["id_sets"], tuple(ds["ood_sets"])) == ("testbed", [V2_ID], V2_OOD)


def test_shipped_world_unchanged():
    """Adding families must not move a single question of the shipped world (or its vocabulary)."""
    import hashlib
    blob = json.dumps([make_split(f, "test", 50, 0) for f in ALL]).encode()
    assert hashlib.sha256(blob).hexdigest()[:16] == "ca537ac27f4b2ff1"
    assert problems.TOKENIZER_FAMILIES == ALL


@pytest.mark.skipif(not (ASSETS / "tokenizer.json").exists(), reason="assets not built")
def test_tokenizer_build_matches_shipped(tok):
    from imm.data.world.tokenizer import load_tokenizer
    assert tok.get_vocab() == load_tokenizer(ASSETS).get_vocab()
    for it in make_split(V2_ID, "test", 50, 0):  # the new family needs no new word
        assert tok.unk_token_id not in tok(format_prompt(it["question"]) + " " + it["solution"])["input_ids"]


def test_balanced_family_shortcut_pays_on_id_only():
    """"Copy the start" (the bare answer) is right on ~half the v2 ID items, rarely on OOD ones."""
    from imm.data.world.steps import check_steps

    def copy_rate(family):
        ps = sample_problems(family, "test", 300, 0)
        return sum(p.answer == p.start[0] for p in ps) / len(ps)

    assert 0.4 <= copy_rate(V2_ID) <= 0.6
    assert copy_rate(ID_FAMILY) < 0.2
    assert all(copy_rate(f) < 0.1 for f in V2_OOD)
    items = make_split(V2_ID, "test", 200, 0)
    balanced = [(p, it) for p, it in zip(sample_problems(V2_ID, "test", 200, 0), items)
                if [x for _, x in p.ops][0] == [x for _, x in p.ops][1]]
    assert len(balanced) >= 80
    for p, it in balanced:
        assert it["answer"] == str(p.start[0])
        assert check_steps(f"The answer is {p.start[0]}.", it) == "shortcut"
        assert check_steps(render(p, "merged"), it) == "sound"  # every operation, one equation
        assert check_steps(render(p, "steps"), it) == "sound"
    assert make_split(V2_ID, "train", 40, 0) == make_split(V2_ID, "train", 40, 0)


def test_balanced_family_gold_and_disjoint():
    for it in make_split(V2_ID, "test", 150, 0):
        (lhs, rhs), *_ = EQ.findall(it["solution"]) or [(None, None)]
        assert lhs is not None and _eval_chain(lhs) == int(rhs)
        assert final_answer(it["solution"]) == it["answer"]
    test = {i["question"] for i in make_split(V2_ID, "test", 300, 0)}
    train = {i["question"] for i in make_split(V2_ID, "train", 300, 0)}
    assert not test & train and all(split_of(q) == "test" for q in test)


def test_coverage_control_covers_ood_ranges_and_steps(tok):
    """id_wide: the ID wording and operations with the OOD families' step counts and starts."""
    from imm.data.world.steps import check_steps

    wide = sample_problems("id_wide", "train", 600, 0)
    ood = [p for f in ("ood_wording", "ood_multistep") for p in sample_problems(f, "train", 300, 0)]
    assert {len(p.ops) for p in wide} == {2, 3, 4} >= {len(p.ops) for p in ood}
    changes = [x for p in wide for _, x in p.ops]
    multistep_changes = [x for p in ood[300:] for _, x in p.ops]
    assert (min(changes), max(changes)) == (min(multistep_changes), max(multistep_changes)) == (1, 9)
    assert max(p.start[0] for p in wide) >= max(p.start[0] for p in ood)
    assert all(len(p.start) == 1 and {s for s, _ in p.ops} == {"+", "-"} and p.answer >= 0 for p in wide)
    id_verbs = {v.split()[0] for v in GAIN_VERBS + LOSS_VERBS}
    assert all(re.search(rf"\b{p.pronoun.capitalize()} ({'|'.join(id_verbs)})\b", p.question) for p in wide)
    items = make_split("id_wide", "test", 200, 0)
    assert all(check_steps(it["solution"], it) == "sound" for it in items)
    assert all(tok.unk_token_id not in tok(format_prompt(it["question"]) + " " + it["solution"])["input_ids"]
               for it in items)
    assert not {i["question"] for i in items} & {i["question"] for i in make_split("id_wide", "train", 300, 0)}
