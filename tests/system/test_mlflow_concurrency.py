"""MLflow at sweep scale: many jobs writing one store at the same moment lose nothing.

    python -m pytest tests/system/test_mlflow_concurrency.py    # about a minute on 2 cores

Writers are spawned processes (as SLURM array tasks are), released together by a barrier, each
logging one run through imm's own ``Tracker``: a SQLite file created once before the fan-out (as
``imm.sweep_check`` does), and an ``mlflow server`` on 127.0.0.1 (the cluster setup).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
from pathlib import Path

import mlflow
import pytest

from imm.tracking import Tracker, TrackingConfig, ensure_store

POINTS = 50  # metric points per writer, each its own request at its own step
EXPERIMENT = "concurrency"


def _write(cfg: TrackingConfig, i: int, barrier, results) -> None:
    """One job: create a run, log params/tag, then POINTS single-point metric batches."""
    try:
        tracker = Tracker(cfg)
        barrier.wait(timeout=120)  # all writers create their runs at the same moment
        tracker.start(f"writer-{i}", f"writer-{i}", {"writer": str(i)}, {"writer": i, "grid": {"alpha": i / 10}})
        for step in range(POINTS):
            tracker.metrics({"loss": i + step / 1000, "step_x2": 2 * step}, step)
        tracker.end("FINISHED")
        results.put((i, tracker.run_id))
    except BaseException:
        results.put((i, traceback.format_exc()))


def _fan_out(cfg: TrackingConfig, writers: int) -> dict[int, str]:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(writers), ctx.Queue()
    procs = [ctx.Process(target=_write, args=(cfg, i, barrier, results)) for i in range(writers)]
    for p in procs:
        p.start()
    out = dict(results.get(timeout=150) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    errors = {i: r for i, r in out.items() if r.startswith("Traceback")}
    assert not errors, "\n".join(errors.values())
    assert all(p.exitcode == 0 for p in procs)
    return out


def _check_store(uri: str, run_ids: dict[int, str]) -> None:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=1000)}
    assert set(runs) == set(run_ids.values()), "a run is missing or was created twice"
    for i, run_id in run_ids.items():
        run = runs[run_id]
        assert run.info.status == "FINISHED"
        assert run.data.tags["writer"] == str(i) and run.data.tags["job_key"] == f"writer-{i}"
        assert run.data.params == {"writer": str(i), "grid.alpha": str(i / 10)}
        loss = client.get_metric_history(run_id, "loss")
        assert sorted((m.step, m.value) for m in loss) == [(s, i + s / 1000) for s in range(POINTS)]
        assert sorted(m.step for m in client.get_metric_history(run_id, "step_x2")) == list(range(POINTS))


def test_twelve_writers_one_sqlite_file(tmp_path):
    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "art"),
                         experiment=EXPERIMENT)
    ensure_store(cfg)  # once, before the fan-out: concurrent schema creation is what fails
    run_ids = _fan_out(cfg, writers=12)
    _check_store(cfg.uri, run_ids)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, limit_s: float = 60) -> None:
    deadline = time.time() + limit_s
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server did not answer at {url} within {limit_s}s")


@pytest.fixture
def mlflow_server(tmp_path):
    """An `mlflow server` bound to 127.0.0.1 on a free port; stopped (its process group) after."""
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--default-artifact-root", str(tmp_path / "art")]
    # tracking only: without this, mlflow 3.17 also starts a job runner with seven huey consumers
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = tmp_path / "server.log"  # a file, not a pipe: an unread full pipe would stall the server
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own group: the uvicorn worker stops with it
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_four_writers_one_mlflow_server(mlflow_server, tmp_path):
    cfg = TrackingConfig(uri=mlflow_server, artifact_root=str(tmp_path / "art"), experiment=EXPERIMENT)
    ensure_store(cfg)  # no file lock over HTTP: the experiment is created before the fan-out
    run_ids = _fan_out(cfg, writers=4)
    _check_store(cfg.uri, run_ids)
