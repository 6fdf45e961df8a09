"""The report on a real MLflow store filled with synthetic runs logged as imm.main logs them.

Grid: imm at α 0.1/0.5/0.9 and vanilla, 3 seeds each, 2 iterations, pass@2/4 logged; plus an imm run
at α 0.3 (one seed) missing a metric, a FAILED run with absurd scores, and vanilla copies at another α.
Expected numbers are computed here from the logged values, independently of the report code.
"""

import csv
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.entities import Metric, Param

from imm.report import cli as report
from imm.report.render import fmt
from imm.report.tables import ALPHA_AXES, RunRecord, Stat, canonical_key, select, stat

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "imm-testbed-testbed"
SETS = {"id_addsub": "id", "ood_wording": "ood", "ood_mult": "ood", "ood_multistep": "ood"}
ALL_SETS = ["id_addsub", "ood_mult", "ood_multistep", "ood_wording", "id", "ood"]  # the report's row order
T = 2
PNG = b"\x89PNG\r\n\x1a\n"


def score(method: str, alpha: float, seed: int, kind: str, step: int, name: str) -> float:
    """A made-up pass@1 with the paper's shape: SFT lifts ID and lowers OOD, merging pulls OOD back."""
    base = 0.30 + 0.013 * seed ** 2 + 0.02 * list(SETS).index(name)
    sign = 1 if SETS[name] == "id" else -1
    if kind == "base":
        return base
    if kind == "sft":
        return base + sign * 0.05 * step + (0.01 * seed if method == "vanilla" else 0)
    return base + 0.03 * step + 0.1 * alpha * (1 if sign > 0 else 0.5) + 0.007 * seed * step


def eval_metrics(method, alpha, seed, kind, step, drop=()) -> dict[str, float]:
    m = {name: score(method, alpha, seed, kind, step, name) for name in SETS}
    for group in ("id", "ood"):
        m[group] = statistics.fmean(v for n, v in m.items() if SETS.get(n) == group)
    for name in SETS:
        for k in (2, 4):
            m[f"{name}/pass@{k}"] = min(1.0, m[name] + 0.05 * math.log2(k))
    return {f"eval/{kind}/{k}": v for k, v in m.items() if f"eval/{kind}/{k}" not in drop}


def log_run(client, exp_id, method, alpha, seed, status="FINISHED", sweep="sweep-a", drop=(), offset=0.0,
            tags=None, params=None, steps_logged=None):
    """One run; ``steps_logged(step, kind)``: extra metrics (step shares, transitions) of each model."""
    tags = {"method": method, "alpha": str(alpha), "p": "0.1", "model": "testbed", "dataset": "testbed",
            "seed": str(seed), "sweep_id": sweep, "git_sha": "abc123"} | (tags or {})
    run = client.create_run(exp_id, run_name=f"{method}-a{alpha}-p0.1-s{seed}", tags=tags)
    rid = run.info.run_id
    client.log_batch(rid, params=[Param("merge.alpha", str(alpha)), Param("run.iterations", str(T)),
                                  Param("eval.ks", "[1, 2, 4]"), Param("method.name", method)]
                     + [Param(k, v) for k, v in (params or {}).items()])
    now = int(time.time() * 1000)
    steps = [(0, "base")] + [(t, k) for t in range(1, T + 1) for k in ("sft", "merged")
                             if k == "sft" or method in ("imm", "iimm")]
    metrics = []
    for step, kind in steps:
        values = eval_metrics(method, alpha, seed, kind, step, drop)
        # MLflow refuses "@" in metric names: pass@k goes to the store as pass_at_k
        metrics += [Metric(k.replace("@", "_at_"), v + offset, now, step) for k, v in values.items()]
        if step:
            metrics += [Metric("gen/yield", 0.5, now, step), Metric("sft/loss", 0.7, now, step)]
        if step and steps_logged:
            metrics += [Metric(k, v, now, step) for k, v in steps_logged(step, kind).items()]
    for i in range(0, len(metrics), 500):
        client.log_batch(rid, metrics=metrics[i:i + 500])
    client.set_terminated(rid, status)
    return rid


