"""The prepared GPU script, run as a later GPU session runs it, at its tiny CPU shape.

``python -m bench.gpu_run --device cpu --tiny`` builds the rehearsal, runs ``python -m imm.main``
(one IMM iteration, every stage) under the realistic length rule, and samples side by side; the
test reads its JSON lines as a reader of the GPU run would. No figure is asserted beyond "positive":
the numbers are the script's to print, not the test's to judge.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.sampling_side_by_side import StopRule

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("generate", "sft", "merge", "evaluate_base", "evaluate_sft", "evaluate_merged")
METHODS = ("generate_b4", "generate_b16", "imm_hf", "imm_hf_compiled")


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_run")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bench.gpu_run", "--device", "cpu", "--tiny", "--out", str(out)]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the script did not finish in 600 s; last output: {str(e.stdout)[-1500:]}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]


def test_every_stage_reports_its_device_time_and_throughput(lines):
    stages = {x["stage"]: x for x in lines if "stage" in x}
    assert set(STAGES) <= set(stages), sorted(stages)
    for name in STAGES:
        line = stages[name]
        assert line["device"] == "cpu" and line["wall_s"] > 0, line
        assert line.get("tokens_per_s", line.get("params_per_s", 0)) > 0, line
    assert "mfu" in stages["sft"] and 0 < stages["sft"]["mfu"] < 1 and stages["sft"]["tokens_per_s"] > 0
    gen = stages["generate"]
    assert gen["rows"] == 16 * 2 and gen["new_tokens"] > 0  # 16 questions × k 2
    rule = StopRule.parse("4,12,32")  # --tiny's realistic rule: rows end between floor and cap
    assert rule.floor <= gen["mean_new_tokens"] < rule.cap


def test_side_by_side_has_every_method_and_both_lengths(lines):
    got = {(x["compare"], x["lengths"]): x for x in lines if "compare" in x}
    best = max(("generate_b4", "generate_b16"), key=lambda m: got[m, "fixed"]["tokens_per_s"])
    methods = ("generate_b4", best, "imm_hf", "imm_hf_compiled")  # realistic: the first batch and the best
    assert {m for m, lengths in got if lengths == "fixed"} >= set(METHODS)
    for method in methods:
        for lengths in ("fixed", "realistic"):
            line = got[method, lengths]
            assert line["tokens_per_s"] > 0 and line["rows_per_batch"] > 0, line
    for method in methods:
        fixed = got[method, "fixed"]
        assert fixed["min_new"] == fixed["max_new"] == 16  # --tiny's fixed length: EOS never drawn before
        real = got[method, "realistic"]
        assert 4 <= real["min_new"] < real["mean_new"] < real["max_new"] <= 32, real  # lengths really vary
    assert got["imm_hf", "fixed"]["rows"] == 8 * 2  # every prompt × n


def test_stop_rule_forces_eos_at_the_cap_and_never_before_the_floor():
    rule = StopRule(floor=3, mean_tail=2, cap=6)
    last, current = torch.arange(64), torch.zeros(64)
    lengths = torch.arange(64) + 10
    assert (rule.eos_logit(last, 2, lengths, current) == float("-inf")).all()  # below the floor
    assert (rule.eos_logit(last, 6, lengths, current) > 0).all()  # the cap
    between = rule.eos_logit(last, 4, lengths, current) > 0
    assert 0 < int(between.sum()) < 64  # about one row in mean_tail ends here, not all, not none
    assert (StopRule.fixed(5).eos_logit(last, 4, lengths, current) == float("-inf")).all()
