"""A Hydra callback around a whole multirun: checks the grid before any job starts, reports it at the end.

Hydra composes each job's config only when the job runs; on a cluster that is after submission.
``on_multirun_start`` expands the grid with the sweeper the run is configured with (one that does
not expand a fixed grid, e.g. an optimiser, is refused with a message: its jobs are not known in
advance), composes and validates every job's config, creates the MLflow store and experiments once
(concurrent jobs must not race to create one SQLite database) and the sweep's parent run, under
which its jobs log. A bad value anywhere in the grid stops the sweep with nothing run.
``on_multirun_end`` prints the sweep's report (α table, methods) and logs it to the parent run.
"""

from __future__ import annotations

import atexit
import logging
import time
from pathlib import Path
from typing import Any

from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.utils import get_class
from omegaconf import DictConfig

from imm.config import validate
from imm.provenance import git_sha
from imm.redact import scrub
from imm.tracking import TrackingConfig, cluster_refusal, ensure_store, source_tags, start_sweep_run

log = logging.getLogger(__name__)


def grid(cfg: DictConfig) -> list[list[str]]:
    """Every job's override list, as the configured sweeper expands them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    target = cfg.hydra.sweeper.get("_target_", "")
    sweeper = get_class(target) if target else None
    if sweeper is None or not issubclass(sweeper, BasicSweeper):
        raise SystemExit(f"imm: the grid check expands grids of Hydra's basic sweeper only, and this run's sweeper is "
                         f"{target or 'unset'}; run it without the check: hydra.callbacks.validate_sweep=null")
    params = cfg.hydra.sweeper.get("params") or {}
    overrides = [f"{k}={v}" for k, v in params.items()] + list(cfg.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(overrides)
    batches = sweeper.split_arguments(parsed, cfg.hydra.sweeper.get("max_batch_size"))
    return [job for batch in batches for job in batch]


def refuse_unplanned(config: DictConfig, jobs: list[list[str]], typed: list) -> None:
    """Print every job's resource plan (imm/plan/job.py); stop the grid, with nothing launched, when any
    job does not fit what it asks for."""
    from imm.plan.job import plan_job, resources

    common = set.intersection(*(set(o) for o in jobs)) if jobs else set()
    plans = [plan_job(c, resources(config.hydra.launcher, c.plan), f"job #{i} ({' '.join(x for x in o if x not in common)})")
             for i, (o, c) in enumerate(zip(jobs, typed))]
    print("resource plan, one line a job:\n" + "\n".join(p.line() for p in plans), flush=True)
    bad = [p for p in plans if p.problems]
    if bad:
        raise SystemExit(f"imm: {len(bad)} of {len(plans)} jobs do not fit what they ask for, nothing was "
                         f"launched:\n" + "\n".join(f"{p.label}: " + "; ".join(p.problems) for p in bad))


def refuse_unready(config: DictConfig, jobs: list[list[str]], typed: list) -> None:
    """Stop the grid, with nothing submitted, when the jobs' environment cannot run them (imm/plan/preflight.py):
    each distinct set of needs checked once here, and on a compute node with plan.preflight_srun=true."""
    import subprocess

    from imm.plan import preflight

    needs: dict[tuple, int] = {}
    for i, c in enumerate(typed):
        key = (c.model.path, c.teacher.path if c.teacher else "", repr(c.dataset), c.engine.backend, c.sft.backend,
               c.sft.deepspeed, c.tracking.enabled, c.plan.offline)
        needs.setdefault(key, i)
    problems = [f"job #{i}: {p}" for i in needs.values() for p in preflight.check(typed[i])]
    if not problems and any(c.plan.preflight_srun for c in typed):
        for i in needs.values():
            cmd = preflight.srun_command(config.hydra.launcher, jobs[i])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                problems.append(f"job #{i} on a compute node ({' '.join(cmd[:5])} ...): "
                                + (proc.stdout.strip() or proc.stderr.strip()[-2000:]))
    if problems:
        raise SystemExit("imm: the jobs' environment cannot run them, nothing was submitted:\n" + "\n".join(problems))
    print(f"preflight: {preflight.summary(typed[0])}", flush=True)


class ValidateSweep(Callback):
    def __init__(self) -> None:
        self.parents: dict[tuple[str, str], tuple[TrackingConfig, str]] = {}  # (uri, experiment) -> parent run
        self.started, self.ended, self.sweep_id = 0.0, False, ""

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        jobs = grid(config)
        typed = []
        for i, overrides in enumerate(jobs):
            job_cfg = compose(config_name=config_name, overrides=overrides)
            try:
                typed.append(validate(job_cfg))
            except Exception as e:
                # Hydra turns a callback's Exception into a warning and launches anyway; SystemExit
                # is not an Exception, so it stops the sweep here, with nothing run.
                raise SystemExit(f"imm: job #{i} ({scrub(' '.join(overrides))}) has a bad config, nothing was "
                                 f"launched: {type(e).__name__}: {e}") from e
        refuse_unplanned(config, jobs, typed)
        on_slurm = "Slurm" in str(config.hydra.launcher.get("_target_", ""))
        if on_slurm:  # the jobs' environment, before the queue (a local grid's jobs check it in their dry run)
            refuse_unready(config, jobs, typed)
        stores = {(c.tracking.uri, c.tracking.experiment): c.tracking for c in typed if c.tracking.enabled}
        for tracking in stores.values():
            if on_slurm and (why := cluster_refusal(tracking)):
                raise SystemExit(f"imm: the grid's jobs could not log, nothing was launched: {why}")
            ensure_store(tracking)
        log.info("checked %d job configs; MLflow store ready for %s", len(jobs),
                 ", ".join(e for _, e in sorted(stores)) or "no tracking")
        if any(c.run.dry_run for c in typed):
            if on_slurm:
                raise SystemExit(0)  # planned and checked: a dry run submits nothing to the cluster
            return
        self.sweep_id, self.started = Path(config.hydra.sweep.dir).name, time.time()
        tags = {"jobs": str(len(jobs)), "grid": " ".join(config.hydra.overrides.task)[:5000]}
        tags |= source_tags(git_sha())
        for where, tracking in stores.items():
            self.parents[where] = (tracking, start_sweep_run(tracking, self.sweep_id, tags))
        atexit.register(self._end_parents, "FAILED")  # a job that raised skips on_multirun_end

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        for i, (tracking, run_id) in enumerate(self.parents.values()):
            from imm.report.sweep import report_sweep  # matplotlib and MLflow: only where a store has runs

            out = Path(config.hydra.sweep.dir) / ("report" if len(self.parents) == 1 else f"report-{i}")
            try:
                report_sweep(tracking, self.sweep_id, out, run_id)
            except Exception:  # the jobs are done and logged: a report that fails must not fail the sweep
                log.exception("the report of sweep %s failed; rerun: python -m imm.report --sweep-id %s",
                              self.sweep_id, self.sweep_id)
        self._end_parents("FINISHED")

    def _end_parents(self, status: str) -> None:
        if self.ended:
            return
        self.ended = True
        import mlflow

        for tracking, run_id in self.parents.values():
            client = mlflow.MlflowClient(tracking.uri)
            client.log_metric(run_id, "time/sweep_s", time.time() - self.started)
            client.set_terminated(run_id, status)
