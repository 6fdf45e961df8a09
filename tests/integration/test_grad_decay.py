"""The gradient-decay intervention scales epoch e's steps by γ^e from epoch e's first step on."""

import math

from imm import sft
from imm.data.world import problems
from imm.models import ModelConfig, load_model, load_tokenizer


def lrs(tiny_model, intervention: str) -> list[float]:
    rows = [{"question": i["question"], "response": i["solution"]}
            for i in problems.make_split(problems.ID_FAMILY, "train", 20, 0)]
    model, tok = load_model(ModelConfig(path=str(tiny_model))), load_tokenizer(str(tiny_model))
    cfg = sft.SFTConfig(epochs=3, lr=1e-3, batch_size=8, warmup_ratio=0.2, intervention=intervention)
    return sft.train(model, tok, rows, problems.format_prompt, cfg, 0)["lrs"]


def test_decay_factor_is_in_place_from_each_epochs_first_step(tiny_model):
    plain, decayed = lrs(tiny_model, "none"), lrs(tiny_model, "grad_decay")
    per_epoch = math.ceil(20 / 8)  # 3 steps an epoch, 9 in all
    print("\nstep epoch  lr (plain)   lr (grad_decay)  ratio")
    for s, (a, b) in enumerate(zip(plain, decayed)):
        print(f"{s:>4} {s // per_epoch:>5}  {a:.3e}    {b:.3e}       {b / a if a else float('nan'):.3f}")
    assert len(plain) == len(decayed) == 3 * per_epoch
    # the plain schedule: linear warm-up over int(0.2 * 9) = 1 step, then linear decay to 0
    assert plain == [1e-3 * s / 1 if s < 1 else 1e-3 * (9 - s) / 8 for s in range(9)]
    for s, (a, b) in enumerate(zip(plain, decayed)):
        assert math.isclose(b, a * 0.9 ** (s // per_epoch), rel_tol=1e-12), s
    # the first step of epoch 1 already carries γ (before the fix it carried epoch 0's factor 1)
    assert math.isclose(decayed[per_epoch] / plain[per_epoch], 0.9)
    assert math.isclose(decayed[2 * per_epoch] / plain[2 * per_epoch], 0.81)
