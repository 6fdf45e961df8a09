"""Every evaluated stage of every method line (Base, SFT 1, Merge 1, ...), as a table: pass@1 of each
set with ID and OOD, the shares of answers without a final answer and of answers that ran to the token
limit, pass@1 among the answers that state one (each the mean over the single sets), and the OOD items forgotten / newly solved since the base
model; mean ± sample std over seeds (%). Where the paper's figures show lines, this is their table,
with what a small model's failures look like (``<set>/no_answer``, ``<set>/ran_to_limit``) beside them.
"""

from __future__ import annotations

from statistics import fmean

from imm.report.render import fmt
from imm.report.tables import SUMMARY_SETS, RunRecord, method_lines, metric_at, stat

SHARE_COLS = (("no answer", "no_answer"), ("ran to limit", "ran_to_limit"), ("right among answered", "right_answered"))
MOVES = (("OOD forgotten", "ood/forgotten"), ("OOD newly solved", "ood/newly_solved"))


def mean_over_sets(run: RunRecord, kind: str, sets: list[str], suffix: str, step: int) -> float | None:
    values = [metric_at(run, f"eval/{kind}/{s}/{suffix}", step) for s in sets]
    values = [v for v in values if v is not None]
    return fmean(values) if values else None


def stage_rows(records: list[RunRecord]):
    """(line name, its runs, stage, metric kind, step) for every evaluated stage of every method line:
    Base, then SFT t (and Merge t for merging methods) at each iteration."""
    for setting, line, runs in method_lines(records):
        name = f"{line} ({setting})" if setting else line
        steps = sorted({s for r in runs for key in ("eval/sft/id", "eval/merged/id")  # run.evaluate=final: merged only
                        for s in r.metrics.get(key, {}) if s > 0})
        kinds = [("SFT", "sft"), ("Merge", "merged")] if runs[0].merges else [("SFT", "sft")]
        for stage, kind, step in [("Base", "base", 0)] + [(f"{n} {t}", k, t) for t in steps for n, k in kinds]:
            yield name, runs, stage, kind, step


def stage_table(records: list[RunRecord], sets: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of cell strings; ``sets``: the sets to show (single sets, then id and ood)."""
    single = [s for s in sets if s not in SUMMARY_SETS]
    header = ["method", "stage", "seeds", *[s.upper() if s in SUMMARY_SETS else s for s in sets],
              *[name for name, _ in SHARE_COLS], *[name for name, _ in MOVES]]
    body = []
    for name, runs, stage, kind, step in stage_rows(records):
        cells = [fmt(stat([metric_at(r, f"eval/{kind}/{s}", step) for r in runs])) for s in sets]
        if not any(cells):
            continue
        shares = [fmt(stat([mean_over_sets(r, kind, single, key, step) for r in runs])) for _, key in SHARE_COLS]
        moves = [fmt(stat([metric_at(r, f"eval/{kind}/{key}", step) for r in runs])) for _, key in MOVES]
        seeds = sum(metric_at(r, f"eval/{kind}/id", step) is not None for r in runs)
        body.append([name, stage, str(seeds), *cells, *shares, *moves])
    return header, body
