"""Before a job waits in a queue: can its environment run it? ``run.dry_run=true`` runs these checks, and a
SLURM grid runs them before it submits; a job checks the GPUs torch sees when it starts.

- the packages the config needs are importable (vllm for engine.backend=vllm, trl and datasets for
  sft.backend=trl, deepspeed, mlflow, datasets for hub splits, gguf for a packaged model);
- with HF_HUB_OFFLINE set (compute nodes without network, or ``plan.offline=true``) the hub model
  and hub splits resolve from the local cache, else the message gives the command that fills the
  cache the jobs read (HF_HOME as set where it is run);
- at job start under SLURM: torch sees the GPUs the job asked for (a node can hide some).

``plan.preflight_srun=true`` runs the same checks on a compute node first, in one one-task ``srun`` with
the grid's GPUs, where the jobs will run:

    python -m imm.plan.preflight model=qwen2.5-1.5b-instruct dataset=gsm8k --gpus 1   # what srun runs
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt"]  # what imm.stages.local_dir fetches


def offline(cfg) -> bool:
    """Whether the jobs cannot reach the hub: HF_HUB_OFFLINE set, or plan.offline (nodes without network)."""
    return cfg.plan.offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def hub_datasets(ds) -> list[tuple[str, tuple, str]]:
    """(hub id, configs, split) of every split the job loads from the hub (no local file given)."""
    if ds.kind != "benchmarks":
        return []
    from imm.data.benchmarks import get

    need = [(ds.train_set, "train")] + [(name, "test") for name in ds.test_sets]
    out = []
    for name, split in need:
        if getattr(ds.files.get(name), split, None) or ds.world_files:
            continue
        bench = get(name)
        if bench.hub:
            out.append((bench.hub, tuple(bench.configs), bench.split if split == "test" and bench.split else split))
    return out


def packages(cfg) -> dict[str, str]:
    """Import name -> the setting that needs it."""
    need = {"torch": "every stage", "transformers": "every stage", "safetensors": "checkpoints"}
    if cfg.engine.backend == "vllm":
        need["vllm"] = "engine.backend=vllm (pip install -e .[vllm])"
    if cfg.sft.backend == "trl":
        need |= {"trl": "sft.backend=trl", "datasets": "sft.backend=trl (its training set)"}
    if cfg.sft.deepspeed:
        need["deepspeed"] = f"sft.deepspeed={cfg.sft.deepspeed}"
    if cfg.tracking.enabled:
        need["mlflow"] = "tracking.enabled (or tracking.enabled=false)"
    if hub_datasets(cfg.dataset):
        need["datasets"] = "hub splits without a local file (dataset.files.<set>.<split>)"
    if any(m.prepare and not Path(m.path).is_dir() for m in (cfg.model, cfg.teacher) if m):
        need["gguf"] = "a packaged model prepared on first use (imm/prepare.py)"
    return need


def missing_packages(cfg) -> list[str]:
    return [f"{name} is not importable here ({why})" for name, why in packages(cfg).items()
            if importlib.util.find_spec(name) is None]


def hub_cache() -> str | None:
    """The hub cache the jobs read, from the environment as it is now (None: huggingface_hub's default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    return os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else None


def cached_model(repo: str) -> bool:
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(repo, allow_patterns=MODEL_FILES, local_files_only=True, cache_dir=hub_cache())
    except Exception:
        return False
    return (Path(folder) / "config.json").is_file()


def cached_dataset(hub: str, configs: tuple, split: str) -> bool:
    """Whether ``datasets`` loads the split with the hub out of reach (in a child: the flag is read at import)."""
    code = ("import sys; from datasets import load_dataset\n"
            f"for c in {list(configs)!r}: load_dataset({hub!r}, c, split={split!r})")
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True).returncode == 0


def cache_prefix() -> str:
    return f"HF_HOME={shlex.quote(os.environ['HF_HOME'])} " if os.environ.get("HF_HOME") else ""


def unresolved(cfg) -> list[str]:
    """What an offline job could not load, each with the command that caches it ahead (empty: online)."""
    if not offline(cfg):
        return []
    out = []
    for m in (cfg.model, cfg.teacher):
        if m and not Path(m.path).is_dir() and not m.prepare and not cached_model(m.path):
            out.append(f"model {m.path} is not in the hub cache and the jobs are offline; cache it first: "
                       f"{cache_prefix()}python -c \"from huggingface_hub import snapshot_download; "
                       f"snapshot_download('{m.path}', allow_patterns={MODEL_FILES})\"")
    if importlib.util.find_spec("datasets") is None:
        return out
    for hub, configs, split in hub_datasets(cfg.dataset):
        if not cached_dataset(hub, configs, split):
            out.append(f"dataset {hub} ({split}) is not in the datasets cache and the jobs are offline; cache it "
                       f"first: {cache_prefix()}python -c \"from datasets import load_dataset; "
                       f"[load_dataset('{hub}', c, split='{split}') for c in {list(configs)}]\"")
    return out


def summary(cfg) -> str:
    """What a passed preflight checked."""
    where = ("the model and data are in the local caches (offline)" if offline(cfg) else
             "the hub is asked at job start (HF_HUB_OFFLINE=1 or plan.offline=true checks the caches instead)")
    return f"ok: {', '.join(sorted(set(packages(cfg))))} importable; {where}"


def check(cfg) -> list[str]:
    """Every reason this environment cannot run the job (empty: it can)."""
    return missing_packages(cfg) + unresolved(cfg)


def gpus_at_start(res) -> str | None:
    """Under SLURM: the refusal when torch sees other GPUs than the job asked for (None: as asked)."""
    if res.where != "slurm":
        return None
    import torch

    seen = torch.cuda.device_count()
    if seen == res.gpus:
        return None
    return (f"the job asked for {res.gpus} GPUs (hydra.launcher.gpus_per_node) and torch sees {seen} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda}); the plan assumed {res.gpus}: check the node's GPUs and "
            f"that torch is a CUDA build")


def srun_command(launcher, overrides: list[str]) -> list[str]:
    """The one-task srun that runs this module's checks on a compute node with the jobs' GPUs."""
    gpus = int(launcher.get("gpus_per_node") or 0)
    cmd = ["srun", "--ntasks=1", f"--cpus-per-task={launcher.get('cpus_per_task') or 1}", "--time=10"]
    if launcher.get("partition"):
        cmd.append(f"--partition={launcher.partition}")
    if gpus:
        cmd.append(f"--gpus={gpus}")
    return cmd + [sys.executable, "-m", "imm.plan.preflight", *overrides, "--gpus", str(gpus)]


def main(argv=None) -> None:
    import argparse
    from hydra import compose, initialize_config_dir

    from imm.config import validate

    ap = argparse.ArgumentParser(description="the job's environment checks (imm/plan/preflight.py), here")
    ap.add_argument("overrides", nargs="*", help="the job's config overrides, as for python -m imm.main")
    ap.add_argument("--gpus", type=int, default=None, help="GPUs torch must see (the jobs' request)")
    args = ap.parse_args(argv)
    with initialize_config_dir(str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        dcfg = compose("config", args.overrides)
    dcfg.run.out_dir = dcfg.run.out_dir or "unused"
    problems = check(validate(dcfg))
    if args.gpus is not None:
        from imm.plan.job import Resources

        problems += [p for p in [gpus_at_start(Resources("slurm", args.gpus, 0.0))] if p]
    for p in problems:
        print(f"PREFLIGHT: {p}")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
