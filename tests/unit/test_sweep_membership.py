"""Which runs a sweep reports (its own and those it reused), and which grid the pre-check expands."""

import pytest
from hydra import compose, initialize_config_dir

import imm.config  # noqa: F401  (registers the "schema" node)
from imm.report.tables import RunRecord, select
from imm.sweep_check import grid


def test_a_run_continued_by_a_sweep_counts_as_the_sweeps():
    own = RunRecord("a", tags={"method": "imm", "alpha": "0.1", "sweep_id": "S"})
    reused = RunRecord("b", tags={"method": "imm", "alpha": "0.5", "sweep_id": "single", "sweep.S": "1"})
    other = RunRecord("c", tags={"method": "imm", "alpha": "0.9", "sweep_id": "T"})
    runs, _ = select([own, reused, other], {"sweep_id": "S"})
    assert [r.run_id for r in runs] == ["a", "b"]


def _cfg(root, overrides):
    with initialize_config_dir(str(root / "conf"), version_base="1.3"):
        return compose("config", overrides, return_hydra_config=True)


def test_grid_expands_with_the_basic_sweeper(root):
    cfg = _cfg(root, [])
    cfg.hydra.overrides.task = ["method=imm,vanilla", "merge.alpha=0.1,0.9"]  # what `-m` hands the callback
    assert sorted(grid(cfg)) == sorted([f"method={m}", f"merge.alpha={a}"] for m in ("imm", "vanilla")
                                       for a in ("0.1", "0.9"))


def test_grid_refuses_a_sweeper_it_cannot_expand(root):
    cfg = _cfg(root, [])
    cfg.hydra.sweeper._target_ = "hydra.core.plugins.Plugins"  # any class that is not a grid sweeper
    with pytest.raises(SystemExit, match="basic sweeper only"):
        grid(cfg)
