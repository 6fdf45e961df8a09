"""Kill -9 a real job at several points; the same command continues it to the same result.

Two kills land between stages (found by polling the stage store). The others land inside a stage,
deterministically: the job runs with a kill point installed (``install_kill_point``) that sends the
process SIGKILL after the n-th optimizer step of its first SFT, or after the n-th block the
streaming merge engine writes into its first output shard, while the stage's temporary folder is
there. Each kill is checked to have left exactly that unfinished stage behind.
"""

import itertools
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


def install_kill_point(spec: str) -> None:
    """``sft:<n>``: SIGKILL this process after its n-th optimizer step; ``merge:<n>``: after the merge
    engine has written its n-th block. Runs inside the job's process, before the job starts."""
    where, n = spec.split(":")
    count = itertools.count(1)

    def maybe_kill() -> None:
        if next(count) == int(n):
            os.kill(os.getpid(), signal.SIGKILL)

    if where == "sft":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(lambda opt, args, kwargs: maybe_kill())
    elif where == "merge":
        from imm.merge import engine

        blocks = engine._blocks

        def blocks_then_kill(*args, **kwargs):
            for block in blocks(*args, **kwargs):
                yield block  # the engine writes it to the shard file before asking for the next
                maybe_kill()

        engine._blocks = blocks_then_kill
    else:
        raise ValueError(f"unknown kill point {spec!r}")


def command(outputs: Path, kill_at: str | None = None) -> list[str]:
    args = [*JOB, f"outputs={outputs}"]
    if kill_at is None:
        return [sys.executable, "-m", "imm.main", *args]
    code = (f"import runpy, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_resume; "
            f"test_resume.install_kill_point({kill_at!r}); "
            "runpy.run_module('imm.main', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code, *args]


def finished_stages(outputs: Path) -> int:
    return len(finished_outputs(outputs / "stages"))


def stage_state(outputs: Path, stage: str) -> tuple[int, int]:
    """(finished outputs, unfinished ones: a temporary folder whose key has no finished output)."""
    folder = outputs / "stages" / stage
    done = {p.name for p in finished_outputs(outputs / "stages") if p.parent.name == stage}
    partial = {p.name.split(".tmp-")[0] for p in folder.glob("*.tmp-*")} - done if folder.is_dir() else set()
    return len(done), len(partial)


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


def kill_between_stages(outputs: Path, after: int) -> None:
    proc = subprocess.Popen(command(outputs), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while finished_stages(outputs) < after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def kill_inside(outputs: Path, kill_at: str) -> None:
    done = subprocess.run(command(outputs, kill_at), cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == -signal.SIGKILL, f"kill point {kill_at} not reached: " + done.stderr[-2000:]


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    reference = tmp_path / "reference"
    done = subprocess.run(command(reference), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = final_metrics(reference)
    total = finished_stages(reference)

    resumed = tmp_path / "resumed"
    kill_between_stages(resumed, 1)  # during iteration 1's generation
    kill_inside(resumed, "sft:3")  # iteration 1's SFT, in its second epoch
    assert stage_state(resumed, "sft") == (0, 1)
    kill_inside(resumed, "merge:20")  # iteration 1's merge, its shard file half written
    assert stage_state(resumed, "sft") == (1, 0) and stage_state(resumed, "merge") == (0, 1)
    kill_inside(resumed, "sft:2")  # iteration 2's SFT (iteration 1's is finished: this job's first)
    assert stage_state(resumed, "sft") == (1, 1)
    kill_inside(resumed, "merge:40")  # iteration 2's merge
    assert stage_state(resumed, "sft") == (2, 0) and stage_state(resumed, "merge") == (1, 1)
    kill_between_stages(resumed, total - 1)  # during the last evaluation
    last = subprocess.run(command(resumed), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert last.returncode == 0, last.stderr[-2000:]
    assert "reused" in last.stdout
    assert final_metrics(resumed) == expected
    assert finished_stages(resumed) == total
    assert stage_state(resumed, "sft") == (2, 0) and stage_state(resumed, "merge") == (2, 0)
