"""merge.schedule: which rounds merge and from which θ_prev (the loop, with its stages stubbed), the
pull of the steps schedule against its formula in float64, and the stage keys the schedules share."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from imm import loop, stages
from imm.config import Config, RunConfig
from imm.merge.mask import DareMask, tensor_seed
from imm.merge.rules import MergeConfig
from imm.merge.schedule import StepPull, merges_after, pull_weight
from imm.methods import MethodConfig
from imm.sft.config import SFTConfig
from imm.store import digest

REF = stages.ModelRef("start", Path("unused"))


def job(schedule: str, iterations: int = 3) -> Config:
    return Config(merge=MergeConfig(schedule=schedule), run=RunConfig(iterations=iterations))


class Recorder:
    """Stands in for the stages: records each call's models and returns refs named by their inputs."""

    def __init__(self):
        self.calls: list[tuple] = []

    def install(self, monkeypatch, tmp_path):
        ref = lambda key: stages.ModelRef(key, tmp_path)  # noqa: E731
        items = [{"set": "a", "index": 0, "right": True}]
        data = SimpleNamespace(tests={"a": []}, id_sets=["a"], ood_sets=[], overlap={}, train=[])
        monkeypatch.setattr(loop, "load_data", lambda cfg: data)
        monkeypatch.setattr(loop, "load_tokenizer", lambda path: None)
        monkeypatch.setattr(stages, "base_ref", lambda cfg, teacher=False: ref("base"))
        monkeypatch.setattr(stages, "evaluate_stage", lambda ctx, m: ({"id": 0.5, "ood": 0.5}, items))
        y = {"kept": 1, "sampled": 1, "yield": 1.0, "covered": 1, "questions": 1}
        monkeypatch.setattr(stages, "synthesize_stage", lambda ctx, m, t: self.note("sample", m.key) or (f"k{t}", [{}], y))
        monkeypatch.setattr(stages, "trainset_stage", lambda ctx, hist: ("data", [{}]))
        monkeypatch.setattr(stages, "divergence_stage", lambda ctx, base, m, items: {"id/kl_forward": len(m.key)})

        def sft(ctx, start, data, rows, t, pull_to=None):
            self.note("sft", start.key, pull_to and pull_to.key)
            return ref(f"sft{t}"), {}

        def merge(ctx, base, prev, tuned, scales, t):
            self.note("merge", prev.key, tuned.key)
            return ref(f"merge{t}"), {}

        monkeypatch.setattr(stages, "sft_stage", sft)
        monkeypatch.setattr(stages, "merge_stage", merge)

    def note(self, *call):
        self.calls.append(call)


class Tracker:
    def __getattr__(self, name):
        return lambda *a, **k: None


@pytest.mark.parametrize("schedule,calls", [
    ("round", [("sample", "base"), ("sft", "base", None), ("merge", "base", "sft0"),
               ("sample", "merge0"), ("sft", "merge0", None), ("merge", "merge0", "sft1")]),
    ("final", [("sample", "base"), ("sft", "base", None),
               ("sample", "sft0"), ("sft", "sft0", None), ("merge", "base", "sft1")]),
    ("steps", [("sample", "base"), ("sft", "base", "base"), ("sample", "sft0"), ("sft", "sft0", "base")]),
])
def test_schedule_decides_when_the_loop_merges_and_from_what(monkeypatch, tmp_path, schedule, calls):
    rec = Recorder()
    rec.install(monkeypatch, tmp_path)
    store = SimpleNamespace(executed=[], reused=[])
    result = loop.run(job(schedule, iterations=2), Tracker(), tmp_path, store)
    assert rec.calls == calls
    assert [label for label, _ in result.rows][-1] == ("SFT 2" if schedule == "steps" else "Merge 2")
    # every evaluated model after the base carries its KL to the base and its transitions
    assert "id/kl_forward" not in result.rows[0][1]
    assert all({"id/kl_forward", "id/forgotten", "id/forgotten_adj"} <= m.keys() for _, m in result.rows[1:])


def test_merges_after_and_pull_weight():
    cfg = MergeConfig(schedule="final")
    assert [merges_after(cfg, t, 3) for t in range(3)] == [False, False, True]
    assert all(merges_after(MergeConfig(), t, 3) for t in range(3))
    beta = pull_weight(MergeConfig(alpha=0.5, schedule="steps"), pulls=4)
    assert 1 - (1 - beta) ** 4 == pytest.approx(0.5)  # four pulls weigh θ by α together
    assert pull_weight(MergeConfig(beta=0.2, schedule="steps"), pulls=4) == 0.2


def test_other_schedules_need_a_merging_method_and_steps_the_torch_trainer():
    with pytest.raises(ValueError, match="merge.schedule=final needs a merging method"):
        Config(method=MethodConfig(name="vanilla"), merge=MergeConfig(schedule="final"))
    with pytest.raises(ValueError, match="sft.backend=torch"):
        Config(merge=MergeConfig(schedule="steps"), sft=SFTConfig(backend="trl"))


