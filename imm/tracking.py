"""MLflow tracking: one run per job, tags for the grid point, params = the flattened config.

The SQLite store is created (schema + experiment) under a file lock before any job logs, because
several jobs creating one database at once fail in its schema migration.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

STATUSES = ("FINISHED", "FAILED", "KILLED")


@dataclass
class TrackingConfig:
    enabled: bool = True  # false: log nothing (the loop still prints its table)
    uri: str = "???"  # sqlite:///path/mlflow.db (default under outputs/), or http://host:port
    artifact_root: str = "???"  # where runs of a new experiment put artifacts (file path or URI)
    experiment: str = "imm"  # experiment name; a sweep's runs share it to sit side by side
    run_name: str = ""  # MLflow run name; empty = method-alpha-p-seed


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def ensure_store(cfg: TrackingConfig) -> str:
    """Create the store and the experiment once (safe under concurrent jobs); returns its id."""
    import mlflow

    db = _sqlite_path(cfg.uri)
    lock_path = f"{db}.lock" if db else os.devnull
    if db:
        db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path) if db else nullcontext():
        client = mlflow.MlflowClient(cfg.uri)
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        artifacts = cfg.artifact_root
        if "://" not in artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            artifacts = Path(artifacts).resolve().as_uri()
        return client.create_experiment(cfg.experiment, artifact_location=artifacts)


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


class Tracker:
    """Logs one job to MLflow (or nowhere when tracking is disabled).

    A job is found again by its ``job_key`` tag: a job started again after a crash or a kill
    continues its own MLflow run (same run, same params) and skips metric points it already logged.
    """

    def __init__(self, cfg: TrackingConfig):
        self.cfg, self.client, self.run_id = cfg, None, None
        self.logged: set[tuple[str, int]] = set()

    def start(self, job_key: str, run_name: str, tags: dict[str, str], params: dict) -> bool:
        """Create (or find and reopen) the job's run; returns whether it was resumed."""
        if not self.cfg.enabled:
            return False
        import mlflow
        from mlflow.entities import Param

        exp_id = ensure_store(self.cfg)
        self.client = mlflow.MlflowClient(self.cfg.uri)
        found = self.client.search_runs([exp_id], f"tags.job_key = '{job_key}'", max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            for key in found[0].data.metrics:
                self.logged |= {(key, m.step) for m in self.client.get_metric_history(self.run_id, key)}
        else:
            run = self.client.create_run(exp_id, run_name=run_name, tags=tags | {"job_key": job_key})
            self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # same values on a resumed run: MLflow accepts them again
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        return bool(found)

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.run_id is None:
            return
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        new = [Metric(k, float(v), now, step) for k, v in values.items() if (k, step) not in self.logged]
        if new:
            self.client.log_batch(self.run_id, metrics=new)
            self.logged |= {(m.key, step) for m in new}

    def artifact(self, path: str | Path, folder: str | None = None) -> None:
        if self.run_id is not None:
            self.client.log_artifact(self.run_id, str(path), folder)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)

    @property
    def location(self) -> str:
        if self.run_id is None:
            return "MLflow tracking disabled"
        return f"MLflow run {self.run_id} in experiment '{self.cfg.experiment}' at {self.cfg.uri}"
