"""Run records from job folders, for jobs that ran without tracking (``tracking.enabled=false``).

Such a job writes what it measured to ``<job folder>/results.json`` (every evaluated model's metrics
and the kept samples' figures per iteration) beside its ``config.yaml``. This module turns each
folder into the :class:`RunRecord` an MLflow run would have given, so that ``python -m imm.report
--jobs <folders>`` builds the same tables; a folder without ``results.json`` (a job stopped before
its end) is skipped, as an unfinished MLflow run is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from imm.report.tables import RunRecord, canonical_key
from imm.tracking import flatten, grid_tags

LABEL = re.compile(r"^(Base|SFT|Merge)\s*(\d*)")
KINDS = {"Base": "base", "SFT": "sft", "Merge": "merged"}


def record(job: Path) -> RunRecord | None:
    """The run record of one job folder, or None where the job did not finish."""
    if not (job / "results.json").exists():
        return None
    cfg = yaml.safe_load((job / "config.yaml").read_text())
    results = json.loads((job / "results.json").read_text())
    metrics: dict[str, dict[int, float]] = {}
    for row in results["rows"]:
        m = LABEL.match(row["label"])
        if not m:
            continue
        kind, step = KINDS[m.group(1)], int(m.group(2) or 0)
        for key, value in row.items():
            if key != "label" and isinstance(value, (int, float)):
                metrics.setdefault(canonical_key(f"eval/{kind}/{key}"), {})[step] = float(value)
    for kept in results.get("kept", []):
        for key, value in kept.items():
            if key != "iteration" and isinstance(value, (int, float)):
                metrics.setdefault(f"gen/{key}", {})[int(kept["iteration"])] = float(value)
    return RunRecord(job.name, "FINISHED", "jobs", int((job / "results.json").stat().st_mtime * 1000),
                     grid_tags(cfg) | {"sweep_id": "single"}, flatten(cfg), metrics)


def load_jobs(paths: list[Path]) -> tuple[list[RunRecord], int]:
    """Records of the finished jobs among ``paths``, and how many were skipped as unfinished."""
    records = [record(p) for p in paths if (p / "config.yaml").exists()]
    return [r for r in records if r], sum(r is None for r in records)