def new_store(root: Path):
    """An empty MLflow store in ``root`` with the testbed's experiment: (uri, client, experiment id)."""
    uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    return uri, client, client.create_experiment(EXPERIMENT, artifact_location=(root / "mlartifacts").as_uri())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """The store, the in-process report (logged back to MLflow) and its folder."""
    root = tmp_path_factory.mktemp("report")
    uri, client, exp_id = new_store(root)
    for seed in range(3):
        for alpha in (0.1, 0.5, 0.9):
            log_run(client, exp_id, "imm", alpha, seed)
        log_run(client, exp_id, "vanilla", 0.5, seed)
    log_run(client, exp_id, "vanilla", 0.9, 0)  # the same vanilla job from a method × α sweep: counted once
    log_run(client, exp_id, "imm", 0.3, 0, drop={"eval/merged/ood_mult"})  # one seed, one metric missing
    log_run(client, exp_id, "imm", 0.5, 7, status="FAILED", offset=0.5)  # absurd scores, must not count
    log_run(client, exp_id, "imm", 0.5, 0, sweep="sweep-b", offset=0.3)  # another sweep, for --sweep-id
    out = root / "report"
    report.main(["--tracking-uri", uri, "--experiment", EXPERIMENT, "--sweep-id", "sweep-a", "--out", str(out)])
    return {"uri": uri, "root": root, "out": out, "client": client}


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def expected_cell(alpha, name, seeds=(0, 1, 2), kind="merged") -> str:
    vals = [100 * eval_metrics("imm", alpha, s, kind, T)[f"eval/{kind}/{name}"] for s in seeds]
    if len(vals) == 1:
        return f"{vals[0]:.1f}"
    return f"{statistics.fmean(vals):.1f} ± {statistics.stdev(vals):.1f}"


def test_alpha_table_cells_are_the_final_merged_means(store):
    rows = read_csv(store["out"] / "alpha_table.csv")
    assert rows[0] == ["α (Eq. 6: weight of the base model)", "0.1", "0.3", "0.5", "0.9"]
    assert [r[0] for r in rows[1:]] == ALL_SETS
    cells = {(r[0], a): c for r in rows[1:] for a, c in zip(rows[0][1:], r[1:])}
    for alpha in ("0.1", "0.5", "0.9"):
        for name in ALL_SETS:
            assert cells[(name, alpha)] == expected_cell(float(alpha), name), (name, alpha)
    assert cells[("id_addsub", "0.5")] == "44.6 ± 4.1"  # seeds 0, 1, 2: 41.0, 43.7, 49.0 (by hand)
    assert cells[("ood_mult", "0.3")] == ""  # the missing metric: a blank cell
    assert cells[("id", "0.3")] == expected_cell(0.3, "id", seeds=(0,)) + " (n=1)"  # off the usual n=3


def test_alpha_table_files_share_the_shape(store):
    out = store["out"]
    long = read_csv(out / "alpha_long.csv")
    assert long[0] == ["set", "alpha", "mean", "std", "n", "alpha_table3"]
    row = next(r for r in long if r[:2] == ["ood", "0.9"])
    vals = [eval_metrics("imm", 0.9, s, "merged", T)["eval/merged/ood"] for s in range(3)]
    assert float(row[2]) == pytest.approx(statistics.fmean(vals))
    assert float(row[3]) == pytest.approx(statistics.stdev(vals)) and row[4] == "3"
    md = (out / "alpha_table.md").read_text().splitlines()
    table = [line for line in md if line.startswith("|")]
    assert len(table) == 2 + len(ALL_SETS) and all(line.count("|") == 6 for line in table)
    assert "n=3 seeds" in (out / "alpha_table.md").read_text()
    assert (out / "alpha.png").stat().st_size > 0  # the α curve beside the table
    tex = (out / "alpha_table.tex").read_text()
    body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == len(ALL_SETS) and all(line.count("&") == 4 for line in body)
    assert r"\begin{tabular}{lcccc}" in tex and r"$\pm$" in tex and r"id\_addsub" in tex


