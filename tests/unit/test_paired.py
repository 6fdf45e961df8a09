"""Paired bootstrap over test items (and runs, from MIN_BOOTSTRAP_RUNS on), Holm's correction, and the
table from job folders: p-values and intervals against the exact bootstrap distribution of small cases,
calibration under no difference, coverage by simulation, and the runs listed where they are held fixed."""

import json

import numpy as np
import pytest

from imm.report import paired
from imm.report.intervals import MIN_BOOTSTRAP_RUNS
from imm.report.paired import holm, paired_bootstrap, report, share_bootstrap


def test_no_difference_and_a_sure_difference():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, (3, 200))
    same = paired_bootstrap(a, a, boot=300)
    assert (same.mean, same.lo, same.hi, same.p) == (0.0, 0.0, 0.0, 1.0)
    better = np.maximum(a, rng.integers(0, 2, (3, 200)))
    up = paired_bootstrap(better, a, boot=300)
    assert 0 < up.lo <= up.mean <= up.hi and up.p < 0.01


def test_intervals_widen_with_fewer_items_and_seeds():
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 2, (10, 400)), rng.integers(0, 2, (10, 400))
    wide, narrow = paired_bootstrap(a[:2, :50], b[:2, :50], boot=400), paired_bootstrap(a, b, boot=400)
    assert wide.hi - wide.lo > 2 * (narrow.hi - narrow.lo)
    assert narrow.lo < 0 < narrow.hi  # two fair coins: no difference


def test_share_interval_is_a_ratio_of_pooled_counts():
    hit, counted = np.array([[1, 0, 0, 0]] * 2), np.array([[1, 1, 0, 0]] * 2)
    s = share_bootstrap(hit, counted, boot=300)
    assert s.mean == 50.0 and 0 <= s.lo <= 50 <= s.hi <= 100
    # 3 of 4 counted answers hit: 75%, not the mean of the items' shares
    assert share_bootstrap(np.array([[1, 1, 1, 0]]), np.array([[1, 1, 2, 0]]), boot=50).mean == 75.0
    # one run, items (hit, counted) = (1, 1), (0, 1): resampled shares 0, 50, 50, 100
    exact = share_bootstrap(np.array([[1, 0]]), np.array([[1, 1]]), boot=4000)
    assert (exact.mean, exact.lo, exact.hi) == (50.0, 0.0, 100.0)
    # an item not counted (a wrong answer): resampled shares 1/1, 1/1, 1/1 and 0/0 (read as 0)
    one = share_bootstrap(np.array([[1, 0]]), np.array([[1, 0]]), boot=4000)
    assert (one.mean, one.lo, one.hi) == (100.0, 0.0, 100.0)
    assert share_bootstrap(np.array([[1]]), np.array([[1]]), boot=50).lo == 100.0  # 1 of 1 in every draw
    # 20 of 40 answers: resampled shares are Binomial(40, 1/2) / 40, whose 2.5% and 97.5% points are 14 and 26
    half = share_bootstrap(np.array([[1, 0] * 20]), np.ones((1, 40)), boot=10000)
    assert half.lo == pytest.approx(35.0, abs=1.0) and half.hi == pytest.approx(65.0, abs=1.0)


def test_holm():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3·0.01, 2·0.03, max(0.06, 1·0.04)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])  # 3·0.01, 2·0.02, then 1·0.04
    assert holm([0.3, 0.6]) == pytest.approx([0.6, 0.6]) and holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert holm([0.5]) == [0.5]


def test_p_and_interval_against_the_exact_bootstrap_distribution():
    # one run, items d = +100, 0: the four equally likely resamples have means 0, 50, 50, 100, so
    # P(mean ≤ 0) = 1/4, P(mean ≥ 0) = 1, p = 2 · 1/4, and the 2.5% and 97.5% quantiles are 0 and 100
    two = paired_bootstrap(np.array([[1, 0]]), np.array([[0, 0]]), boot=10000)
    assert (two.mean, two.lo, two.hi) == (50.0, 0.0, 100.0) and two.p == pytest.approx(0.5, abs=0.03)
    # d = +100, 0, 0: P(mean ≤ 0) = P(the gained item never drawn) = (2/3)³, p = 16/27
    three = paired_bootstrap(np.array([[1, 0, 0]]), np.array([[0, 0, 0]]), boot=20000)
    assert three.p == pytest.approx(16 / 27, abs=0.02)
    lost = paired_bootstrap(np.array([[0, 0, 0]]), np.array([[1, 0, 0]]), boot=20000)
    assert lost.mean == pytest.approx(-100 / 3) and lost.p == pytest.approx(16 / 27, abs=0.02)
    # scores, not 0/1: d = +0.5, 0 points; resampled means 0, 0.25, 0.5 with P(mean ≤ 0) = 1/4
    small = paired_bootstrap(np.array([[0.005, 0.0]]), np.zeros((1, 2)), boot=10000)
    assert small.mean == pytest.approx(0.25) and small.p == pytest.approx(0.5, abs=0.03)


