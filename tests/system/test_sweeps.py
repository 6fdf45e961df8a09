"""Every shipped sweep file runs as a dry multirun: each job of its grid composes, validates and is planned
(imm/plan/job.py); a local grid's jobs are written, a SLURM grid's dry run submits nothing (and its
preflight refuses it, here, only for a package this machine lacks: vllm has no CPU build)."""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
# the paper's OOD suite has two sets without a hub split: their files, as a real run gives them
FILES = [f"dataset.files.{name}.test={ROOT / 'tests' / 'fixtures' / name / 'test.jsonl'}" for name in ("mawps", "sat_math")]


def _count(values: str) -> int:
    """How many values a sweeper entry holds: "a,b,c" or Hydra's range(start, stop[, step])."""
    if values.startswith("range("):
        return len(range(*(int(x) for x in values[len("range("):-1].split(","))))
    return len(values.split(","))


@pytest.mark.parametrize("sweep", sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml")))
def test_every_sweep_composes_every_job(sweep, tmp_path, request):
    """A dry multirun: the grid callback composes and validates every job; each job writes its config.
    The seed axis is run at its first seed: a seed is a number, it changes nothing that composes. A
    SmolLM2 grid reads the folder the smollm2 fixture prepares once (preparing it under each test's outputs is 40 s)."""
    params = dict(OmegaConf.load(ROOT / "sweeps" / f"{sweep}.yaml").hydra.sweeper.params)
    one_seed = ["run.seed=0"] if "run.seed" in params else []
    params.pop("run.seed", None)
    text = (ROOT / "sweeps" / f"{sweep}.yaml").read_text()
    model = [f"model.path={request.getfixturevalue('smollm2')}"] if "real_llm" in sweep or "smollm2" in text else []
    out = subprocess.run([sys.executable, "-m", "imm.main", "-m", "-cd", "sweeps", "-cn", sweep,
                          "run.dry_run=true", f"outputs={tmp_path}", "tracking.enabled=false", *one_seed, *FILES, *model],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    on_slurm = "hydra/launcher: slurm" in text
    if out.returncode != 0:  # only the preflight may refuse, and only for packages this machine lacks (vllm)
        missing = [line.split(": ", 1)[1].split()[0] for line in out.stderr.splitlines() if "is not importable here" in line]
        assert on_slurm and missing and "nothing was submitted" in out.stderr, out.stderr[-2000:]
        assert all(importlib.util.find_spec(name) is None for name in missing), missing
    expected = math.prod(_count(str(v)) for v in params.values())
    if sweep == "baselines":  # the six methods and the three SFT interventions
        assert expected == 9
    planned = [line for line in out.stdout.splitlines() if line.startswith("job #")]
    assert len(planned) == expected and all(("GPU-h" in line or "CPU-h" in line) for line in planned)
    written = list((tmp_path / "jobs").glob("*/config.yaml"))
    assert out.stdout.count("dry run: config valid") == len(written) == (0 if on_slurm else expected)
