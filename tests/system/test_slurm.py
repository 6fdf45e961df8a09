"""SLURM for real: a one-node cluster (scripts/slurm_cluster.sh) runs an imm sweep and requeues.

    python -m pytest tests/system/test_slurm.py    # as root; installs slurmctld/slurmd/munge if missing

The cluster lives in a fresh temporary state dir for the whole session and is stopped by pid at the
end. The tests are skipped, with the reason, only where no cluster can be started (not root, or no
apt-get and the start failing); as root with apt-get a cluster that does not start fails them, and
IMM_REQUIRE_SLURM=1 turns every such skip into a failure (CI). Every submitit folder is new: job ids restart after a restart.
Heavy imports (imm, mlflow, hydra) stay inside the tests: SLURM jobs import this module to
unpickle ``CountTo``, and each second of import is paid again at every (re)start.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import submitit

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "scripts" / "slurm_cluster.sh"
SWEEP = ["method=imm,vanilla", "run.iterations=1", "dataset.n_train=16", "dataset.n_test=16", "generate.k=2",
         "generate.max_new_tokens=60", "eval.max_new_tokens=60", "sft.epochs=1"]


@pytest.mark.parametrize("preset", ["slurm", "local"])
def test_launcher_presets_compose(preset, tmp_path):
    """hydra/launcher=<preset> composes, and its submitit folder is fixed by the sweep dir."""
    from hydra import compose, initialize_config_dir

    import imm.config  # noqa: F401  (registers the "schema" node that conf/config.yaml starts from)

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", [f"hydra/launcher={preset}", f"outputs={tmp_path}"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher" if preset == "slurm" else "LocalLauncher")
    assert launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"
    assert all(isinstance(line, str) for line in launcher.get("setup") or [])  # a YAML "a: b" is a dict


def test_local_preset_runs_a_dry_sweep(tmp_path):
    """hydra/launcher=local: each grid point in its own submitit subprocess, no cluster needed."""
    out = subprocess.run([sys.executable, "-m", "imm.main", "-m", "hydra/launcher=local", "run.dry_run=true",
                          "method=imm,vanilla", f"outputs={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "multirun").iterdir()
    logs = list((sweep_dir / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2 and all("dry run: config valid" in log.read_text() for log in logs)


def _cannot(reason: str) -> None:
    """Skip, saying why; fail instead where a cluster is required (IMM_REQUIRE_SLURM=1, e.g. in CI)."""
    if os.environ.get("IMM_REQUIRE_SLURM") == "1":
        pytest.fail(f"IMM_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """Start the cluster; yield the environment a client needs (SLURM_CONF, PATH with sacct)."""
    if os.geteuid() != 0:
        _cannot("a local SLURM cluster needs root (slurmd runs jobs as their users)")
    state = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True, text=True,
                           timeout=600)
    if start.returncode != 0:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)], capture_output=True, timeout=120)
        reason = f"no local SLURM cluster: {start.stderr.strip()[-1500:]}"
        if shutil.which("apt-get"):  # root with a package manager: the cluster should have started
            pytest.fail(reason)
        _cannot(reason)
    env = {"SLURM_CONF": str(state / "slurm.conf"), "PATH": f"{state / 'bin'}:{os.environ['PATH']}"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield state
    stop = subprocess.run(["bash", str(CLUSTER), "stop", str(state)], capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    for daemon in ("slurmd", "slurmctld", "munged"):
        assert not (state / "run" / f"{daemon}.pid").exists(), f"{daemon} left running"


def sacct(job_id: str) -> dict[str, str]:
    """Job id -> state, through the sacct stand-in the cluster put on PATH (submitit's own query)."""
    out = subprocess.run(["sacct", "-o", "JobID,State,NodeList", "--parsable2", "-j", job_id.split("_")[0]],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "JobID|State|NodeList"
    return {line.split("|")[0]: line.split("|")[1] for line in out[1:]}


def final_state(job_id: str, limit_s: float = 30) -> str:
    """The job's state once SLURM is done with it (the result file appears while Python still exits)."""
    deadline = time.time() + limit_s
    while (state := sacct(job_id)[job_id]) in ("PENDING", "RUNNING", "COMPLETING") and time.time() < deadline:
        time.sleep(0.5)
    return state


def test_status_reports_a_running_cluster(cluster):
    status = subprocess.run(["bash", str(CLUSTER), "status", str(cluster)], capture_output=True, text=True)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "slurmctld running" in status.stdout and "debug*" in status.stdout


def test_sweep_through_slurm_lands_in_mlflow(cluster, tmp_path):
    """The user's command with hydra/launcher=slurm: both grid points run as SLURM array tasks."""
    import mlflow

    t0 = time.time()
    cmd = [sys.executable, "-m", "imm.main", "-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1",
           *SWEEP, f"outputs={tmp_path}"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    print(f"2-job sweep through SLURM: {time.time() - t0:.1f}s")

    (sweep_dir,) = (tmp_path / "multirun").iterdir()
    logs = sorted((sweep_dir / ".submitit").glob("*_*/*_0_log.out"))
    assert len(logs) == 2, "expected one SLURM array task per grid point"
    array_id = logs[0].parent.name.split("_")[0]
    assert [final_state(f"{array_id}_{i}") for i in range(2)] == ["COMPLETED", "COMPLETED"]
    for log in logs:
        assert f"JobEnvironment(job_id={log.parent.name}," in log.read_text()

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs, (parent,) = job_and_sweep_runs(tmp_path)
    assert sorted(r.data.tags["method"] for r in runs) == ["imm", "vanilla"]
    assert parent.data.tags["sweep_id"] == sweep_dir.name and parent.info.status == "FINISHED"
    assert "| α |" in out.stdout  # the sweep's report, printed by the submitting process
    for run in runs:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["mlflow.source.type"] == "JOB"
        assert run.info.status == "FINISHED"
        assert run.data.tags["alpha"] == "0.5"
        assert run.data.tags["sweep_id"] == sweep_dir.name
        assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/sft/id")] == [1]


def job_and_sweep_runs(outputs: Path) -> tuple[list, list]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("imm-testbed-testbed").experiment_id])
    return ([r for r in runs if r.data.tags.get("kind") != "sweep"],
            [r for r in runs if r.data.tags.get("kind") == "sweep"])


class CountTo(submitit.helpers.Checkpointable):
    """Counts to n, one line per step in a progress file; a requeued job continues from that file.

    ``checkpoint`` runs in the job when SLURM warns it (USR2): it returns what the requeued job runs.
    """

    def __init__(self) -> None:
        self.checkpoints = 0  # carried to the requeued job inside the checkpoint pickle

    def __call__(self, progress: str, n: int, step_s: float) -> tuple[int, int]:
        path = Path(progress)
        done = len(path.read_text().splitlines()) if path.exists() else 0
        attempt = os.environ.get("SLURM_RESTART_COUNT", "0")
        for step in range(done, n):
            time.sleep(step_s)
            with path.open("a") as f:
                f.write(f"{step} {attempt}\n")
        return n, self.checkpoints

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        self.checkpoints += 1
        return super().checkpoint(*args, **kwargs)


def _wait(what: str, ready, limit_s: float = 120) -> None:
    deadline = time.time() + limit_s
    while not ready():
        assert time.time() < deadline, f"timed out after {limit_s}s waiting for {what}"
        time.sleep(0.2)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_checkpoint_requeue_resume(cluster, tmp_path, monkeypatch):
    """USR2 -> checkpoint() -> scontrol requeue -> resume under the same job id, for both causes:
    a preemption (SIGTERM, which submitit ignores, then USR2) and a timeout (USR2 near the limit)."""
    # the job unpickles CountTo by reference to this module, so it must import it
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                   os.environ.get("PYTHONPATH")])))
    jobs = {}
    for cause in ("preempted", "timed-out"):
        executor = submitit.AutoExecutor(folder=tmp_path / cause, cluster="slurm", slurm_max_num_timeout=1)
        # submitit calls a USR2 a timeout once the job ran min(80%, limit - 10 min) of its limit:
        # always with a 2-minute limit, never within these seconds with 60 minutes (a preemption)
        executor.update_parameters(timeout_min=2 if cause == "timed-out" else 60, slurm_signal_delay_s=10,
                                   cpus_per_task=1, name=cause)
        progress = tmp_path / f"{cause}.txt"
        jobs[cause] = progress, executor.submit(CountTo(), str(progress), 20, 0.25)
    for cause, (progress, job) in jobs.items():
        _wait(f"{cause} job to count", lambda: len(_lines(progress)) >= 3)
        job._interrupt(timeout=cause == "timed-out")  # the signals SLURM sends in either case

    for cause, (progress, job) in jobs.items():
        _wait(f"{cause} job {job.job_id} to finish after its requeue", job.done)  # result() waits forever
        assert job.result() == (20, 1), "the resumed job is not the checkpointed callable"
        lines = [line.split() for line in _lines(progress)]
        assert [int(step) for step, _ in lines] == list(range(20)), f"{cause}: steps lost or repeated"
        assert {attempt for _, attempt in lines} == {"0", "1"}, f"{cause}: not requeued exactly once"
        # SLURM's own restart count above proves the requeue; submitit's "Requeued job" line is not
        # proof either way, since the requeue may kill the job before `scontrol requeue` returns
        log = Path(job.paths.stderr).read_text() + Path(job.paths.stdout).read_text()
        assert f"this job is {cause}" in log, log[-2000:]  # submitit's handler told the two causes apart
        assert final_state(job.job_id) == "COMPLETED"


