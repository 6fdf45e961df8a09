"""Guards of what would change results without failing anything else: each test fails on a one-line bug
in the place it names (report pooling, the overlap check, SFT padding labels, numeric grading, STaR's
restart, IIMM's scales on tensors outside the layers).

    python -m pytest tests/unit/test_silent_changes.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imm.data import Data, check_overlap
from imm.grading.answers import final_answer
from imm.grading.checks import check_numeric
from imm.loop import sft_start
from imm.merge.rules import MergeConfig, tensor_alpha_scale
from imm.methods import METHODS, MethodConfig
from imm.report.tables import RunRecord, alpha_table
from imm.sft.torch_loop import IGNORE, collate
from imm.stages import ModelRef


def run(run_id: str, alpha: str, ood: float, intervention: str = "none") -> RunRecord:
    return RunRecord(run_id, tags={"method": "imm", "alpha": alpha, "sft_intervention": intervention, "seed": "0"},
                     metrics={"eval/merged/ood": {3: ood}})


def test_the_alpha_table_keeps_an_intervention_run_out_of_its_cell():
    grid = alpha_table([run("a", "0.5", 0.6), run("b", "0.5", 0.2, "grad_clip"), run("c", "0.9", 0.4)])
    cells = {col: c.mean for (row, col), c in grid.cells.items() if row.startswith("ood")}
    assert cells == {"0.5": pytest.approx(0.6), "0.9": pytest.approx(0.4)}


def item(q: str) -> dict:
    return {"question": q, "answer": "1"}


def test_a_leak_planted_only_in_an_ood_set_is_refused():
    data = Data(train=[item("Tom has 3 apples. How many?"), item("Ann has 2 pens.")],
                tests={"gsm8k": [item("Fresh question one?")],
                       "svamp": [item("Other question?"), item("tom has 3 apples, how many")]},
                id_sets=["gsm8k"], ood_sets=["svamp"])
    with pytest.raises(ValueError, match="svamp"):
        check_overlap(data, "error")
    assert data.overlap == {"gsm8k": 0, "svamp": 1}


def test_padding_never_carries_a_label():
    examples = [([5, 6, 7, 8, 9], [IGNORE, IGNORE, 7, 8, 9]), ([5, 6, 7], [IGNORE, 6, 7])]
    ids, labels, mask = collate(examples, [0, 1], pad_id=0)
    assert labels[1].tolist() == [IGNORE, 6, 7, IGNORE, IGNORE]  # the short row's padding is ignored by the loss
    assert mask[1].tolist() == [1, 1, 1, 0, 0] and ids[1].tolist() == [5, 6, 7, 0, 0]
    assert labels[0].tolist() == [IGNORE, IGNORE, 7, 8, 9]


@pytest.mark.parametrize("text", ["The answer is x = 3 + 4 = 7.", "So x = 3 + 4 = 7\nThe answer is x = 3 + 4 = 7"])
def test_a_chained_equation_is_graded_by_its_last_value(text):
    answer = final_answer(text)
    assert check_numeric(answer, {"answer": "7"}) and not check_numeric(answer, {"answer": "3"})


BASE, SAMPLER = ModelRef("base", Path("b")), ModelRef("sampler", Path("s"))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_only_star_restarts_sft_from_the_base_model(name):
    expected = BASE if name == "star" else SAMPLER
    assert sft_start(MethodConfig(name=name), BASE, SAMPLER) is expected


def test_iimm_scales_layers_and_leaves_tensors_outside_them_at_one():
    cfg, scales = MergeConfig(), {0: 1.6, 1: 0.4}
    assert tensor_alpha_scale(cfg, "model.layers.0.mlp.up_proj.weight", 2, scales) == (cfg.alpha, 1.6 * cfg.lam)
    assert tensor_alpha_scale(cfg, "model.layers.1.self_attn.q_proj.weight", 2, scales) == (cfg.alpha, 0.4 * cfg.lam)
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert tensor_alpha_scale(cfg, name, 2, scales) == (cfg.alpha, cfg.lam)