def test_p_is_calibrated_under_no_difference():
    """Two models that agree on most items and differ at random on the rest: p < 0.05 about 5% of the time."""
    rng = np.random.default_rng(2)
    p = []
    for i in range(300):
        a = rng.integers(0, 2, (3, 100))
        b = np.where(rng.random((3, 100)) < 0.1, 1 - a, a)
        p.append(paired_bootstrap(a, b, boot=400, seed=i).p)
    assert 0.02 <= np.mean(np.array(p) < 0.05) <= 0.09


def _coverage(n_runs, draws=400, items=40):
    """How often the interval covers its target when runs and items both shift the difference (an
    item's effect shared by every run): the runs' own mean held fixed, the population's resampled."""
    rng, hits = np.random.default_rng(0), 0
    for i in range(draws):
        u, v = rng.normal(0, 1, (n_runs, 1)), rng.normal(0, 0.5, (1, items))
        d = (u + v + rng.normal(0, 1, (n_runs, items))) / 100
        iv = paired_bootstrap(d, np.zeros_like(d), boot=200, seed=i)
        target = u.mean() if n_runs < paired.MIN_BOOTSTRAP_RUNS else 0.0
        hits += iv.lo <= target <= iv.hi
    return hits / draws


def test_intervals_cover_below_and_from_the_minimum_and_a_bootstrap_over_three_runs_would_not(monkeypatch):
    assert _coverage(3) >= 0.89  # runs held fixed: an interval for these runs (about 0.92)
    assert _coverage(MIN_BOOTSTRAP_RUNS) >= 0.9  # runs resampled: an interval for the seeds (about 0.94)
    monkeypatch.setattr(paired, "MIN_BOOTSTRAP_RUNS", 3)
    assert _coverage(3) < 0.85  # what resampling 3 runs gave (about 0.78): no 95% interval


def test_runs_are_resampled_from_the_minimum_on():
    """Two kinds of run, one gaining on every item and one on none: held fixed, every draw's mean is
    their mean; resampled, the draws spread."""
    few = paired_bootstrap(np.array([[1, 1], [0, 0]]), np.zeros((2, 2)), boot=300)
    assert (few.mean, few.lo, few.hi) == (50.0, 50.0, 50.0)
    half = MIN_BOOTSTRAP_RUNS // 2
    many = paired_bootstrap(np.array([[1, 1]] * half + [[0, 0]] * half), np.zeros((2 * half, 2)), boot=300)
    assert many.lo < 40 and many.hi > 60
    first = paired_bootstrap(np.array([[1, 1]] + [[0, 0]] * (MIN_BOOTSTRAP_RUNS - 1)), np.zeros((MIN_BOOTSTRAP_RUNS, 2)),
                             boot=300)
    assert first.lo == 0.0 and first.hi > 0.0  # the first run is drawn too
    assert paired.per_run([1.0] * (MIN_BOOTSTRAP_RUNS - 1), "{:+.1f}") == ", ".join(["+1.0"] * (MIN_BOOTSTRAP_RUNS - 1))
    assert paired.per_run([1.0] * MIN_BOOTSTRAP_RUNS, "{:+.1f}") == ""