def test_iteration_csv_places_methods_on_one_axis(store):
    rows = read_csv(store["out"] / "iterations.csv")
    head, body = rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]
    assert head[:5] == ["setting", "method", "set", "stage", "x"]
    stages = lambda m: [(r["stage"], r["x"]) for r in body if r["method"] == m and r["set"] == "ood"]  # noqa: E731
    assert stages("imm") == [("Base", "0"), ("SFT 1", "1"), ("Merge 1", "2"), ("SFT 2", "3"), ("Merge 2", "4")]
    assert stages("vanilla") == [("Base", "0"), ("SFT 1", "1"), ("SFT 2", "3")]
    assert {r["set"] for r in body} == set(ALL_SETS)
    point = next(r for r in body if r["method"] == "vanilla" and r["set"] == "id" and r["stage"] == "SFT 2")
    vals = [eval_metrics("vanilla", 0.5, s, "sft", 2)["eval/sft/id"] for s in range(3)]
    assert float(point["mean"]) == pytest.approx(statistics.fmean(vals))
    assert point["n"] == "3"  # the vanilla copy at α 0.9 is not counted again


def test_summary_has_base_and_each_method(store):
    rows = read_csv(store["out"] / "summary.csv")
    assert rows[0] == ["method", "α", "n", "ID", "OOD"]
    by = {(r[0], r[1]): r for r in rows[1:]}
    assert list(by) == [("Base", "–"), ("vanilla", "–"), *(("imm", a) for a in ("0.1", "0.3", "0.5", "0.9"))]
    assert by[("imm", "0.5")][2] == "3" and by[("imm", "0.5")][4] == expected_cell(0.5, "ood")
    base = [100 * score("imm", 0, s, "base", 0, "id_addsub") for s in range(3)]
    assert by[("Base", "–")][3] == f"{statistics.fmean(base):.1f} ± {statistics.stdev(base):.1f}"


def test_pngs_and_passk_written(store):
    out = store["out"]
    for name in ["iterations.png", "passk.png", *(f"iterations_{s}.png" for s in ALL_SETS)]:
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name
    head, *body = read_csv(out / "passk.csv")
    rows = [dict(zip(head, r)) for r in body]
    assert {r["k"] for r in rows} == {"1", "2", "4"}
    assert {r["line"] for r in rows} == {"Base", "vanilla", "imm", "imm SFT"}
    imm4 = next(r for r in rows if r["line"] == "imm" and r["set"] == "ood_mult" and r["k"] == "4")
    vals = [eval_metrics("imm", 0.5, s, "merged", T)["eval/merged/ood_mult/pass@4"] for s in range(3)]
    assert float(imm4["mean"]) == pytest.approx(statistics.fmean(vals))


def test_report_is_logged_to_mlflow(store):
    client = store["client"]
    exp = client.get_experiment_by_name("imm-reports")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "report" and runs[0].data.tags["kind"] == "report"
    assert runs[0].data.tags["runs"] == "13"  # 12 grid runs + imm α 0.3 (not: vanilla copy, FAILED, sweep-b)
    arts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"alpha_table.md", "alpha_table.csv", "alpha_table.tex", "iterations.png", "summary.md"} <= arts


