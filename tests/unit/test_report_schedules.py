"""The merge-schedule report from hand-built run records: grouping by schedule, rule and α, the final
model a steps run is read from, the KL–OOD correlation's sentence (Fisher's interval and the
permutation p-value; no interval below 4 runs), and grid points kept apart by rule and schedule."""

import math

import pytest

from imm.report.intervals import pearson
from imm.report.schedules import kl_ood_points, schedule_files, schedule_table
from imm.report.tables import RunRecord, final_kind, select


def run(i, schedule, rule, alpha, seed, ood, kl, merged=True):
    kind = "merged" if merged else "sft"
    metrics = {"eval/sft/ood": {3: 0.0}, "gen/all_agree": {1: 0.2, 3: 0.6},  # a merging run's SFT model beside
               f"eval/{kind}/id": {3: 0.5}, f"eval/{kind}/ood": {3: ood}, f"eval/{kind}/id/kl_forward": {3: kl}}
    tags = {"method": "imm", "alpha": str(alpha), "seed": str(seed), "merge": rule, "schedule": schedule}
    return RunRecord(f"r{i}", tags=tags, metrics=metrics, start_time=i)


def test_table_groups_by_schedule_rule_and_alpha_and_reads_the_final_model():
    runs = [run(0, "round", "della", 0.5, 0, 0.30, 0.1), run(1, "round", "della", 0.5, 1, 0.40, 0.3),
            run(2, "steps", "della", 0.5, 0, 0.20, 0.5, merged=False)]
    header, body = schedule_table(runs)
    assert header[:5] == ["schedule", "rule", "α", "n", "ID"]
    rows = {tuple(r[:3]): r for r in body}
    assert rows[("round", "della", "0.5")][3] == "2"
    assert rows[("round", "della", "0.5")][header.index("OOD")] == "35.0 ± 7.1"
    assert rows[("steps", "della", "0.5")][header.index("OOD")] == "20.0"  # its SFT model: no merged one
    assert rows[("round", "della", "0.5")][header.index("all agree")] == "60.0 ± 0.0"  # the last round's samples
    assert final_kind(runs[2]) == "sft" and final_kind(runs[0]) == "merged"


def test_grid_points_differ_by_rule_and_schedule():
    runs = [run(0, "round", "della", 0.5, 0, 0.3, 0.1), run(1, "round", "lines", 0.5, 0, 0.3, 0.1),
            run(2, "final", "della", 0.5, 0, 0.3, 0.1), run(3, "final", "della", 0.5, 0, 0.4, 0.2)]
    kept, _ = select(runs, {})
    assert [r.run_id for r in kept] == ["r0", "r1", "r3"]  # r3 reruns r2's grid point


def test_correlation():
    xs = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert pearson(xs, [1 - x for x in xs]) == pytest.approx(-1.0)
    assert pearson(xs, [0.3, 0.1, 0.4, 0.1, 0.5, 0.9]) == pytest.approx(0.195 / math.sqrt(0.175 * 0.448333))  # Σx'y' / √(Σx'² Σy'²)
    assert math.isnan(pearson([0.1, 0.1, 0.1], [1, 2, 3]))


def test_the_table_gives_n_fishers_interval_and_p_and_below_four_runs_none(tmp_path, monkeypatch):
    """Four runs on a line of slope −1: r = −1.00 over n = 4, the interval the point itself, exact
    permutation p 2/24 (the line and its reverse); three runs: no interval, the runs themselves."""
    from imm.report import schedules
    monkeypatch.setattr(schedules, "kl_ood_figure", lambda points, out, title, note: out / "kl_ood.png")
    runs = [run(i, "round", "della", 0.5, i, 0.4 - 0.1 * i, 0.1 * (i + 1)) for i in range(4)]
    _, md = schedule_files(runs, tmp_path, "grid")
    assert "Pearson r(KL fwd, OOD) = -1.00 over n = 4 runs, Fisher 95% interval [-1.00, -1.00], " \
           "permutation p = 0.083" in md
    assert "bootstrap" not in md
    _, few = schedule_files(runs[:3], tmp_path, "grid")
    assert "over 3 runs: no interval below 4 runs; the runs: (0.1, 0.4), (0.2, 0.3), (0.3, 0.2)" in few


def test_points_carry_kl_and_ood_per_run():
    points = kl_ood_points([run(0, "round", "della", 0.5, 0, 0.3, 0.1), run(1, "final", "lines", 0.3, 1, 0.4, 0.2)])
    assert [(p["schedule"], p["rule"], p["alpha"], p["kl_forward"], p["ood"]) for p in points] == [
        ("round", "della", "0.5", 0.1, 0.3), ("final", "lines", "0.3", 0.2, 0.4)]


def test_runs_that_differ_in_p_within_a_cell_are_rows_of_their_own():
    """The paper-code preset (DARE p 0.2) beside DARE p 0.1, same schedule, rule and α: two rows."""
    from imm.report.schedules import schedule_table

    runs = [run(1, "round", "dare_linear", 0.5, 0, 0.1, 0.1), run(2, "round", "dare_linear", 0.5, 0, 0.3, 0.1),
            run(3, "round", "della", 0.5, 0, 0.2, 0.1)]
    runs[0].tags["p"], runs[1].tags["p"], runs[2].tags["p"] = "0.1", "0.2", "0.1"
    rows = {tuple(r[:4]) for r in schedule_table(runs)[1]}
    assert rows == {("round", "dare_linear p=0.1", "0.5", "1"), ("round", "dare_linear p=0.2", "0.5", "1"),
                    ("round", "della", "0.5", "1")}


def test_steps_runs_that_pull_at_other_intervals_are_points_and_rows_of_their_own():
    """merge.every 2 beside the default 8 under the steps schedule: two grid points, two rows; under
    round (no pull) the interval changes nothing and a second run is a rerun."""
    runs = [run(i, schedule, "dare_linear", 0.5, 0, 0.1 * i, 0.1, merged=schedule != "steps")
            for i, schedule in enumerate(("steps", "steps", "round", "round"))]
    for r, every in zip(runs, ("8", "2", "8", "2")):
        r.params["merge.every"] = every
    kept, skipped = select(runs, {})
    assert [r.run_id for r in kept] == ["r0", "r1", "r3"] and skipped == {"rerun": 1}
    rows = {tuple(r[:4]) for r in schedule_table(kept)[1]}
    assert rows == {("steps", "dare_linear", "0.5", "1"), ("steps every 2", "dare_linear", "0.5", "1"),
                    ("round", "dare_linear", "0.5", "1")}


def test_the_report_title_reaches_the_schedule_figure(tmp_path, monkeypatch):
    """The tables' own headings do not replace the report's title on the figures drawn after them."""
    from imm.report import cli, schedules
    seen = []
    monkeypatch.setattr(schedules, "kl_ood_figure", lambda points, out, title, note: (seen.append(title), out)[1])
    runs = [run(i, "round", "della", 0.5, i, 0.1 * i, 0.1 * i) for i in range(3)]
    cli.build(runs, tmp_path, "imm", 0.5, "my grid")
    assert seen == ["my grid"]
