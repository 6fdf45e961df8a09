"""MLflow tracking: one run per job, tags for the grid point and where the job keeps its files and logs,
params = the rest of the flattened config (its settings; None values left out), every value scrubbed of
secrets (imm/redact.py).

The SQLite store is created (schema + experiment) under a file lock before any job logs, because
several jobs creating one database at once fail in its schema migration.

MLflow's own conventions, so its UI shows what it can: the experiment is of the model-training
kind (the UI opens it on its runs, not on GenAI traces); runs carry the source tags (entry point,
git commit); the data sets are dataset inputs (name, digest, rows, training / ID / OOD role); a
sweep is a parent run with its jobs as children. A job run continued by a later sweep (same
config, so same run) is tagged ``sweep.<id>`` for every sweep it served, and becomes a child of
the newest one. ``time/active_s`` is the run's compute time over all its sessions: MLflow's
duration of a continued run counts from its first start.
"""

from __future__ import annotations

import getpass
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from imm.redact import refusal, scrub, scrubbed_file

# read by MLflow 3's UI (mlflow.experimentKind): opens the experiment on its runs table, not on traces
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
SWEEP_KIND = "sweep"  # tags.kind of a sweep's parent run


@dataclass
class TrackingConfig:
    enabled: bool = True  # false: log nothing (the loop still prints its table)
    uri: str = "???"  # sqlite:///path/mlflow.db (default under outputs/), or http://host:port
    artifact_root: str = "???"  # where runs of a new experiment put artifacts (file path or URI; "mlflow-artifacts:" = the server's)
    experiment: str = "imm"  # experiment name; a sweep's runs share it to sit side by side
    run_name: str = ""  # MLflow run name; empty = method-alpha-p-seed

    def __post_init__(self) -> None:
        for name in ("uri", "artifact_root"):  # credentials come from the environment (imm/redact.py)
            if why := refusal(f"tracking.{name}", getattr(self, name)):
                raise ValueError(why)


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


# filesystems several nodes mount at once, where SQLite's locking (and flock) cannot be trusted
SHARED_FS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "glusterfs", "fuse.glusterfs",
             "panfs", "wekafs", "fuse.sshfs", "9p")
SERVER_HINT = ("run one MLflow server where the compute nodes reach it, bound to the address they use, with TLS "
               "and basic authentication (mlflow server --host <that address> --port 5000 --app-name basic-auth "
               "--uvicorn-opts '--ssl-certfile ... --ssl-keyfile ...' ..., docs/scale-out.md) and give the jobs its "
               "address: tracking=server with MLFLOW_TRACKING_URI=https://<that host>:5000 (credentials in "
               "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, the certificate in "
               "MLFLOW_TRACKING_SERVER_CERT_PATH)")


def under_slurm() -> bool:
    return "SLURM_JOB_ID" in os.environ


