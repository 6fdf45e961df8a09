"""The real loop through the real entrypoint on a micro testbed, checked in the MLflow store it wrote.

Each test runs ``python -m imm.main`` in a subprocess with small sizes (few questions, 2 iterations).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[2]
MICRO = ["dataset.n_train=32", "dataset.n_test=24", "generate.k=2", "generate.max_new_tokens=60",
         "eval.max_new_tokens=60", "sft.epochs=2", "run.iterations=2"]


def imm_main(*args, outputs: Path, timeout=600, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "imm.main", *args, *MICRO, f"outputs={outputs}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def runs_of(outputs: Path, experiment="imm-testbed-testbed", sweeps=False):
    """The job runs of the experiment (with ``sweeps``, the sweeps' parent runs instead)."""
    client = mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return client, [r for r in runs if (r.data.tags.get("kind") == "sweep") == sweeps]


@pytest.fixture(scope="module")
def user_grid(tmp_path_factory):
    """The user's grid shape: method × alpha, four real runs side by side in one experiment."""
    outputs = tmp_path_factory.mktemp("user_grid")
    return outputs, imm_main("-m", "method=imm,vanilla", "merge.alpha=0.1,0.9", outputs=outputs)


def test_user_command_multirun(user_grid):
    tmp_path, out = user_grid
    client, runs = runs_of(tmp_path)
    assert len(runs) == 4
    assert {(r.data.tags["method"], r.data.tags["alpha"]) for r in runs} == \
        {("imm", "0.1"), ("imm", "0.9"), ("vanilla", "0.1"), ("vanilla", "0.9")}
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1
    _, (parent,) = runs_of(tmp_path, sweeps=True)
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_id"] == runs[0].data.tags["sweep_id"]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    exp = client.get_experiment(runs[0].info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    for run in runs:
        tags, params = run.data.tags, run.data.params
        assert run.info.status == "FINISHED"
        assert {"model", "dataset", "seed", "git_sha", "p", "mlflow.source.name", "mlflow.source.type"} <= tags.keys()
        inputs = {d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"]
                  for d in run.inputs.dataset_inputs}
        assert inputs["testbed/train"] == "training" and inputs["testbed/id_addsub"] == "ID test"
        assert inputs["testbed/ood_mult"] == "OOD test"
        assert 0 < run.data.metrics["time/active_s"]
        assert params["merge.alpha"] == tags["alpha"] and params["run.iterations"] == "2"
        method = tags["method"]
        hist = {k: [m.step for m in client.get_metric_history(run.info.run_id, k)]
                for k in ("eval/base/id", "eval/sft/id", "eval/sft/ood", "gen/yield", "eval/merged/ood")}
        assert hist["eval/base/id"] == [0]
        assert hist["eval/sft/id"] == hist["eval/sft/ood"] == hist["gen/yield"] == [1, 2]
        assert hist["eval/merged/ood"] == ([1, 2] if method == "imm" else [])
        signed = ("equation_gap",)  # equations written minus steps needed: below 0 when steps are left out
        for key in run.data.metrics:
            assert 0.0 <= run.data.metrics[key] or key.startswith("sft/") or key.endswith(signed), key
        if method == "imm":
            assert 0.8 < run.data.metrics["merge/density"] < 1.0  # p = 0.1 drops about a tenth
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "samples", "plots", "evaluations"} <= arts
        evaluated = {a.path for a in client.list_artifacts(run.info.run_id, "evaluations")}
        assert {"evaluations/Base.jsonl", "evaluations/SFT2.jsonl"} <= evaluated  # per item, for paired statistics
        samples = client.download_artifacts(run.info.run_id, "samples/iter1.jsonl", str(tmp_path / run.info.run_id))
        rows = [json.loads(line) for line in open(samples)]
        kept1 = [m.value for m in client.get_metric_history(run.info.run_id, "gen/kept") if m.step == 1]
        assert len(rows) == kept1[0]
        assert all("The answer is" in r["response"] for r in rows)
    # the two vanilla runs differ only in α, which vanilla ignores: same results
    van = [r for r in runs if r.data.tags["method"] == "vanilla"]
    assert van[0].data.metrics["eval/sft/id"] == van[1].data.metrics["eval/sft/id"]
    # stages shared across the grid run once: 17 for the first imm job (13, and the KL to the base of
    # its 4 evaluated models), 11 more for the other α (iteration 1's generation, SFT and SFT 1's KL
    # are shared), 5 for vanilla (4, and the KL of its SFT 2), 0 for the second vanilla job (α does
    # not affect vanilla)
    executed = {(r.data.tags["method"], r.data.tags["alpha"]): r.data.metrics["stages/executed"] for r in runs}
    assert sum(executed.values()) == 33
    assert 0 in (executed[("vanilla", "0.1")], executed[("vanilla", "0.9")])
    # the printed summary table names every stage
    for stage in ("Base", "SFT 1", "Merge 1", "SFT 2", "Merge 2"):
        assert stage in out.stdout


