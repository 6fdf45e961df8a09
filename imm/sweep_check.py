"""A Hydra callback that checks a whole multirun grid before any job starts.

Hydra composes each job's config only when the job runs; on a cluster that is after submission.
``ValidateSweep`` expands the grid the way the basic sweeper does, composes and validates every
job's config, and creates the MLflow store and experiments once (concurrent jobs must not race
to create one SQLite database). A bad value anywhere in the grid stops the sweep with nothing run.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from imm.config import validate
from imm.tracking import ensure_store

log = logging.getLogger(__name__)


def grid(cfg: DictConfig) -> list[list[str]]:
    """Every job's override list, as the basic sweeper expands them."""
    params = cfg.hydra.sweeper.get("params") or {}
    overrides = [f"{k}={v}" for k, v in params.items()] + list(cfg.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


class ValidateSweep(Callback):
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
                raise SystemExit(f"imm: job #{i} ({' '.join(overrides)}) has a bad config, nothing was "
                                 f"launched: {type(e).__name__}: {e}") from e
        stores = {(c.tracking.uri, c.tracking.experiment): c.tracking for c in typed if c.tracking.enabled}
        for tracking in stores.values():
            ensure_store(tracking)
        log.info("checked %d job configs; MLflow store ready for %s", len(jobs),
                 ", ".join(e for _, e in sorted(stores)) or "no tracking")