def filesystem(path: Path, mounts: str | None = None) -> str:
    """The type of the filesystem holding ``path`` (the longest mount point above it in /proc/mounts)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return ""
    target, best = str(path.resolve()), ("", "")
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 3 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")):
            best = max(best, (parts[1], parts[2]), key=lambda m: len(m[0]))
    return best[1]


def cluster_refusal(cfg: TrackingConfig, mounts: str | None = None) -> str:
    """Why jobs on other nodes cannot log to this store ("" = they can): a loopback address, or SQLite
    on a shared filesystem."""
    from urllib.parse import urlparse

    if not cfg.enabled:
        return ""
    host = urlparse(cfg.uri).hostname or ""
    if cfg.uri.startswith("http") and (host in ("localhost", "::1", "0.0.0.0") or host.startswith("127.")):
        return f"tracking.uri={cfg.uri} is a loopback address, which no other node reaches: {SERVER_HINT}"
    db = _sqlite_path(cfg.uri)
    if db is not None and (kind := filesystem(db, mounts)) in SHARED_FS:
        return f"tracking.uri={cfg.uri} is SQLite on a shared filesystem ({kind}), whose locks are unreliable: {SERVER_HINT}"
    return ""


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
            for k, v in EXPERIMENT_TAGS.items():
                if k not in exp.tags:  # an experiment made before the tag existed
                    client.set_experiment_tag(exp.experiment_id, k, v)
            return exp.experiment_id
        artifacts = cfg.artifact_root
        if artifacts.startswith("mlflow-artifacts:"):
            # a server's proxied store: the server puts the experiment under its id, the layout
            # (<experiment id>/<run id>/artifacts) by which `--app-name basic-auth` grants uploads
            artifacts = None
        elif "://" not in artifacts:
            Path(artifacts).mkdir(parents=True, exist_ok=True)
            artifacts = Path(artifacts).resolve().as_uri()
        return client.create_experiment(cfg.experiment, artifact_location=artifacts, tags=EXPERIMENT_TAGS)


def source_tags(git_sha: str) -> dict[str, str]:
    """MLflow's standard tags for where a run came from (the UI's Source and User columns)."""
    tags = {"mlflow.source.name": "imm/main.py", "mlflow.user": getpass.getuser(),
            "mlflow.source.type": "JOB" if "SUBMITIT_EXECUTOR" in os.environ else "LOCAL"}
    if git_sha != "unknown":
        tags["mlflow.source.git.commit"] = git_sha.removesuffix("-dirty")
    return tags


def ui_hint(uri: str, exp_id: str) -> str:
    """Where to see the runs: MLflow 3.17's UI opens every experiment on its GenAI view unless the
    page asks for the model-training one (workflowType; the choice is then remembered)."""
    page = f"#/experiments/{exp_id}?workflowType=machine_learning"
    if uri.startswith("http"):
        return f"{uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/{page}"


def find_sweep_run(client, exp_id: str, sweep_id: str) -> str | None:
    found = client.search_runs([exp_id], f"tags.kind = '{SWEEP_KIND}' and tags.sweep_id = '{sweep_id}'",
                               max_results=1)
    return found[0].info.run_id if found else None


def start_sweep_run(cfg: TrackingConfig, sweep_id: str, tags: dict[str, str]) -> str:
    """The sweep's parent run (created once, before its jobs, by the process that launches them)."""
    import mlflow

    exp_id = ensure_store(cfg)
    client = mlflow.MlflowClient(cfg.uri)
    run_id = find_sweep_run(client, exp_id, sweep_id)
    if run_id is None:
        run_id = client.create_run(exp_id, run_name=f"sweep {sweep_id}",
                                   tags=scrub(tags | {"kind": SWEEP_KIND, "sweep_id": sweep_id})).info.run_id
    else:
        client.update_run(run_id, status="RUNNING")
    return run_id


def grid_tags(cfg: dict) -> dict[str, str]:
    """A job's grid point as tags, from its resolved config: every setting the baselines sweep varies
    among them (method, SFT intervention, mixture's history share, whether SFT restarts from the base)."""
    from imm.methods import MethodConfig

    method, merge, run = MethodConfig(**cfg["method"]), cfg["merge"], cfg["run"]
    return {"method": method.name, "alpha": str(merge["alpha"]), "p": str(merge["p"]),
            "sft_intervention": cfg["sft"]["intervention"], "history_share": str(method.history_share),
            "restart": str(method.restarts).lower(), "model": cfg["model"]["name"],
            "dataset": cfg["dataset"]["name"], "seed": str(run["seed"]), "merge": merge["name"],
            "schedule": merge["schedule"]}


