"""A CPU_RATES row from a finished job (imm/plan/calibrate.py), on a job folder and log written by hand, and
the plan that row gives for that job: its wall time back.

    python -m pytest tests/unit/test_plan_calibrate.py
"""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from imm.plan import throughput
from imm.plan.calibrate import measure
from imm.plan.job import Resources
from imm.plan.throughput import CpuRates
from tests.unit.test_plan import compose_cfg, plan_for

OVERRIDES = ("run.iterations=2", "dataset.n_train=50", "dataset.n_test=20", "generate.k=4")
LOG = """[t][imm.sampling][INFO] eval a+b: 80 rows, 1600 new tokens in 1.0 s (1600 new tokens/s), ...
[t][imm.sampling][INFO] sample it1: 200 rows, 4000 new tokens in 2.0 s (2000 new tokens/s), ...
[t][imm.loop][INFO] iteration 1: kept 100/200 samples (yield 0.500), 40/50 questions covered; training on 100
[t][imm.sampling][INFO] sample it2: 200 rows, 4000 new tokens in 2.0 s (2000 new tokens/s), ...
[t][imm.loop][INFO] iteration 2: kept 100/200 samples (yield 0.500), 40/50 questions covered; training on 100
"""


def test_a_row_from_a_job_gives_that_jobs_wall_time_back(tmp_path, monkeypatch):
    run, job = tmp_path / "run", tmp_path / "job"
    run.mkdir()
    job.mkdir()
    (run / "main.log").write_text(LOG + "".join(
        f"[t][imm.sampling][INFO] eval a+b: 80 rows, 1600 new tokens in 1.0 s (x), ...\n" for _ in range(4)))
    (run / ".hydra").mkdir()
    cfg = compose_cfg(*OVERRIDES)
    cfg.run.out_dir = str(job)
    (job / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    seconds = {"evaluate": 10.0 + 5 * 0.5, "generate": 8.0 + 2 * 0.5, "sft": 20.0 + 2 * 0.5, "merge": 2 * 0.5}
    (job / "results.json").write_text(json.dumps({"seconds": seconds, "kept": [
        {"iteration": t, "sampled": 200, "kept": 100} for t in (1, 2)]}))
    row = measure(run, wall_s=sum(seconds.values()) + 7.0, job_dir=job)
    assert row["stage_s"] == pytest.approx(0.5)  # a merge's seconds: each stage's bookkeeping
    assert row["sample"] == pytest.approx(8000 / 8.0) and row["sample_tokens"] == pytest.approx(20.0)
    assert row["evaluate"] == pytest.approx(5 * 1600 / 10.0) and row["answer_tokens"] == pytest.approx(20.0)
    assert row["kept"] == pytest.approx(0.5) and row["startup_s"] == pytest.approx(7.0)
    trained = 200 * cfg.sft.epochs * (row["prompt_tokens"] + 20.0)  # 2 rounds x 100 rows
    assert row["sft"] == pytest.approx(trained / 20.0)
    # the row back into the plan: the job's own wall time, with its rounds' kept rows (100 = 200 x 0.5)
    fields = {k: row[k] for k in ("sample", "evaluate", "sft", "sample_tokens", "answer_tokens", "kept",
                                  "prompt_tokens", "startup_s", "stage_s")}
    monkeypatch.setitem(throughput.CPU_RATES, ("testbed", "float32"), CpuRates(params=1_000_704, threads=2, **fields))
    plan = plan_for(Resources("local", 0, 80.0, 16.0, None, cores=2), *OVERRIDES)
    assert plan.hours * 3600 == pytest.approx(sum(seconds.values()) + 7.0, rel=1e-6)
