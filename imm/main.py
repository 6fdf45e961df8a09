"""The entrypoint: one job = one method on one model and dataset, T iterations, tracked in MLflow.

    python -m imm.main                                                 # the testbed default (imm, α 0.5)
    python -m imm.main method=vanilla run.iterations=2                  # any override
    python -m imm.main -m method=imm,vanilla merge.alpha=0.1,0.5,0.9    # a grid (Hydra multirun)

A job's folder and MLflow run are found again from its config: the same command after a crash,
a kill or a SLURM requeue continues where the job stopped.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf


from imm.report import console as summary
from imm.config import validate
from imm.plan import preflight
from imm.plan.job import dry_run_data, plan_job, resources
from imm.provenance import provenance
from imm.redact import scrub
from imm.store import StageStore, digest
from imm.stages import decoding_of, sft_arithmetic
from imm.tracking import Tracker, grid_tags, source_tags

log = logging.getLogger("imm")
NOT_IN_JOB_KEY = ("tracking", "stages", "outputs", "plan")  # where results are logged/stored, not what they are


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def job_key(resolved: dict) -> str:
    """The job's identity: its resolved config without run.out_dir, run.dry_run and storage places."""
    ident = {k: v for k, v in resolved.items() if k not in NOT_IN_JOB_KEY}
    ident["run"] = {k: v for k, v in resolved["run"].items() if k not in ("out_dir", "dry_run")}
    return digest(ident)


def sweep_id() -> str:
    """The multirun folder's name ("" for a single run): names the sweep in MLflow and in reports."""
    hc = HydraConfig.get()
    return Path(hc.sweep.dir).name if hc.mode.name == "MULTIRUN" else ""


def tags(params: dict, prov: dict) -> dict[str, str]:
    """The grid point's tags (imm.tracking.grid_tags); ``sweep_id`` is the sweep that created the run
    (later ones add ``sweep.<id>``)."""
    return grid_tags(params) | {"sweep_id": sweep_id() or "single", "git_sha": prov["git_sha"]} | source_tags(prov["git_sha"])


def quiet_unused_libraries(cfg) -> None:
    """Saving a model makes accelerate import DeepSpeed when it is installed, and DeepSpeed then warns
    that it picked the CPU. A run without DeepSpeed and without CUDA names the CPU itself: no warning."""
    import torch

    if not cfg.sft.deepspeed and not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _mark_killed(tracker: Tracker, previous):
    """Under submitit SIGTERM is ignored (a cancelled job is killed next; a preempted one gets USR2 and
    requeues): end the MLflow run KILLED now, from a thread (not inside MLflow calls the signal interrupted).
    A requeued job reopens the run; a job that goes on to finish ends it FINISHED."""
    def handler(signum, frame):
        threading.Thread(target=tracker.end, args=("KILLED",), daemon=False).start()
        if callable(previous):
            previous(signum, frame)
    return handler


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(dcfg: DictConfig) -> float:
    key = job_key(OmegaConf.to_container(dcfg, resolve=True))
    if not dcfg.run.out_dir:
        dcfg.run.out_dir = f"{dcfg.outputs}/jobs/{key}"
    cfg = validate(dcfg)  # bad values and missing files stop here, before any compute
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    params = OmegaConf.to_container(dcfg, resolve=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(scrub(params)))  # no secret on disk either (imm/redact.py)
    (out / "provenance.json").write_text(json.dumps(scrub(prov), indent=2))
    res = resources(HydraConfig.get().launcher, cfg.plan)
    plan = plan_job(cfg, res, cfg.model.name)
    if cfg.run.dry_run:
        print(plan.line())
        dry_run_data(cfg.dataset)
        unready = preflight.check(cfg)  # packages, and the model and data offline (imm/plan/preflight.py)
        print(f"dry run: config valid, written to {out / 'config.yaml'}")
        print("preflight: " + ("; ".join(unready) if unready else preflight.summary(cfg)))
        if plan.problems or unready:
            raise SystemExit(f"imm: the job does not fit what it asks for: {'; '.join(plan.problems + unready)}")
        return float("nan")
    gpus = preflight.gpus_at_start(res)  # under SLURM: the GPUs torch sees, not the request
    if plan.at_start or gpus:  # e.g. under SLURM without a GPU, a large model would crawl on the CPU until its time limit
        raise SystemExit(f"imm: {'; '.join(plan.at_start + ([gpus] if gpus else []))}")

    store = StageStore(Path(cfg.stages.root), salt="" if cfg.stages.share else key,
                       lock_stale_s=cfg.stages.lock_stale_s)
    tracker = Tracker(cfg.tracking)
    name = cfg.tracking.run_name or f"{cfg.method.name}-a{cfg.merge.alpha}-p{cfg.merge.p}-s{cfg.run.seed}"
    params["run"].pop("dry_run")
    quiet_unused_libraries(cfg)
    decoding = {f"sampling.{k}": v for k, v in decoding_of(cfg.model).items()}  # auto resolved on this machine
    decoding["sft.dtype"] = sft_arithmetic(cfg.model)
    if tracker.start(key, name, tags(params, prov) | decoding, params, sweep_id()):
        log.info("continuing job %s and its MLflow run (%s)", key, tracker.location)
    tracker.artifact(out / "config.yaml")
    tracker.artifact(out / "provenance.json")
    if "SUBMITIT_EXECUTOR" not in os.environ:  # under submitit, SIGTERM precedes its USR2 checkpoint/requeue
        signal.signal(signal.SIGTERM, _raise_interrupt)
    else:
        signal.signal(signal.SIGTERM, _mark_killed(tracker, signal.getsignal(signal.SIGTERM)))
    status = "FAILED"
    try:
        from imm import loop  # torch, transformers and the stages: not loaded for a dry run

        result = loop.run(cfg, tracker, out, store)
        (out / "results.json").write_text(json.dumps(  # what the job measured, readable without MLflow
            {"rows": [{"label": label, **metrics} for label, metrics in result.rows],
             "kept": [{"iteration": t, **shares} for t, shares in result.kept], "seconds": result.seconds}, indent=1))
        plot = summary.plot(result.rows, out / "iterations.png", f"{name} on {cfg.dataset.name}")
        tracker.artifact(plot, "plots")
        tracker.metrics({f"time/{k}_s": v for k, v in result.seconds.items()}, cfg.run.iterations)
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):  # SystemExit: submitit requeues the job, which resumes this run
        status = "KILLED"
        raise
    except Exception:
        log.exception("run failed; MLflow status FAILED (%s)", tracker.location)
        raise
    finally:
        tracker.end(status)
    print(f"\n{name}  ({cfg.model.name} on {cfg.dataset.name}, {cfg.run.iterations} iterations)")
    print(summary.table(result.rows, result.sets, result.kept))
    print("stage time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.seconds.items()))
    print(f"stages: {len(store.executed)} executed, {len(store.reused)} reused")
    print(f"\n{tracker.location}\njob folder: {out}")
    return result.rows[-1][1].get("ood", float("nan"))


if __name__ == "__main__":
    main()
