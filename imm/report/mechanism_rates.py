"""What the models write out of domain, at every evaluated stage of every method line (testbed runs):
the readings of imm/analysis/mechanism.py, logged per set by each evaluation, as one table — mean ± sample
std over seeds (%; the equation gap in equations per item). A reader tells there whether a model
that loses OOD accuracy stops answering, runs out of tokens, copies the question's first number,
drops the product, writes fewer equations than the problem needs, or stops applying the problem's
procedure (right operations on its numbers, arithmetic aside), and which written forms it uses.
"""

from __future__ import annotations

from imm.report.render import fmt
from imm.report.stages import mean_over_sets, stage_rows
from imm.report.tables import SUMMARY_SETS, RunRecord, metric_at, stat

# (column, metric under eval/<kind>/): shares, shown in %; OOD readings are the mean over the OOD sets
COLUMNS = (("OOD pass@1", "ood"), ("ran to limit", "ood/ran_to_limit"), ("copies first number", "ood/copies_first"),
           ("product written", "ood/writes_product"), ("equation gap", "ood/equation_gap"),
           ("too few equations", "ood/too_few_equations"), ("right procedure", "ood/right_procedure"),
           ("OOD canonical form", "ood/form/canonical"), ("OOD other route", "ood/form/other"),
           ("right OOD answers canonical", "ood/right_form/canonical"), ("ID canonical form", "id/form/canonical"),
           ("ID merged form", "id/form/merged"))
COUNTS = {"ood/equation_gap"}  # equations written minus operations needed, per item: not a share


def _cell(key: str, s) -> str:
    if key not in COUNTS or s is None:
        return fmt(s)
    return f"{s.mean:+.2f}" + (f" ± {s.std:.2f}" if s.n > 1 else "")


def mechanism_table(records: list[RunRecord], sets: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows; empty rows where the runs logged no readings (benchmark runs)."""
    ood_sets = [s for s in sets if s not in SUMMARY_SETS and not s.startswith("id")]
    header = ["method", "stage", "seeds", "no answer", *[name for name, _ in COLUMNS]]
    body = []
    for name, runs, stage, kind, step in stage_rows(records):
        if all(metric_at(r, f"eval/{kind}/ood/right_procedure", step) is None for r in runs):
            continue
        no_answer = stat([mean_over_sets(r, kind, ood_sets, "no_answer", step) for r in runs])
        cells = [_cell(key, stat([metric_at(r, f"eval/{kind}/{key}", step) for r in runs])) for _, key in COLUMNS]
        seeds = sum(metric_at(r, f"eval/{kind}/ood", step) is not None for r in runs)
        body.append([name, stage, str(seeds), fmt(no_answer), *cells])
    return header, body