# ---- the steps schedule's pull ---------------------------------------------------------------------

def model_and_base(tmp_path):
    """A module whose parameters carry checkpoint names, and a base checkpoint for it."""
    net = torch.nn.Module()
    net.model = torch.nn.Module()
    net.model.layers = torch.nn.ModuleList([torch.nn.Linear(5, 4), torch.nn.Linear(4, 3)])
    g = torch.Generator().manual_seed(0)
    base = {n: torch.randn(p.shape, generator=g) for n, p in net.named_parameters()}
    (tmp_path / "base").mkdir()
    save_file(base, str(tmp_path / "base" / "model.safetensors"))
    return net, base


def set_weights(net, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return {n: p.detach().clone().double() for n, p in net.named_parameters()}


@pytest.mark.parametrize("name,p", [("task_arithmetic", 0.0), ("dare_linear", 0.3)])
def test_pull_matches_float64_reference(tmp_path, name, p):
    """Every ``every`` steps θ ← β·θ_base + (1−β)·(θ_a + U(θ_now − θ_a)), θ_a the weights at the last
    pull; task arithmetic: (1−β)·θ_now + β·θ_base (Soup to go). Off-schedule steps leave θ alone."""
    net, base = model_and_base(tmp_path)
    cfg = MergeConfig(name=name, p=p, schedule="steps", every=2, beta=0.25, seed=3)
    pull = StepPull(cfg, tmp_path / "base", iteration=1)
    anchor = set_weights(net, 1)
    pull(net, 0, 8)
    for k, step in enumerate((2, 4)):
        now = set_weights(net, 10 + step)
        pull(net, step - 1, 8)  # off schedule: nothing happens
        assert all(torch.equal(p.double(), now[n]) for n, p in net.named_parameters())
        pull(net, step, 8)
        for n, got in net.named_parameters():
            keep = 1.0
            if p:
                keep = (DareMask(tensor_seed(3, 1 * 100_000 + k, n)).multipliers(got.numel(), p) != 0).double()
                keep = keep.view(got.shape) / (1 - p)
            ref = 0.25 * base[n].double() + 0.75 * (anchor[n] + keep * (now[n] - anchor[n]))
            assert torch.allclose(got.double(), ref, rtol=0, atol=1e-5), n
        anchor = {n: p.detach().clone().double() for n, p in net.named_parameters()}
    assert pull.stats() == {"pulls": 2, "pull_beta": 0.25}


def test_a_round_too_short_to_pull_is_named(tmp_path, caplog):
    """A round with fewer optimizer steps than merge.every is not pulled at all: the log says so."""
    net, _ = model_and_base(tmp_path)
    before = set_weights(net, 1)
    pull = StepPull(MergeConfig(name="task_arithmetic", schedule="steps", every=8), tmp_path / "base", iteration=0)
    with caplog.at_level("WARNING"):
        for step in range(3):
            pull(net, step, 2)
    assert "round 1 has 2 optimizer steps, fewer than merge.every=8" in caplog.text
    assert pull.stats()["pulls"] == 0
    assert all(torch.equal(p.double(), before[n]) for n, p in net.named_parameters())
    caplog.clear()
    StepPull(MergeConfig(name="task_arithmetic", schedule="steps", every=2), tmp_path / "base", 0)(net, 0, 2)
    assert "fewer than" not in caplog.text


# ---- stage keys: what the schedules share -----------------------------------------------------------

def test_schedule_settings_leave_sft_and_merge_keys_alone_unless_they_pull():
    default, final = Config(), Config(merge=MergeConfig(schedule="final", every=3))
    base = stages.ModelRef("base", Path("unused"))
    for fields in (lambda c: stages.sft_fields(c, REF, "d", 0),
                   lambda c: stages.merge_fields(c, base, base, REF, None, 0)):
        assert digest(fields(default)) == digest(fields(final))
    # the merge key of the default job is the one stored before schedules existed
    old = {"name": "dare_linear", "alpha": 0.5, "p": 0.1, "seed": 0, "lam": 1.0, "alpha_schedule": "ramp",
           "alpha_last": 0.5, "alpha_by_layer": [], "exclude": [], "exclude_from": "sft"}
    assert stages.merge_fields(default, base, base, REF, None, 0)["merge"] == old
    steps = Config(merge=MergeConfig(schedule="steps"))
    pulled = digest(stages.sft_fields(steps, REF, "d", 0, base))
    assert pulled != digest(stages.sft_fields(steps, REF, "d", 0))
    assert pulled != digest(stages.sft_fields(Config(merge=MergeConfig(schedule="steps", beta=0.1)), REF, "d", 0, base))
    assert pulled != digest(stages.sft_fields(Config(merge=MergeConfig(schedule="steps", every=3)), REF, "d", 0, base))