def test_imm_job_requeued_by_slurm_resumes(cluster, tmp_path):
    """A real imm job warned by SLURM (USR2) is checkpointed, requeued and continues at the stage it
    reached: one MLflow run, FINISHED, with reused stages, and the same numbers as a job never stopped."""
    grid = ["method=imm", "run.iterations=2", *SWEEP[2:]]
    cmd = [sys.executable, "-m", "imm.main", "-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", *grid,
           f"outputs={tmp_path / 'requeued'}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stages = tmp_path / "requeued" / "stages"
    from imm.store import finished_outputs

    _wait("the job to finish two stages", lambda: len(finished_outputs(stages)) >= 2, limit_s=300)
    (folder,) = [p for p in (tmp_path / "requeued" / "multirun").glob("*/.submitit/*") if p.is_dir()]  # job id
    subprocess.run(["scancel", "--signal=USR2", folder.name], check=True, env=os.environ)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    log = next(folder.glob("*_0_log.out")).read_text()
    assert "Requeued job" in log or "requeue" in log.lower()

    reference = subprocess.run([sys.executable, "-m", "imm.main", *grid, f"outputs={tmp_path / 'reference'}"],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]
    finals = []
    for outputs in ("requeued", "reference"):
        (run,), _ = job_and_sweep_runs(tmp_path / outputs)
        assert run.info.status == "FINISHED"
        finals.append({k: v for k, v in run.data.metrics.items() if k.startswith("eval/")})
        if outputs == "requeued":
            assert run.data.metrics["stages/reused"] >= 2
    assert finals[0] == finals[1]


def test_cancelled_imm_job_ends_its_run_killed(cluster, tmp_path):
    """scancel (SIGTERM, then SIGKILL): submitit ignores the SIGTERM, so the run is ended KILLED then,
    not left RUNNING by a process killed without a word."""
    cmd = [sys.executable, "-m", "imm.main", "-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1",
           "method=imm", "run.iterations=3", *SWEEP[2:], f"outputs={tmp_path}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    from imm.store import finished_outputs

    _wait("the job to finish a stage", lambda: len(finished_outputs(tmp_path / "stages")) >= 1, limit_s=300)
    (folder,) = [p for p in (tmp_path / "multirun").glob("*/.submitit/*") if p.is_dir()]
    subprocess.run(["scancel", folder.name], check=True, env=os.environ)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, output[-3000:]
    (run,), (parent,) = job_and_sweep_runs(tmp_path)
    assert run.info.status == "KILLED", output[-3000:]
    assert parent.info.status == "FAILED"  # the sweep did not end: its run says so, not RUNNING