def test_runs_open_the_compare_view_on_the_results(user_grid):
    """What MLflow's compare view of the grid shows first: the params that differ between the runs (α and the
    method, no per-job path) and each run's first metric, final/id, the final model's for every method."""
    outputs, _ = user_grid
    client, runs = runs_of(outputs)
    for run in runs:
        params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
        assert "None" not in params.values()
        assert "run.out_dir" not in params and Path(tags["out_dir"]).is_relative_to(outputs / "jobs")
        assert not {k for k in params if k.split(".")[0] in ("outputs", "stages", "tracking")}
        assert tags["host"]
        final = "eval/merged" if tags["method"] == "imm" else "eval/sft"
        for name in ("id", "ood", "id_addsub", "ood_mult"):
            assert metrics[f"final/{name}"] == metrics[f"{final}/{name}"], name
        assert [m.step for m in client.get_metric_history(run.info.run_id, "final/id")] == [0, 1, 2]
        assert next(iter(client.get_run(run.info.run_id).data.metrics)) == "final/id"  # the plot's default metric
    differing = {k for k in set().union(*(r.data.params for r in runs)) if len({r.data.params.get(k) for r in runs}) > 1}
    assert differing == {"merge.alpha", "method.name"}


def test_grid_after_a_single_run_reports_every_alpha(tmp_path):
    """The user's three commands in order: the grid continues the default job's run (α 0.5), which must
    still count as the grid's; the grid ends with its own α table, printed and logged to its parent run."""
    one = ["run.iterations=1"]
    imm_main(*one, outputs=tmp_path)
    grid = imm_main("-m", "method=imm,vanilla", "merge.alpha=0.1,0.5,0.9", *one, outputs=tmp_path)
    (sweep_dir,) = (tmp_path / "multirun").iterdir()
    assert "| α (Eq. 6: weight of the base model) | 0.1 | 0.5 | 0.9 |" in grid.stdout  # the sweep reported itself
    client, runs = runs_of(tmp_path)
    assert len(runs) == 6  # the single run continued, not duplicated
    reused = [r for r in runs if r.data.tags["sweep_id"] == "single"]
    assert len(reused) == 1 and reused[0].data.tags[f"sweep.{sweep_dir.name}"] == "1"
    _, (parent,) = runs_of(tmp_path, sweeps=True)
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/alpha_table.md", "report/summary.csv", "report/report.html"} <= logged
    report = subprocess.run([sys.executable, "-m", "imm.report", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                             "--sweep-id", sweep_dir.name, "--out", str(tmp_path / "rep"), "--no-log"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "| α (Eq. 6: weight of the base model) | 0.1 | 0.5 | 0.9 |" in report.stdout
    header = (tmp_path / "rep" / "alpha_table.csv").read_text().splitlines()[0]
    assert header.split(",")[1:] == ["0.1", "0.5", "0.9"]
    # paired statistics from the runs' per-item artifacts, printed and written; one run per α
    assert "paired differences" in report.stdout
    paired = (tmp_path / "rep" / "paired.md").read_text()
    for alpha in ("0.1", "0.5", "0.9"):
        assert f"| imm (α {alpha}) final − Base | 1 | " in paired
    assert "| vanilla final − Base | 1 | " in paired and "| imm (α 0.1) − vanilla, final | 1 | " in paired
    mechanism = (tmp_path / "rep" / "mechanism.csv").read_text().splitlines()
    assert mechanism[0].startswith("method,stage,seeds,no answer,OOD pass@1") and len(mechanism) > 3


def test_untracked_job_reports_from_its_folder(tmp_path):
    """A job run with tracking off keeps what it measured in its folder; the report reads it from there
    (--jobs) with the numbers the job printed, and leaves out a stopped job's folder."""
    out = imm_main("method=vanilla", "tracking.enabled=false", outputs=tmp_path)
    assert not (tmp_path / "mlflow.db").exists()
    (job,) = (tmp_path / "jobs").iterdir()
    results = json.loads((job / "results.json").read_text())
    assert [r["label"] for r in results["rows"]] == ["Base", "SFT 1", "SFT 2"]
    assert [k["iteration"] for k in results["kept"]] == [1, 2] and results["seconds"]["sft"] > 0
    stopped = tmp_path / "jobs" / "stopped"
    stopped.mkdir()
    (stopped / "config.yaml").write_text((job / "config.yaml").read_text())
    report = subprocess.run([sys.executable, "-m", "imm.report", "--jobs", str(job), str(stopped),
                             "--out", str(tmp_path / "rep")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "1 finished runs from job folders; skipped: 1 unfinished" in report.stdout
    sft2 = next(r for r in results["rows"] if r["label"] == "SFT 2")
    summary = (tmp_path / "rep" / "summary.csv").read_text()
    assert f"{100 * sft2['ood']:.1f}" in summary.splitlines()[-1]
    assert "| vanilla final − Base | 1 | " in (tmp_path / "rep" / "paired.md").read_text()
    assert "SFT 2 " in out.stdout


def test_evaluating_the_last_model_only(tmp_path):
    """run.evaluate=final evaluates the base and the job's last model only, with the numbers the full
    job gives that model (the second job reuses every stage of the first and evaluates the rest)."""
    def rows(*args):
        imm_main("tracking.enabled=false", *args, outputs=tmp_path)
        (job,) = [j for j in (tmp_path / "jobs").iterdir() if f"evaluate: {args[0].split('=')[1]}" in
                  (j / "config.yaml").read_text()]
        return {r["label"]: r for r in json.loads((job / "results.json").read_text())["rows"]}

    final = rows("run.evaluate=final")
    assert list(final) == ["Base", "Merge 2"]
    every = rows("run.evaluate=all")
    assert list(every) == ["Base", "SFT 1", "Merge 1", "SFT 2", "Merge 2"]
    assert final["Merge 2"] == every["Merge 2"] and final["Base"] == every["Base"]


def test_nan_loss_fails_the_run(tmp_path):
    out = imm_main("method=vanilla", "sft.lr=1e30", "sft.max_grad_norm=0", outputs=tmp_path, check=False)
    assert out.returncode != 0
    assert "SFT loss became" in out.stdout + out.stderr
    _, runs = runs_of(tmp_path)
    assert [r.info.status for r in runs] == ["FAILED"]


def test_sigterm_marks_the_run_killed(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "imm.main", *MICRO, "run.iterations=5", f"outputs={tmp_path}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("jobs/*/samples/iter1.jsonl")):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    _, runs = runs_of(tmp_path)
    assert [r.info.status for r in runs] == ["KILLED"]


def test_bad_grid_point_stops_before_any_job(tmp_path):
    out = imm_main("-m", "merge.alpha=0.5,1.5", outputs=tmp_path, check=False)
    assert out.returncode != 0
    assert "merge.alpha=1.5 must lie in [0, 1]" in out.stderr + out.stdout
    assert not list(tmp_path.glob("jobs/*/config.yaml"))  # no job started, not even the valid one
    assert not (tmp_path / "mlflow.db").exists()


def test_distillation_teacher_that_keeps_nothing(tmp_path, tiny_model):
    """A teacher samples the training data; this (random) teacher gets nothing right, so every
    iteration keeps no sample: yield 0 is recorded and the student is left unchanged."""
    out = imm_main("method=imm", "+model@teacher=testbed", f"teacher.path={tiny_model}", "teacher.name=random",
                   outputs=tmp_path)
    assert "kept no sample: the model is left unchanged" in out.stdout + out.stderr
    client, runs = runs_of(tmp_path)
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "gen/yield")] == [0.0, 0.0]
    base = run.data.metrics["eval/base/id"]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "eval/sft/id")] == [base, base]
    assert "teacher.path" in run.data.params
    # evaluating the last model only: the unchanged student is evaluated once, after the last iteration
    imm_main("method=imm", "+model@teacher=testbed", f"teacher.path={tiny_model}", "teacher.name=random",
             "run.evaluate=final", outputs=tmp_path)
    _, runs = runs_of(tmp_path)
    (last,) = [r for r in runs if r.data.params["run.evaluate"] == "final"]
    for kind in ("sft", "merged"):
        history = client.get_metric_history(last.info.run_id, f"eval/{kind}/id")
        assert [(m.step, m.value) for m in history] == [(2, base)]
