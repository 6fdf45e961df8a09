"""The report of one sweep, when the sweep ends: printed, written beside the sweep, logged to its parent run.

Called by the multirun-end callback (imm/sweep_check.py), so ``python -m imm.main -m ...`` ends with
the α table of its own grid; the same as ``python -m imm.report --sweep-id <id>`` run by hand, but
logged to the sweep's run (artifacts under report/) rather than to a separate report run.
"""

from __future__ import annotations

from pathlib import Path

from imm.report import cli, html, tables
from imm.tracking import TrackingConfig, ui_hint


def _method_and_alpha(runs: list[tables.RunRecord]) -> tuple[str, float]:
    """The α table's method (imm if the sweep ran it, else its first merging method) and the curves' α."""
    merging = [r for r in runs if r.merges]
    methods = [r.method for r in merging]
    method = "imm" if "imm" in methods else (methods[0] if methods else "imm")
    alphas = sorted({r.alpha for r in merging if r.method == method})
    alpha = 0.5 if 0.5 in alphas or not alphas else alphas[len(alphas) // 2]
    return method, alpha


def report_sweep(tracking: TrackingConfig, sweep_id: str, out: Path, parent_run: str | None) -> Path | None:
    """Build the sweep's report into ``out`` and print it; log it to ``parent_run``. None when no run finished."""
    records, _ = cli.load_runs(tracking.uri, [tracking.experiment])
    runs, skipped = tables.select(records, {"sweep_id": sweep_id})
    if not runs:
        print(f"sweep {sweep_id}: " + cli.no_runs_message([tracking.experiment], {"sweep_id": sweep_id}, skipped))
        return None
    method, alpha = _method_and_alpha(runs)
    title = f"sweep {sweep_id} ({tracking.experiment})"
    files, text = cli.build(runs, out, method, alpha, title)
    note = f"{len(runs)} finished runs" + (f"; skipped: {', '.join(f'{n} {s}' for s, n in skipped.items())}"
                                           if skipped else "")
    page = html.page(out, title, note)
    print(f"\n=== {title}: {note}\n{text}\nreport: {page}")
    if parent_run:
        import mlflow

        client = mlflow.MlflowClient(tracking.uri)
        client.log_artifacts(parent_run, str(out), "report")
        exp_id = client.get_run(parent_run).info.experiment_id
        print(f"logged to the sweep's MLflow run {parent_run} (artifacts report/)\n"
              f"see it: {ui_hint(tracking.uri, exp_id)}")
    return page