def flatten(d: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b": "value"}; None values are left out (unset, nothing to compare)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif v is not None:
            out[key] = str(v)[:6000]
    return out


# where a job keeps its files and logs, not what it computes (the job key leaves them out too): run tags, not
# params, so the params that differ between runs (MLflow's compare view plots those) are the settings
BOOKKEEPING = {"run.out_dir": "out_dir"}  # tag names; other keys under BOOKKEEPING_NODES keep their dotted name
BOOKKEEPING_NODES = ("outputs", "stages", "tracking")


def split_params(flat: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """A flattened config as (params, bookkeeping tags)."""
    params, tags = {}, {}
    for key, value in flat.items():
        if key in BOOKKEEPING or key.split(".")[0] in BOOKKEEPING_NODES:
            tags[BOOKKEEPING.get(key, key)] = value
        else:
            params[key] = value
    return params, tags


def session_tags() -> dict[str, str]:
    """Where this session of the job runs (set again when a requeued job continues on another node)."""
    import platform

    tags = {"host": platform.node()}
    if under_slurm():
        tags["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return tags


class Tracker:
    """Logs one job to MLflow (or nowhere when tracking is disabled).

    A job is found again by its ``job_key`` tag: a job started again after a crash or a kill
    continues its own MLflow run (same run, same params) and skips metric points it already logged.
    """

    def __init__(self, cfg: TrackingConfig):
        self.cfg, self.client, self.run_id, self.exp_id = cfg, None, None, ""
        self.logged: set[tuple[str, int]] = set()
        self.started, self.active_before, self.session = time.time(), 0.0, 1

    def start(self, job_key: str, run_name: str, tags: dict[str, str], params: dict, sweep_id: str = "") -> bool:
        """Create (or find and reopen) the job's run; returns whether it was resumed.

        ``sweep_id``: the sweep this job belongs to (empty for a single run); tags the run as its member
        and, when the sweep has a parent run, as that run's child."""
        if not self.cfg.enabled:
            return False
        if under_slurm() and (why := cluster_refusal(self.cfg)):
            raise SystemExit(f"imm: {why}")
        import mlflow
        from mlflow.entities import Param, RunTag

        exp_id = self.exp_id = ensure_store(self.cfg)
        self.client = mlflow.MlflowClient(self.cfg.uri)
        found = self.client.search_runs([exp_id], f"tags.job_key = '{job_key}'", max_results=1)
        values, bookkeeping = split_params(flatten(params))
        extra = bookkeeping | session_tags()
        if sweep_id:
            extra[f"sweep.{sweep_id}"] = "1"
            if parent := find_sweep_run(self.client, exp_id, sweep_id):
                extra["mlflow.parentRunId"] = parent
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            for key in found[0].data.metrics:
                self.logged |= {(key, m.step) for m in self.client.get_metric_history(self.run_id, key)}
            past = self.client.get_metric_history(self.run_id, "time/active_s")
            if past:
                last = max(past, key=lambda m: m.step)
                self.active_before, self.session = last.value, last.step + 1
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in scrub(extra).items()])
        else:
            run = self.client.create_run(exp_id, run_name=scrub(run_name),
                                         tags=scrub(tags | {"job_key": job_key} | extra))
            self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in scrub(values).items()]
        for i in range(0, len(items), 100):  # same values on a resumed run: MLflow accepts them again
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        return bool(found)

    def datasets(self, data, name: str) -> None:
        """The run's data sets as MLflow dataset inputs (name, digest, rows), each with its role:
        training, ID test or OOD test. ``data``: an ``imm.data.Data``."""
        if self.run_id is None:
            return
        import hashlib
        import json

        from mlflow.entities import Dataset, DatasetInput, InputTag

        sets = {"train": ("training", data.train)}
        sets |= {n: ("ID test" if n in data.id_sets else "OOD test", items) for n, items in data.tests.items()}
        schema = json.dumps({"mlflow_colspec": [{"type": "string", "name": c} for c in ("question", "answer")]})
        inputs = []
        for set_name, (role, items) in sets.items():  # entities built directly: no pandas on compute nodes
            rows = json.dumps([[str(i.get("question", "")), str(i.get("answer", ""))] for i in items])
            ds = Dataset(name=scrub(f"{name}/{set_name}"), digest=hashlib.sha256(rows.encode()).hexdigest()[:8],
                         source_type="code", source=scrub(json.dumps({"tags": {"imm.dataset": name}})), schema=schema,
                         profile=json.dumps({"num_rows": len(items)}))
            inputs.append(DatasetInput(ds, tags=[InputTag("mlflow.data.context", role)]))
        self.client.log_inputs(self.run_id, datasets=inputs)

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
            with scrubbed_file(path) as clean:
                self.client.log_artifact(self.run_id, str(clean), folder)

    def end(self, status: str = "FINISHED") -> None:
        """End the run; ``time/active_s`` (step = session) adds this session's time to the earlier ones."""
        if self.run_id is not None:
            active = self.active_before + time.time() - self.started
            self.metrics({"time/active_s": active, "time/sessions": self.session}, self.session)
            self.client.set_terminated(self.run_id, status=status)

    @property
    def location(self) -> str:
        if self.run_id is None:
            return "MLflow tracking disabled"
        return (f"MLflow run {self.run_id} in experiment '{self.cfg.experiment}' at {self.cfg.uri}\n"
                f"see it: {ui_hint(self.cfg.uri, self.exp_id)}")
