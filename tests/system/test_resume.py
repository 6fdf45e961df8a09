"""Kill -9 a real job at several points; the same command continues it to the same result."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow

from imm.store import finished_outputs

ROOT = Path(__file__).resolve().parents[2]
JOB = ["method=imm", "dataset.n_train=24", "dataset.n_test=16", "generate.k=2", "generate.max_new_tokens=60",
       "eval.max_new_tokens=60", "sft.epochs=2", "run.iterations=2"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def command(outputs: Path) -> list[str]:
    return [sys.executable, "-m", "imm.main", *JOB, f"outputs={outputs}"]


def finished_stages(outputs: Path) -> int:
    return len(finished_outputs(outputs / "stages"))


def final_metrics(outputs: Path) -> dict:
    client = mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("imm-testbed-testbed").experiment_id])
    assert len(runs) == 1, "a resumed job must continue its run, not start another"
    run = runs[0]
    assert run.info.status == "FINISHED"
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)]
               for k in run.data.metrics if k.startswith(("eval/", "gen/", "merge/", "sft/loss"))}
    for key, points in history.items():
        assert len({s for s, _ in points}) == len(points), f"{key} logged twice at one step"
    return {k: sorted(v) for k, v in history.items()}


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    reference = tmp_path / "reference"
    done = subprocess.run(command(reference), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = final_metrics(reference)
    total = finished_stages(reference)

    resumed = tmp_path / "resumed"
    for kill_after in (1, 4, total - 3):  # during iteration 1's generation, its SFT, iteration 2's merge
        proc = subprocess.Popen(command(resumed), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while finished_stages(resumed) < kill_after and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the job finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = subprocess.run(command(resumed), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert last.returncode == 0, last.stderr[-2000:]
    assert "reused" in last.stdout
    assert final_metrics(resumed) == expected
    assert finished_stages(resumed) == total
