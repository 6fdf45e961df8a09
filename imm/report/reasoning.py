"""The report's step-level numbers, as tidy rows over run records (pure functions, like tables.py).

- ``step_points``: per method and iteration, the shares of sound / shortcut / flawed reasoning
  among the kept samples (``gen/<class>_share``) and among the final model's right ID and OOD
  answers (``eval/<kind>/<id|ood>/<class>_share``);
- ``transition_points``: per method, set and iteration, the share of items the final model forgot
  since the base model and the share it newly solved (``eval/<kind>/<set>/forgotten``, ...);
- ``iteration_table``: per method and iteration, ID / OOD with the kept samples' count and shares.

Testbed runs log these; a run on benchmarks without step structure has none and adds no row.
"""

from __future__ import annotations

from imm.analysis.reasoning import SHARES
from imm.report.render import fmt
from imm.report.tables import SUMMARY_SETS, RunRecord, base_value, final_kind, method_lines, metric_at, stat

MEASURES = ("forgotten", "newly_solved")


def _points(runs: list[RunRecord], key_of) -> list[tuple[int, object]]:
    """(step, Stat over the runs) for every step any run logged its metric ``key_of(run)`` at."""
    keys = {r.run_id: key_of(r) for r in runs}
    steps = sorted({s for r in runs for s in r.metrics.get(keys[r.run_id], {})})
    return [(step, s) for step in steps if (s := stat([metric_at(r, keys[r.run_id], step) for r in runs]))]


def _share_key(rec: RunRecord, of: str, share: str) -> str:
    return f"gen/{share}_share" if of == "kept" else f"eval/{final_kind(rec)}/{of}/{share}_share"


def step_points(records: list[RunRecord]) -> list[dict[str, object]]:
    """Tidy rows (setting, method, of, share, step, mean, std, n); ``of`` is "kept" (the samples an
    iteration trained on) or "id" / "ood" (the final model's right answers on those sets)."""
    rows = []
    for setting, line, runs in method_lines(records):
        for of in ("kept", "id", "ood"):
            for share in SHARES:
                for step, s in _points(runs, lambda r: _share_key(r, of, share)):
                    rows.append({"setting": setting, "method": line, "of": of, "share": share, "step": step,
                                 "mean": s.mean, "std": s.std, "n": s.n})
    return rows


def transition_points(records: list[RunRecord], sets: list[str]) -> list[dict[str, object]]:
    """Tidy rows (setting, method, set, measure, step, mean, std, n): the final model's (merged for
    merging methods) forgotten and newly solved shares of each set's items against the base model."""
    rows = []
    for setting, line, runs in method_lines(records):
        for set_name in sets:
            for measure in MEASURES:
                for step, s in _points(runs, lambda r: f"eval/{final_kind(r)}/{set_name}/{measure}"):
                    rows.append({"setting": setting, "method": line, "set": set_name, "measure": measure,
                                 "step": step, "mean": s.mean, "std": s.std, "n": s.n})
    return rows


ITERATION_COLS = ("ID", "OOD", "kept", "sound", "shortcut", "flawed")


def iteration_table(records: list[RunRecord]) -> tuple[list[str], list[list[str]]]:
    """Per method and iteration: ID and OOD pass@1 of its final model (merged for merging methods)
    and the kept samples that trained it (how many, and their sound / shortcut / flawed shares),
    mean ± sample std over seeds (%; counts as numbers). Header and rows of cell strings."""
    def cell(runs, key, step, count=False):
        s = stat([metric_at(r, key, step) for r in runs])
        if s is None or not count:
            return fmt(s)
        return f"{s.mean:.0f}" if s.n < 2 else f"{s.mean:.0f} ± {s.std:.0f}"

    body = [["Base", "0"] + [fmt(base_value(records, g)) for g in SUMMARY_SETS] + [""] * 4]
    for setting, line, runs in method_lines(records):
        name = f"{line} ({setting})" if setting else line
        kind = final_kind(runs[0])
        steps = sorted({s for r in runs for s in r.metrics.get(f"eval/{kind}/id", {}) if s > 0})
        for t in steps:
            body.append([name, str(t)] + [cell(runs, f"eval/{kind}/{g}", t) for g in SUMMARY_SETS]
                        + [cell(runs, "gen/kept", t, count=True)]
                        + [cell(runs, f"gen/{share}_share", t) for share in SHARES])
    return ["method", "iteration", *ITERATION_COLS], body
