"""The baselines table (paper Table 5, and Table 9's first-iteration view): every method and SFT
intervention side by side at one iteration, from run records (pure functions, like tables.py).

Rows: Base, then vanilla, STaR-restart, mixture, accumulation, vanilla with each SFT intervention,
IMM, IIMM (as logged); columns: the test sets, ID and OOD means, and where the runs logged it the
sound share of the kept samples that trained that iteration's model.

    python -m imm.report --iteration 1     # the paper's first-iteration tables
"""

from __future__ import annotations

from imm.report.tables import (Grid, RunRecord, Stat, base_value, final_kind, method_order, metric_at, set_names,
                               stat)

# the rows in the paper's order (Table 5: the self-improvement baselines, the SFT interventions, then merging)
NAMES = {"vanilla": "vanilla", "star": "STaR-restart", "mixture": "mixture", "accumulation": "accumulation",
         "vanilla+grad_decay": "gradient decay", "vanilla+grad_clip": "gradient clipping",
         "vanilla+weight_mask": "weight masking", "imm": "IMM", "iimm": "IIMM"}
KEPT_SOUND = "kept sound"  # the column of the kept samples' sound share


def name(line: str) -> str:
    return NAMES.get(line, line)


def order(line: str) -> tuple:
    """NAMES' order; other lines (an intervention on another method) after them, in the report's order."""
    known = list(NAMES)
    return (known.index(line) if line in known else len(known), method_order(line))


def baselines_table(records: list[RunRecord], iteration: int | None = None) -> Grid:
    """Cells: pass@1 over seeds of each line's final model (merged for merging methods) at
    ``iteration`` (None: each run's last); a run that did not reach it leaves its cell out."""
    sets = set_names(records)
    lines: dict[str, list[RunRecord]] = {}
    for r in records:
        lines.setdefault(r.line, []).append(r)
    cols = sets + ([KEPT_SOUND] if any("gen/sound_share" in r.metrics for r in records) else [])
    cells: dict[tuple[str, str], Stat] = {}
    for s in sets:
        if (b := base_value(records, s)) is not None:
            cells[("Base", s)] = b
    rows = ["Base"]
    for line in sorted(lines, key=order):
        runs, row = lines[line], name(line)
        rows.append(row)
        for col in cols:
            key = "gen/sound_share" if col == KEPT_SOUND else None
            vals = [metric_at(r, key or f"eval/{final_kind(r)}/{col}", iteration) for r in runs]
            if (cell := stat(vals)) is not None:
                cells[(row, col)] = cell
    corner = f"iteration {iteration}" if iteration is not None else "final iteration"
    return Grid(corner, rows, cols, cells)

