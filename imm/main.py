"""The entrypoint: one job = one method on one model and dataset, T iterations, tracked in MLflow.

    python -m imm.main                                           # the testbed default (imm, α 0.5)
    python -m imm.main method=vanilla run.iterations=2            # any override
    python -m imm.main -m method=imm,vanilla merge.alpha=0.1,0.5,0.9   # a grid (Hydra multirun)
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from imm import loop, summary
from imm.config import validate
from imm.provenance import provenance
from imm.tracking import Tracker

log = logging.getLogger("imm")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def tags(cfg, hc, prov: dict) -> dict[str, str]:
    sweep_id = Path(hc.sweep.dir).name if hc.mode.name == "MULTIRUN" else "single"
    return {"method": cfg.method.name, "alpha": str(cfg.merge.alpha), "p": str(cfg.merge.p),
            "model": cfg.model.name, "dataset": cfg.dataset.name, "seed": str(cfg.run.seed),
            "sweep_id": sweep_id, "git_sha": prov["git_sha"]}


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(dcfg: DictConfig) -> float:
    hc = HydraConfig.get()
    if not dcfg.run.out_dir:
        dcfg.run.out_dir = hc.runtime.output_dir
    cfg = validate(dcfg)  # bad values and missing files stop here, before any compute
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    (out / "config.yaml").write_text(OmegaConf.to_yaml(dcfg, resolve=True))
    (out / "provenance.json").write_text(json.dumps(prov, indent=2))
    if cfg.run.dry_run:
        print(f"dry run: config valid, written to {out / 'config.yaml'}")
        return float("nan")

    tracker = Tracker(cfg.tracking)
    name = cfg.tracking.run_name or f"{cfg.method.name}-a{cfg.merge.alpha}-p{cfg.merge.p}-s{cfg.run.seed}"
    tracker.start(name, tags(cfg, hc, prov), OmegaConf.to_container(dcfg, resolve=True))
    tracker.artifact(out / "config.yaml")
    tracker.artifact(out / "provenance.json")
    signal.signal(signal.SIGTERM, _raise_interrupt)
    status = "FAILED"
    try:
        result = loop.run(cfg, tracker, out)
        plot = summary.plot(result.rows, out / "iterations.png", f"{name} on {cfg.dataset.name}")
        tracker.artifact(plot, "plots")
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except Exception:
        log.exception("run failed; MLflow status FAILED (%s)", tracker.location)
        raise
    finally:
        tracker.end(status)
    print(f"\n{name}  ({cfg.model.name} on {cfg.dataset.name}, {cfg.run.iterations} iterations)")
    print(summary.table(result.rows, result.sets))
    print(f"\n{tracker.location}\nrun folder: {out}")
    return result.rows[-1][1].get("ood", float("nan"))


if __name__ == "__main__":
    main()
