"""The user's sweep with the stage store against the same sweep with sharing off.

    python -m bench.sweep                      # reduced sizes (about 10 minutes on 2 cores)
    python -m bench.sweep --full               # the default testbed sizes

Runs ``python -m imm.main -m method=imm,vanilla merge.alpha=0.1,0.5,0.9`` twice in fresh output
folders, once with ``stages.share=true`` and once with ``stages.share=false``, and prints wall
time, executed stages (from MLflow) and the grid's unique stages (the shared store's outputs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow

from imm.store import finished_outputs

GRID = ["-m", "method=imm,vanilla", "merge.alpha=0.1,0.5,0.9"]
REDUCED = ["dataset.n_train=200", "dataset.n_test=200", "run.iterations=2"]


def run_sweep(outputs: Path, share: bool, sizes: list[str]) -> tuple[float, int, int]:
    """(wall seconds, stages executed over all jobs, jobs) of one sweep."""
    cmd = [sys.executable, "-m", "imm.main", *GRID, *sizes, f"stages.share={str(share).lower()}", f"outputs={outputs}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    took = time.perf_counter() - start
    client = mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("imm-testbed-testbed").experiment_id])
    return took, int(sum(r.data.metrics["stages/executed"] for r in runs)), len(runs)


def unique_stages(outputs: Path) -> int:
    return len(finished_outputs(outputs / "stages"))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="default testbed sizes instead of reduced ones")
    p.add_argument("--out", default=None, help="folder for the two sweeps (default: a temporary one)")
    args = p.parse_args(argv)
    sizes = [] if args.full else REDUCED
    root = Path(args.out or tempfile.mkdtemp(prefix="imm-sweep-bench-"))
    print(f"sweep: python -m imm.main {' '.join(GRID + sizes)}  (outputs under {root})")
    rows = []
    for share in (True, False):
        took, executed, jobs = run_sweep(root / ("shared" if share else "unshared"), share, sizes)
        rows.append((share, took, executed, jobs))
    unique = unique_stages(root / "shared")
    print(f"{'stages.share':<14}{'jobs':>6}{'wall s':>10}{'executed':>10}{'unique':>8}")
    for share, took, executed, jobs in rows:
        print(f"{str(share).lower():<14}{jobs:>6}{took:>10.1f}{executed:>10}{unique:>8}")
    print(f"wall time shared / unshared: {rows[0][1] / rows[1][1]:.2f}; "
          f"executed = unique stages: {rows[0][2] == unique}")


if __name__ == "__main__":
    main()