def _job(root, name, method, alpha, seed, final, rows_by_label, model="testbed", split="test", steps=lambda i: "sound"):
    """A finished job's folder; ``rows_by_label``: each model's right answers (one list for both sets, or
    (ID, OOD)); ``steps``: the step class of item i's right answer."""
    job = root / name
    (job / "evaluations").mkdir(parents=True)
    iterations = int(final.lstrip("MergeSFT"))
    (job / "config.yaml").write_text(f"method:\n  name: {method}\nmerge:\n  alpha: {alpha}\nrun:\n  seed: {seed}\n"
                                     f"  iterations: {iterations}\n"
                                     f"model:\n  name: {model}\ndataset:\n  seed: 1\n  eval_split: {split}\n")
    for label, right in rows_by_label.items():
        by_set = dict(zip(("id_addsub", "ood_mult"), right if isinstance(right, tuple) else (right, right)))
        rows = [{"set": s, "index": i, "right": bool(r), "steps": [steps(i) if r else "wrong"]}
                for s, rights in by_set.items() for i, r in enumerate(rights)]
        (job / "evaluations" / f"{label}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return job


def test_report_pairs_each_final_model_with_the_base(tmp_path):
    base = [1, 0, 1, 0] * 10
    jobs = [_job(tmp_path, f"v{s}", "vanilla", 0.5, s, "SFT2", {"Base": base, "SFT1": base, "SFT2": [1] * 40})
            for s in (0, 1)]
    jobs += [_job(tmp_path, f"i{s}", "imm", 0.7, s, "Merge1", {"Base": base, "SFT1": base, "Merge1": base})
             for s in (0, 1)]
    text = report(jobs, boot=200)
    assert "| vanilla final − Base | 2 | +50.0 [+3" in text  # half the items gained, the interval around it
    assert "| imm (α 0.7) final − Base | 2 | +0.0 [+0.0, +0.0] | 1.000 | +0.0 [+0.0, +0.0] | 1.000 | 1.000 |" in text
    assert "| imm (α 0.7) − vanilla, final | 2 | -50.0" in text
    assert "| Base | 2 | 40 | 100.0 |" in text and "| vanilla final | 2 | 80 | 100.0 |" in text
    assert f"fewer than {MIN_BOOTSTRAP_RUNS} runs give no interval over runs" in text


def test_rows_below_the_minimum_list_each_runs_difference(tmp_path):
    base = ([1] * 20 + [0] * 20, [0] * 40)  # ID: half right, OOD: none
    finals = {0: ([1] * 30 + [0] * 10, [0, 1] + [0] * 38), 1: ([0] * 40, [1] * 30 + [0] * 10)}
    jobs = [_job(tmp_path, f"v{s}", "vanilla", 0.5, s, "SFT1", {"Base": base, "SFT1": finals[s]},
                 steps=lambda i: "sound" if i % 2 else "shortcut") for s in (0, 1)]
    lines = report(jobs, boot=100).splitlines()
    row = next(r for r in lines if r.startswith("| vanilla final − Base"))
    # ID: run 0 +10 of 40 items, run 1 −20; OOD: +1 and +30
    assert row.startswith("| vanilla final − Base | 2 | -12.5 [") and "| +38.8 [" in row
    assert row.endswith("| +25.0, -50.0 | +2.5, +75.0 |")
    # right OOD answers, sound on odd items: run 0 1 of 1, run 1 15 of 30; pooled 16 of 31
    sound = next(r for r in lines if r.startswith("| vanilla final |"))
    assert sound.startswith(f"| vanilla final | 2 | 31 | {100 * 16 / 31:.1f} | [") and sound.endswith("| 100.0, 50.0 |")


def test_sets_come_from_the_jobs_config():
    from imm.report.paired import ID_SETS, OOD_SETS, split_sets

    evals = {"Base": [{"set": s, "index": 0, "right": True} for s in ("gsm8k", "svamp", "asdiv")]}
    assert split_sets({"dataset": {"id_sets": ["gsm8k"], "ood_sets": []}}, evals) == (("gsm8k",), ("asdiv", "svamp"))
    assert split_sets({"dataset": {"id_sets": ["gsm8k"], "ood_sets": ["svamp"]}}, evals) == (("gsm8k",), ("svamp",))
    assert split_sets({"dataset": {"id_sets": [], "ood_sets": []}}, evals) == (ID_SETS, OOD_SETS)  # the testbed


def test_base_models_are_more_runs_and_other_items_another_section(tmp_path):
    """Two pretrained bases with the same seed are two runs, each paired with its own base; jobs
    evaluated on other items (the validation split) are never pooled with the test jobs."""
    low, high = [0] * 40, [1, 0] * 20
    jobs = [_job(tmp_path, f"v{m}", "vanilla", 0.5, 0, "SFT1", {"Base": base, "SFT1": [1] * 40}, model=m)
            for m, base in (("testbed", low), ("testbed-seed3", high))]
    text = report(jobs, boot=200)
    assert "| vanilla final − Base | 2 | +75.0 [" in text  # (100 + 50) / 2: each run against its own base
    assert "####" not in text
    jobs.append(_job(tmp_path, "val", "vanilla", 0.5, 0, "SFT1", {"Base": low, "SFT1": low}, split="validation"))
    sections = report(jobs, boot=200).split("#### ")[1:]
    assert [s.split(",")[1].strip() for s in sections] == ["test split", "validation split"]
    assert "| vanilla final − Base | 2 | +75.0" in sections[0]
    assert "| vanilla final − Base | 1 | +0.0 [+0.0, +0.0]" in sections[1]


def test_a_stopped_job_is_left_out(tmp_path):
    """A job stopped before its last iteration has only its first evaluations: it is no final model."""
    base = [0] * 40
    done = _job(tmp_path, "done", "imm", 0.5, 0, "Merge2", {"Base": base, "Merge1": base, "Merge2": [1] * 40})
    stopped = _job(tmp_path, "stopped", "imm", 0.5, 1, "Merge2", {"Base": base, "Merge1": base})
    assert "| imm (α 0.5) final − Base | 1 | +100.0" in report([done, stopped], boot=100)


def test_merge_rules_and_schedules_are_their_own_rows(tmp_path):
    """A grid over merge rules and schedules: each (rule, schedule) is a row of its own, IMM's default
    keeps the plain name, and every row is in the Holm family."""
    base = [0] * 40
    jobs = []
    for name, rule, schedule, final in (("d", "dare_linear", "round", [1] * 40), ("l", "lines", "steps", base)):
        job = _job(tmp_path, name, "imm", 0.5, 0, "Merge1", {"Base": base, "Merge1": final})
        (job / "config.yaml").write_text((job / "config.yaml").read_text().replace(
            "merge:\n  alpha: 0.5\n", f"merge:\n  alpha: 0.5\n  name: {rule}\n  schedule: {schedule}\n"))
        jobs.append(job)
    text = report(jobs, boot=100)
    assert "| imm (α 0.5) final − Base | 1 | +100.0" in text
    assert "| imm [lines, steps] (α 0.5) final − Base | 1 | +0.0" in text
    assert "| imm (α 0.5) − imm [lines, steps] (α 0.5), final | 1 | +100.0" in text
    assert text.count("| 1.000 |") >= 1 and text.count("final − Base") == 2
    from imm.report.paired import line
    assert line({"method": {"name": "imm"}, "merge": {"name": "dare_linear", "schedule": "round", "p": 0.2}}) == \
        "imm [p 0.2]"
    assert line({"method": {"name": "vanilla"}, "merge": {"name": "della", "p": 0.2}}) == "vanilla"
    steps = {"name": "task_arithmetic", "schedule": "steps"}
    assert line({"method": {"name": "imm"}, "merge": steps | {"every": 2}}) == "imm [task_arithmetic, steps every 2]"
    assert line({"method": {"name": "imm"}, "merge": steps | {"every": 8}}) == "imm [task_arithmetic, steps]"


def test_format_table_splits_a_gain_into_answering_and_right_among_answered(tmp_path):
    # the base answers half the items and gets a third of those right; the final model answers every item
    # and gets the same share of them right: its gain is all format
    n = 60
    def rows(answered, right):
        return [{"set": s, "index": i, "right": bool(right[i]), "answered": bool(answered[i])}
                for s in ("id_addsub", "ood_mult") for i in range(n)]
    base_answered = [i % 2 == 0 for i in range(n)]
    base_right = [i % 6 == 0 for i in range(n)]  # a third of the answered
    final_right = [i % 3 == 0 for i in range(n)]  # a third of all
    jobs = []
    for s in (0, 1):
        job = _job(tmp_path, f"v{s}", "vanilla", 0.5, s, "SFT1", {})
        (job / "evaluations" / "Base.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(base_answered, base_right)))
        (job / "evaluations" / "SFT1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows([True] * n, final_right)))
        jobs.append(job)
    text = report(jobs, boot=300)
    line = next(x for x in text.splitlines() if x.startswith("| vanilla final − Base | 2 | +50.0"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2].startswith("+50.0 [") and cells[3].startswith("+0.0 [")  # ID: answered +50, right among answered 0
    assert cells[4].startswith("+50.0 [") and cells[5].startswith("+0.0 [")
    assert "| vanilla final − Base | 2 | +16.7 [" in text  # pass@1 itself: 1/3 − 1/6
