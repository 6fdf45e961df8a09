"""The merge-schedule grid's table and figure (sweeps/merge_schedules.yaml), from run records alone.

- ``schedules.{md,csv}``: per merge schedule, rule and α, the final model's ID and OOD pass@1, its
  OOD Verified pass@1, its KL to the base on held-out ID prompts (both ways), the diversity of the
  last round's samples and the OOD items forgotten since the base (raw and chance-corrected),
  mean ± sample std over seeds; vanilla runs as the no-merge reference;
- ``kl_ood.png``: final OOD pass@1 against KL(π_base‖π) on ID prompts, one point per run, and their
  Pearson correlation with n, Fisher's 95% interval and a permutation p-value (imm.report.intervals;
  below 4 runs no interval, the runs listed): does KL predict forgetting here?

Only runs that logged the KL (run.kl_prompts > 0) enter. Run through ``python -m imm.report``.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from imm.report import render
from imm.report.intervals import correlation_note
from imm.report.tables import RunRecord, final_kind, metric_at, schedule_label, stat

# (column, metric under eval/<final kind>/ or a gen/ key, shown in percent)
COLUMNS = (("ID", "id", True), ("OOD", "ood", True), ("OOD verified", "ood/verified", True),
           ("KL fwd (ID)", "id/kl_forward", False), ("KL rev (ID)", "id/kl_reverse", False),
           ("distinct answers", "gen/distinct_answers", False), ("all agree", "gen/all_agree", True),
           ("OOD forgotten", "ood/forgotten", True), ("OOD forgotten (chance-corr.)", "ood/forgotten_adj", True))
KL = "id/kl_forward"


def value(rec: RunRecord, key: str) -> float | None:
    """The final model's metric (the last step logged), or a sampling figure of the last round."""
    return metric_at(rec, key if key.startswith("gen/") else f"eval/{final_kind(rec)}/{key}")


def label(rec: RunRecord) -> tuple[str, str, str]:
    """(schedule, rule, α) of a merging run; ("none", method, "–") otherwise."""
    if not rec.merges:
        return "none", rec.line, "–"
    schedule = schedule_label(rec.tag("schedule") or "round", rec.params.get("merge.every", ""))
    return schedule, rec.tag("merge") or "dare_linear", f"{rec.alpha:g}"


def grid_runs(runs: list[RunRecord]) -> list[RunRecord]:
    return [r for r in runs if value(r, KL) is not None]


def schedule_table(runs: list[RunRecord]) -> tuple[list[str], list[list[str]]]:
    """One row per (schedule, rule, α), and per drop rate p where runs of one such cell differ in it
    (e.g. +preset=paper_code's p 0.2 beside DARE's 0.1): the rule then reads "dare_linear p=0.2"."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in grid_runs(runs):
        groups.setdefault((*label(r), r.tag("p")), []).append(r)
    several_p = {key[:3] for key in groups if sum(k[:3] == key[:3] for k in groups) > 1}
    header = ["schedule", "rule", "α", "n", *(c for c, _, _ in COLUMNS)]
    body = []
    for (schedule, rule, alpha, p), rs in sorted(groups.items()):
        if (schedule, rule, alpha) in several_p:
            rule = f"{rule} p={p}"
        cells = [stat([value(r, m) for r in rs]) for _, m, _ in COLUMNS]
        body.append([schedule, rule, alpha, str(len(rs)), *(cell(s, pct) for s, (_, _, pct) in zip(cells, COLUMNS))])
    return header, body


def cell(s, percent: bool) -> str:
    if s is None or percent:
        return render.fmt(s)
    return f"{s.mean:.3f}" if s.n < 2 else f"{s.mean:.3f} ± {s.std:.3f}"


def kl_ood_points(runs: list[RunRecord]) -> list[dict[str, object]]:
    points = []
    for r in grid_runs(runs):
        ood = value(r, "ood")
        if ood is not None:
            schedule, rule, alpha = label(r)
            points.append({"schedule": schedule, "rule": rule, "alpha": alpha, "seed": r.tag("seed"),
                           "kl_forward": value(r, KL), "ood": ood})
    return points


def kl_ood_note(points: list[dict]) -> str:
    """The sentence giving r over the runs, n, its interval and p (or the runs, below the minimum)."""
    return correlation_note([p["kl_forward"] for p in points], [p["ood"] for p in points], "r(KL fwd, OOD)")


def kl_ood_figure(points: list[dict], out: Path, title: str, note: str) -> Path:
    """The scatter, the note under its title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    markers = dict(zip(sorted({p["rule"] for p in points}), "osD^vP*Xx+"))
    for i, schedule in enumerate(sorted({p["schedule"] for p in points})):
        for rule, marker in markers.items():
            mine = [p for p in points if p["schedule"] == schedule and p["rule"] == rule]
            if mine:
                ax.scatter([p["kl_forward"] for p in mine], [100 * p["ood"] for p in mine], marker=marker,
                           color=f"C{i}", label=f"{schedule} / {rule}", alpha=0.8)
    ax.set_xlabel("KL(π_base ‖ π) per response token, held-out ID prompts")
    ax.set_ylabel("final OOD pass@1 (%)")
    ax.set_title(f"{title}\n{textwrap.fill(note, 90)}", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "kl_ood.png", dpi=120)
    plt.close(fig)
    return out / "kl_ood.png"


def schedule_files(runs: list[RunRecord], out: Path, title: str) -> tuple[list[Path], str]:
    """schedules.{md,csv}, kl_ood.{csv,png}; ([], "") when no run logged the KL."""
    if not grid_runs(runs):
        return [], ""
    header, body = schedule_table(runs)
    points = kl_ood_points(runs)
    files, note = [], ""
    if len(points) > 2:
        note = kl_ood_note(points)
        files += [render.write_records(out / "kl_ood.csv", points), kl_ood_figure(points, out, title, note)]
    md = render.markdown(header, body, "final model (merged where the schedule merged) after the last round; "
                                       "pass@1, verified and forgotten in %, KL in nats per response token; "
                                       "mean ± sample std over seeds" + (f". {note}" if note else ""))
    (out / "schedules.md").write_text(f"### Merge schedules and rules\n\n{md}")
    return [out / "schedules.md", render.write_csv(out / "schedules.csv", header, body), *files], md