def test_cli_subprocess_filters_and_skips_failed(store, tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "imm.report", "--tracking-uri", store["uri"], "--out", str(out),
                           "--filter", "method=imm", "alpha=0.5", "--no-log"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped: 1 FAILED, 1 rerun" in proc.stdout  # seed 0 is in both sweeps: the newer (sweep-b) wins
    assert "44.6 ± 4.1" not in proc.stdout and f"| {ALPHA_AXES['eq6']} | 0.5 |" in proc.stdout
    rows = read_csv(out / "alpha_table.csv")
    assert rows[0] == [ALPHA_AXES["eq6"], "0.5"]
    new = [100 * (eval_metrics("imm", 0.5, s, "merged", T)["eval/merged/id_addsub"] + (0.3 if s == 0 else 0))
           for s in range(3)]
    assert rows[1][1] == f"{statistics.fmean(new):.1f} ± {statistics.stdev(new):.1f}"
    assert len(store["client"].search_runs([store["client"].get_experiment_by_name("imm-reports").experiment_id])) == 1


def test_no_matching_runs_is_a_clear_error(store, tmp_path):
    with pytest.raises(SystemExit, match="no finished runs in experiment imm-testbed-testbed matching method=iimm"):
        report.main(["--tracking-uri", store["uri"], "--filter", "method=iimm", "--out", str(tmp_path), "--no-log"])
    with pytest.raises(SystemExit, match="no experiment named"):
        report.main(["--tracking-uri", store["uri"], "--experiment", "nope", "--no-log"])


def test_select_keeps_newest_rerun_and_one_copy_of_non_merging_runs():
    tags = lambda m, a, s: {"method": m, "alpha": a, "seed": s}  # noqa: E731
    recs = [RunRecord("a", start_time=1, tags=tags("imm", "0.5", "0")),
            RunRecord("b", start_time=2, tags=tags("imm", "0.5", "0")),  # rerun: replaces a
            RunRecord("c", start_time=3, tags=tags("imm", "0.9", "0")),
            RunRecord("d", start_time=4, tags=tags("vanilla", "0.5", "0")),
            RunRecord("e", start_time=5, tags=tags("vanilla", "0.9", "0")),  # same vanilla job: replaces d
            RunRecord("f", status="KILLED", tags=tags("imm", "0.5", "1"))]
    runs, skipped = select(recs, {})
    assert [r.run_id for r in runs] == ["b", "c", "e"] and skipped == {"rerun": 2, "KILLED": 1}
    assert [r.run_id for r in select(recs, {"alpha": "0.50"})[0]] == ["b", "d"]


def test_runs_on_other_items_are_other_grid_points_and_lines():
    """A validation-split run is no rerun of the test-split run with the same method, α and seed; each
    gets its own line, labelled by what differs."""
    from imm.report.tables import method_lines

    tags = {"method": "imm", "alpha": "0.9", "seed": "0"}
    recs = [RunRecord("test", start_time=1, tags=tags, params={"dataset.eval_split": "test"}),
            RunRecord("val", start_time=2, tags=tags, params={"dataset.eval_split": "validation"}),
            RunRecord("ctl", start_time=3, tags=tags, params={"dataset.eval_split": "test",
                                                               "dataset.id_sets": "['id_wide']"})]
    runs, skipped = select(recs, {})
    assert sorted(r.run_id for r in runs) == ["ctl", "test", "val"] and not skipped
    labels = {setting for setting, _, _ in method_lines(runs)}
    assert labels == {"dataset.eval_split=test, dataset.id_sets=", "dataset.eval_split=validation, dataset.id_sets=",
                      "dataset.eval_split=test, dataset.id_sets=['id_wide']"}


def test_stat_and_fmt():
    assert stat([None, math.nan]) is None and fmt(None) == ""
    s = stat([0.2, None, 0.4])
    assert s == Stat(pytest.approx(0.3), pytest.approx(math.sqrt(0.02)), 2)
    assert fmt(s) == "30.0 ± 14.1" and fmt(s, ref_n=3) == "30.0 ± 14.1 (n=2)" and fmt(stat([0.25])) == "25.0"


@pytest.mark.parametrize("last", ["pass@4", "pass_at_4", "pass_4", "pass:4", "pass4"])
def test_passk_spellings_read_as_one(last):
    assert canonical_key(f"eval/merged/ood_mult/{last}") == "eval/merged/ood_mult/pass@4"
    assert canonical_key("eval/merged/ood_mult") == "eval/merged/ood_mult"
    assert canonical_key(f"gen/{last}") == f"gen/{last}"  # not an eval score: left alone


# ---------------------------------------------------------------- α convention, Table 5, step shares

def test_alpha_table_in_the_papers_convention(store, tmp_path):
    """--alpha-convention paper: columns 1 − α ascending, each the same cell as its Eq. 6 column."""
    out = tmp_path / "paper"
    report.main(["--tracking-uri", store["uri"], "--experiment", EXPERIMENT, "--sweep-id", "sweep-a",
                 "--out", str(out), "--alpha-convention", "paper", "--no-log"])
    paper, eq6 = read_csv(out / "alpha_table.csv"), read_csv(store["out"] / "alpha_table.csv")
    assert paper[0] == [ALPHA_AXES["paper"], "0.1", "0.5", "0.7", "0.9"]
    assert [r[1:] for r in paper[1:]] == [r[1:][::-1] for r in eq6[1:]]  # the same cells, columns reversed
    by = {(r[0], a): c for r in paper[1:] for a, c in zip(paper[0][1:], r[1:])}
    assert by[("id_addsub", "0.5")] == "44.6 ± 4.1" and by[("ood", "0.1")] == expected_cell(0.9, "ood")
    long = [dict(zip(read_csv(out / "alpha_long.csv")[0], r)) for r in read_csv(out / "alpha_long.csv")[1:]]
    assert {(r["alpha"], r["alpha_table3"]) for r in long} == {("0.1", "0.9"), ("0.3", "0.7"), ("0.5", "0.5"),
                                                              ("0.9", "0.1")}


BASELINES = [  # (method, α, SFT intervention, how it is recorded, offset of its scores)
    ("vanilla", 0.5, "none", "tag", 0.0), ("star", 0.5, "none", "tag", 0.02), ("mixture", 0.5, "none", "tag", 0.04),
    ("accumulation", 0.5, "none", "tag", 0.06), ("vanilla", 0.5, "grad_decay", "tag", 0.08),
    ("vanilla", 0.5, "grad_clip", "tag", 0.10), ("vanilla", 0.5, "weight_mask", "param", 0.12),  # an older run
    ("imm", 0.5, "none", "tag", 0.14), ("iimm", 0.5, "none", "tag", 0.16), ("imm", 0.9, "none", "tag", 0.3)]
ROW_NAMES = ["Base", "vanilla", "STaR-restart", "mixture", "accumulation", "gradient decay", "gradient clipping",
             "weight masking", "IMM", "IIMM"]


def shares_and_moves(offset):
    """Step shares of kept samples and right answers, and transitions, drifting with the iteration."""
    def logged(step, kind):
        m = {f"eval/{kind}/{s}/forgotten": 0.05 * step + offset for s in ("id", "ood", "ood_mult")}
        m |= {f"eval/{kind}/{s}/newly_solved": 0.1 + offset for s in ("id", "ood", "ood_mult")}
        m |= {f"eval/{kind}/{g}/sound_share": 0.8 - 0.1 * step for g in ("id", "ood")}
        if kind == "sft":
            m |= {"gen/kept": 100 + 10 * step, "gen/sound_share": 0.7 - 0.1 * step + offset, "gen/shortcut_share": 0.2 + 0.05 * step,
                  "gen/flawed_share": 0.1 + 0.05 * step - offset}
        return m
    return logged


@pytest.fixture(scope="module")
def baseline_store(tmp_path_factory):
    """The baselines sweep's runs (2 seeds), each told apart by its tags (or, older, its params)."""
    root = tmp_path_factory.mktemp("baselines")
    uri, client, exp_id = new_store(root)
    for seed in range(2):
        for method, alpha, how, where, offset in BASELINES:
            tags = {"sft_intervention": how} if where == "tag" else {}
            params = {"sft.intervention": how} if where == "param" else {}
            log_run(client, exp_id, method, alpha, seed, offset=offset, tags=tags, params=params,
                    steps_logged=shares_and_moves(offset))
    return {"uri": uri, "root": root}


def baseline_cell(method, offset, step, name, key=None):
    kind = "merged" if method in ("imm", "iimm") else "sft"
    vals = [shares_and_moves(offset)(step, "sft")[key] if key else
            eval_metrics(method, 0.5, s, kind, step)[f"eval/{kind}/{name}"] + offset for s in range(2)]
    return fmt(stat(vals))


@pytest.mark.parametrize("iteration", [1, None])
def test_baselines_table_at_an_iteration(baseline_store, tmp_path, iteration):
    out = tmp_path / "t5"
    args = ["--tracking-uri", baseline_store["uri"], "--out", str(out), "--no-log"]
    report.main(args + (["--iteration", str(iteration)] if iteration else []))
    step = iteration or T
    rows = read_csv(out / "baselines.csv")
    assert rows[0] == ["iteration 1" if iteration else "final iteration", *ALL_SETS, "kept sound"]
    assert [r[0] for r in rows[1:]] == ROW_NAMES  # the four vanilla-method runs stay apart, IMM at α 0.5 only
    cells = {r[0]: dict(zip(rows[0][1:], r[1:])) for r in rows[1:]}
    for (method, alpha, _, _, offset), row in zip(BASELINES, ROW_NAMES[1:]):
        for name in ("id_addsub", "ood"):
            assert cells[row][name] == baseline_cell(method, offset, step, name), (row, name)
        assert cells[row]["kept sound"] == baseline_cell(method, offset, step, None, "gen/sound_share"), row
    # Base: per seed, the mean of the base scores its runs logged (here each run's offset shifts them too)
    shift = statistics.fmean(b[4] for b in BASELINES if b[1] == 0.5)
    assert cells["Base"]["kept sound"] == "" and cells["Base"]["id"] == fmt(
        stat([score("vanilla", 0, s, "base", 0, "id_addsub") + shift for s in range(2)]))
    assert "### Baselines" in (out / "baselines.md").read_text()
    assert "Baselines (paper Table 5" in (out / "report.html").read_text()


def test_step_shares_and_transitions_plotted_per_method(baseline_store, tmp_path):
    out = tmp_path / "steps"
    report.main(["--tracking-uri", baseline_store["uri"], "--out", str(out), "--no-log"])
    for name in ("steps.png", "transitions.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name
        assert f"alt='{name[:-4]}'" in (out / "report.html").read_text()
    head, *body = read_csv(out / "steps.csv")
    rows = [dict(zip(head, r)) for r in body]
    kept = {(r["method"], r["share"], r["step"]): float(r["mean"]) for r in rows if r["of"] == "kept"}
    assert kept[("star", "sound", "1")] == pytest.approx(0.62) and kept[("star", "sound", "2")] == pytest.approx(0.52)
    assert kept[("vanilla+grad_decay", "flawed", "2")] == pytest.approx(0.12)
    assert {r["of"] for r in rows} == {"kept", "id", "ood"} and "imm" in {r["method"] for r in rows}
    head, *body = read_csv(out / "transitions.csv")
    moves = {(r[1], r[2], r[3], r[4]): float(r[5]) for r in body}
    assert head[:6] == ["setting", "method", "set", "measure", "step", "mean"]
    assert moves[("imm", "ood", "forgotten", "2")] == pytest.approx(0.24)  # the merged model's, at α 0.5
    assert moves[("vanilla", "ood_mult", "newly_solved", "1")] == pytest.approx(0.1)


def test_per_iteration_table_gives_accuracy_and_kept_shares(baseline_store, tmp_path):
    out = tmp_path / "iters"
    report.main(["--tracking-uri", baseline_store["uri"], "--out", str(out), "--no-log"])
    head, *body = read_csv(out / "per_iteration.csv")
    assert head == ["method", "iteration", "ID", "OOD", "kept", "sound", "shortcut", "flawed"]
    rows = {(r[0], r[1]): dict(zip(head[2:], r[2:])) for r in body}
    assert body[0][:2] == ["Base", "0"] and rows[("Base", "0")]["sound"] == ""
    # STaR (offset 0.02) at iteration 2: its SFT model's mean over seeds, and the kept samples' shares
    assert rows[("star", "2")]["OOD"] == baseline_cell("star", 0.02, 2, "ood")
    assert rows[("star", "2")]["sound"] == fmt(stat([0.7 - 0.2 + 0.02] * 2)) and rows[("star", "2")]["kept"] == "120 ± 0"
    assert rows[("imm", "1")]["ID"] == baseline_cell("imm", 0.14, 1, "id")  # the merged model's
    assert rows[("vanilla+grad_clip", "2")]["flawed"] == fmt(stat([0.1 + 0.1 - 0.10] * 2))
    assert {m for m, _ in rows} >= {"vanilla", "star", "imm", "iimm"}
    assert "Per iteration" in (out / "report.html").read_text()
