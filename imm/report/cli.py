"""The report: paper-style tables and figures from the runs in MLflow (from job folders only for jobs
run without tracking, with --jobs).

    python -m imm.report                                   # every experiment in sqlite:///outputs/mlflow.db
    python -m imm.report --experiment imm-testbed-testbed --sweep-id 2025-01-31_12-00-00
    python -m imm.report --filter p=0.1 --alpha 0.5 --method imm --out outputs/reports/main
    python -m imm.report --tracking-uri http://127.0.0.1:5000 --no-log
    python -m imm.report --iteration 1 --alpha-convention paper   # first-iteration baselines, Table 3's α
    python -m imm.report --jobs outputs/jobs/* --no-log          # jobs run with tracking.enabled=false

Writes to --out (default outputs/reports/<name>, name defaulting to the time):
  alpha_table.{md,csv,tex}   α ablation (paper Table 3): rows = test sets, columns = α, final merged pass@1;
                             α of Eq. 6 (the weight of the base model), or with --alpha-convention paper
                             the paper's Table 3 α = 1 − α (its α = 0.1 column is the model nearest the base)
  alpha_long.csv             the same numbers unrounded: set, α (Eq. 6), mean, std, n, α (Table 3)
  summary.{md,csv}           per method (and α): final ID and OOD pass@1 over seeds, with Base
  baselines.{md,csv,tex}     paper Table 5: Base, vanilla, STaR-restart, mixture, accumulation, the SFT
                             interventions, IMM, IIMM at --iteration (default each run's last), --alpha
  iterations.png, iterations_<set>.png, iterations.csv   Figs 6/7: Base, SFT 1, Merge 1, ... per method at --alpha
  stages.{md,csv}            every stage of each method at --alpha: pass@1 per set, no-answer and ran-to-limit
                             shares, OOD items forgotten / newly solved since the base, mean ± std over seeds
  steps.png, steps.csv       testbed: sound / shortcut / flawed shares of kept samples and right answers per iteration
  transitions.png, transitions.csv   testbed and benchmarks: items forgotten / newly solved since the base model
  passk.png, passk.csv       Figs 8/13, where runs logged pass@k (eval.n > 1)
  schedules.{md,csv}, kl_ood.{png,csv}   per merge schedule, rule and α: final ID/OOD, KL to the base,
                             answer diversity, forgetting; OOD against KL over runs (imm/report/schedules.py)
  paired.md                  paired differences with 95% intervals over test items (× runs from 20 runs on), p-values,
                             Holm's correction across α: each final model against its base and the methods
                             against each other, one section per evaluation setting (imm/report/paired.py)
  mechanism.{md,csv}         testbed: what the models write out of domain at every stage (no answer, ran to
                             limit, first number copied, product written, equations against steps needed,
                             right procedure, forms), mean ± std over seeds (imm/report/mechanism_rates.py)
  report.html                the tables and figures on one page (images inlined)
Only FINISHED runs count (the others are reported as skipped); a rerun of a grid point replaces it.
Unless --no-log, the folder is also logged as artifacts of a run named "report" in experiment "imm-reports".
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from imm.report import baselines
from imm.report import folders as job_folders
from imm.report import html
from imm.report import mechanism_rates
from imm.report import paired
from imm.report import plots
from imm.report import reasoning
from imm.report import render
from imm.report import schedules
from imm.report import stages
from imm.report import tables
from imm.report.tables import RunRecord
from imm.tracking import SWEEP_KIND

REPORT_EXPERIMENT = "imm-reports"
GEN_KEYS = ("gen/kept", "gen/distinct_answers", "gen/all_agree")  # the sampling figures the report reads


# ---------------------------------------------------------------- MLflow I/O

def load_runs(uri: str, experiments: list[str] | None) -> tuple[list[RunRecord], list[str]]:
    """Every run (any status) of the named experiments, or of all but the reports, with eval/* histories;
    also the names of the experiments read (named, or holding runs)."""
    import mlflow
    from mlflow.entities import ViewType

    client = mlflow.MlflowClient(uri)
    found = {e.name: e for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)}
    if experiments:
        missing = [n for n in experiments if n not in found]
        if missing:
            raise SystemExit(f"no experiment named {missing} at {uri}; there are: {sorted(found)}")
        chosen = [found[n] for n in experiments]
    else:
        chosen = [e for n, e in found.items() if n != REPORT_EXPERIMENT]
    records, used = [], []
    for exp in chosen:
        token, before = None, len(records)
        while True:
            page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
            records += [_record(client, run, exp.name) for run in page if run.data.tags.get("kind") != SWEEP_KIND]
            token = page.token
            if not token:
                break
        if experiments or len(records) > before:  # an empty experiment (MLflow's "Default") is not worth naming
            used.append(exp.name)
    return records, used


def _record(client, run, experiment: str) -> RunRecord:
    metrics: dict[str, dict[int, float]] = {}
    for key in run.data.metrics:
        if key.startswith("eval/") or key in GEN_KEYS or (key.startswith("gen/") and key.endswith("_share")):
            hist = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: (m.timestamp, m.step))
            # a step logged twice (an unchanged model re-recorded): the later value wins
            metrics[tables.canonical_key(key)] = {m.step: m.value for m in hist}
    return RunRecord(run.info.run_id, run.info.status, experiment, run.info.start_time or 0,
                     dict(run.data.tags), dict(run.data.params), metrics)


def evaluation_folders(uri: str, runs: list[RunRecord], dst: Path) -> list[Path]:
    """Each run's per-item evaluations (artifacts ``evaluations/*.jsonl``) and config, downloaded into
    ``dst/<run id>`` for the paired statistics; runs that logged none (older ones) are left out."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file and run otherwise
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    folders = []
    for run in runs:
        folder = dst / run.run_id
        if not (folder / "evaluations").is_dir():
            try:
                for path in ("config.yaml", "evaluations"):
                    download_artifacts(run_id=run.run_id, artifact_path=path, dst_path=str(folder), tracking_uri=uri)
            except (MlflowException, OSError):
                continue
        folders.append(folder)
    return folders


def write_paired(folders: list[Path], out: Path) -> tuple[list[Path], str]:
    """paired.md: paired differences with 95% intervals over test items, and over runs where a row has
    enough of them (imm/report/paired.py)."""
    if not folders:
        return [], ""
    md = paired.report(folders)
    (out / "paired.md").write_text("### Paired differences (points; 95% interval over test items, × runs from "
                                   f"{paired.MIN_BOOTSTRAP_RUNS} runs on; p, Holm across α)\n\n{md}\n")
    return [out / "paired.md"], md


def log_report(uri: str, out: Path, tags: dict[str, str]) -> str:
    """Log the report folder as artifacts of a new run "report" in experiment imm-reports; returns its id."""
    import mlflow

    from imm.tracking import TrackingConfig, ensure_store

    if uri.startswith("sqlite:///"):  # artifacts beside the store, as the jobs' runs have them
        root = str(Path(uri[len("sqlite:///"):]).parent / "mlartifacts")
        exp_id = ensure_store(TrackingConfig(uri=uri, artifact_root=root, experiment=REPORT_EXPERIMENT))
    else:
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name(REPORT_EXPERIMENT)
        exp_id = exp.experiment_id if exp else client.create_experiment(REPORT_EXPERIMENT)
    client = mlflow.MlflowClient(uri)
    run = client.create_run(exp_id, run_name="report", tags={"kind": "report", **tags})
    client.log_artifacts(run.info.run_id, str(out))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


# ---------------------------------------------------------------- the report

def parse_filters(items: list[str]) -> dict[str, str]:
    filters = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--filter {item!r} must read KEY=VALUE, e.g. method=imm or run.iterations=3")
        filters[key] = value
    return filters


def no_runs_message(experiments: list[str], filters: dict[str, str], skipped: dict[str, int]) -> str:
    where = ", ".join(experiments) or "(none)"
    what = ", ".join(f"{k}={v}" for k, v in filters.items()) or "anything"
    others = ", ".join(f"{n} {s}" for s, n in skipped.items())
    return f"no finished runs in experiment {where} matching {what}" + (f" (skipped: {others})" if others else "")


def write_alpha_table(g: tables.Grid, out: Path, method: str,
                      references: dict[str, dict[str, float]] | None = None) -> tuple[list[Path], str]:
    """alpha_table.{md,csv,tex}, alpha_long.csv and (Eq. 6's axis) alpha.png, with ``references``'
    ID and OOD (Base, the methods that do not merge) drawn as lines."""
    references = references or {}
    header, body, note = render.grid_text(g)
    title = f"α ablation ({method})"
    md = render.markdown(header, body, note)
    (out / "alpha_table.md").write_text(f"### {title}\n\n{md}")
    (out / "alpha_table.tex").write_text(render.latex(header, body, f"{title}: {note}"))
    paper = g.corner == tables.ALPHA_AXES["paper"]
    long = []  # α of Eq. 6 first in either convention, then the paper's
    for r in g.rows:
        for c in g.cols:
            if (s := g.cells.get((r, c))) is not None:
                eq6, table3 = (f"{1 - float(c):.10g}", c) if paper else (c, f"{1 - float(c):.10g}")
                long.append({"set": r, "alpha": eq6, "mean": s.mean, "std": s.std, "n": s.n, "alpha_table3": table3})
    paths = [out / "alpha_table.md", render.write_csv(out / "alpha_table.csv", header, body),
             out / "alpha_table.tex", render.write_records(out / "alpha_long.csv", long)]
    if not paper:  # the figure's axis is Eq. 6's α
        figure = plots.alpha_figure(long, references, out, f"{title}: final model against α")
        paths += [figure] if figure else []
    return paths, md


def _mean(value) -> float | None:
    return value.mean if isinstance(value, tables.Stat) else None


def write_summary(rows: list[dict], out: Path) -> tuple[list[Path], str]:
    header = list(rows[0]) if rows else ["method", "α", "n", "ID", "OOD"]
    body = [[render.fmt(v) if isinstance(v, tables.Stat) or v is None else str(v) for v in r.values()] for r in rows]
    md = render.markdown(header, body, "final-iteration pass@1 (%), mean ± sample std over seeds "
                                       "(merged model for merging methods); Base = the starting model")
    (out / "summary.md").write_text(f"### Methods\n\n{md}")
    return [out / "summary.md", render.write_csv(out / "summary.csv", header, body)], md


def write_baselines(g: tables.Grid, out: Path, alpha: float) -> tuple[list[Path], str]:
    header, body, _ = render.grid_text(g)
    note = (f"pass@1 (%) at {g.corner} (merged model for merging methods, at α={alpha:g}); mean ± sample std "
            f"over seeds; {baselines.KEPT_SOUND}: share of the kept samples of that iteration with sound steps")
    md = render.markdown(header, body, note)
    (out / "baselines.md").write_text(f"### Baselines ({g.corner})\n\n{md}")
    (out / "baselines.tex").write_text(render.latex(header, body, f"Baselines at {g.corner}: {note}"))
    return [out / "baselines.md", render.write_csv(out / "baselines.csv", header, body), out / "baselines.tex"], md


def build(runs: list[RunRecord], out: Path, method: str, alpha: float, title: str, iteration: int | None = None,
          convention: str = "eq6") -> tuple[list[Path], str]:
    """Every table and figure into ``out``; returns the files and the text to print.

    ``iteration``: the baselines table's (None: each run's last); ``convention``: the α table's axis
    ("eq6": α weights the base model; "paper": Table 3's α = 1 − α)."""
    out.mkdir(parents=True, exist_ok=True)
    files, text = [], []
    if any(r.method == method for r in runs):
        references = {str(r["method"]): {"id": _mean(r["ID"]), "ood": _mean(r["OOD"])}
                      for r in tables.methods_summary(runs) if r["α"] == "–" and not r.get("setting")}
        paths, md = write_alpha_table(tables.alpha_table(runs, method, convention), out, method, references)
        files += paths
        text.append(f"α ablation ({method})\n{md}")
    else:
        text.append(f"α ablation: no finished {method} run, no table (choose one with --method)")
    paths, md = write_summary(tables.methods_summary(runs), out)
    files += paths
    text.append(f"methods\n{md}")

    curves = tables.curve_runs(runs, alpha)
    alphas = sorted({f"{r.alpha:g}" for r in runs if r.merges})
    if alphas and not any(r.merges for r in curves):  # the curves would silently lack imm/iimm
        text.append(f"curves: no merging run at α={alpha:g}, only at α {', '.join(alphas)} (choose with --alpha)")
    sets = tables.set_names(curves)
    paths, md = write_baselines(baselines.baselines_table(curves, iteration), out, alpha)
    files += paths
    text.append(f"baselines\n{md}")
    for stem, heading, (header, body), note in (
            ("stages", "Every stage", stages.stage_table(curves, sets),
             "pass@1 (%) of every evaluated stage; no answer and ran to limit: shares (%) of answers, mean over "
             "the single sets; OOD forgotten / newly solved: shares (%) of OOD items since the base model"),
            ("mechanism", "What the models write, every stage", mechanism_rates.mechanism_table(curves, sets),
             "what the models write out of domain (mean over the OOD sets; product written: the multiplication "
             "set): shares (%) of items, the equation gap in equations per item (written − needed); ID forms: "
             "shares of ID answers")):
        if body:
            md = render.markdown(header, body, f"{note}; mean ± sample std over seeds")
            (out / f"{stem}.md").write_text(f"### {heading}\n\n{md}")
            files += [out / f"{stem}.md", render.write_csv(out / f"{stem}.csv", header, body)]
            text.append(f"{heading.lower()}\n{md}")
    points = tables.iteration_points(curves, sets)
    if points:
        files.append(render.write_records(out / "iterations.csv", points))
        files += plots.iteration_figures(points, sets, out, f"{title} (merging methods at α={alpha:g})")
    paths, md = step_files(curves, sets, out, f"{title} (merging methods at α={alpha:g})")
    files += paths
    if md:
        text.append(f"per iteration\n{md}")
    paths, md = schedules.schedule_files(runs, out, title)
    files += paths
    if md:
        text.append(f"merge schedules and rules\n{md}")
    ks = tables.passk_sets(curves)
    if ks:
        rows = tables.passk_points(curves, ks)
        files += [render.write_records(out / "passk.csv", rows),
                  plots.passk_figure(rows, out, f"{title}: pass@k, final iteration (α={alpha:g})")]
    else:
        text.append("pass@k: no run logged pass@k (evaluate with eval.n>1 eval.temperature>0 eval.ks=[1,2,4,8])")
    return files, "\n".join(text)


def step_files(curves: list[RunRecord], sets: list[str], out: Path, title: str) -> tuple[list[Path], str]:
    """per_iteration.{md,csv}, steps.{csv,png} and transitions.{csv,png}, where the runs logged them;
    and the per-iteration table's text."""
    files, md = [], ""
    shares = reasoning.step_points(curves)
    if shares:
        header, body = reasoning.iteration_table(curves)
        md = render.markdown(header, body, "pass@1 (%) of each iteration's final model (merged for merging "
                                           "methods) and the kept samples that trained it: how many, and the "
                                           "share (%) of each step class; mean ± sample std over seeds")
        (out / "per_iteration.md").write_text(f"### Per iteration\n\n{md}")
        files += [out / "per_iteration.md", render.write_csv(out / "per_iteration.csv", header, body),
                  render.write_records(out / "steps.csv", shares),
                  plots.steps_figure(shares, out, f"{title}: step classes (%)")]
    moves = reasoning.transition_points(curves, sets)
    if moves:
        files += [render.write_records(out / "transitions.csv", moves),
                  plots.transitions_figure(moves, sets, out, f"{title}: items since the base model (%)")]
    return files, md


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m imm.report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracking-uri", default="sqlite:///outputs/mlflow.db", help="(default %(default)s)")
    ap.add_argument("--experiment", nargs="+", help="experiment names (default: all but imm-reports)")
    ap.add_argument("--sweep-id", help="only runs of this sweep (the multirun folder name), including runs it "
                                       "reused from earlier jobs")
    ap.add_argument("--filter", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="tag filters (method=imm, p=0.1); dotted keys are params (run.iterations=3)")
    ap.add_argument("--method", default="imm", help="method of the α table (default imm)")
    ap.add_argument("--alpha", type=float, default=0.5, help="α of merging methods in the curves and the "
                                                             "baselines table (default 0.5)")
    ap.add_argument("--alpha-convention", choices=sorted(tables.ALPHA_AXES), default="eq6",
                    help="the α table's columns: eq6 = α of Eq. 6, the weight of the base model (merge.alpha); "
                         "paper = the paper's Table 3, α = 1 − merge.alpha (default %(default)s)")
    ap.add_argument("--iteration", type=int, help="iteration of the baselines table (default: each run's last; "
                                                  "1 for the paper's first-iteration tables)")
    ap.add_argument("--name", default=time.strftime("%Y-%m-%d_%H-%M-%S"), help="report name (default: the time)")
    ap.add_argument("--out", type=Path, help="output folder (default outputs/reports/<name>)")
    ap.add_argument("--no-log", action="store_true", help="do not log the report back to MLflow")
    ap.add_argument("--jobs", nargs="+", type=Path, metavar="FOLDER",
                    help="job folders of runs made without tracking (tracking.enabled=false): the tables from "
                         "their results.json instead of MLflow (never logged back)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    filters = parse_filters(args.filter)
    if args.sweep_id:
        filters["sweep_id"] = args.sweep_id
    if args.jobs:
        records, unfinished = job_folders.load_jobs(args.jobs)
        experiments = ["job folders"]
    else:
        records, experiments = load_runs(args.tracking_uri, args.experiment)
    runs, skipped = tables.select(records, filters)
    if args.jobs and unfinished:
        skipped["unfinished"] = skipped.get("unfinished", 0) + unfinished
    if not runs:
        raise SystemExit(no_runs_message(experiments, filters, skipped))
    out = args.out or Path("outputs") / "reports" / args.name
    files, text = build(runs, out, args.method, args.alpha, ", ".join(experiments), args.iteration,
                        args.alpha_convention)
    by_name = {p.name: p for p in args.jobs or []}
    with tempfile.TemporaryDirectory() as tmp:  # downloads stay out of the report folder (it is logged)
        folders = ([by_name[r.run_id] for r in runs] if args.jobs
                   else evaluation_folders(args.tracking_uri, runs, Path(tmp)))
        paths, md = write_paired(folders, out)
    files += paths
    if md:
        text += f"\npaired differences (95% intervals over test items × runs)\n{md}"
    files.append(html.page(out, f"imm report {args.name}: {', '.join(experiments)}"))
    print(f"{len(runs)} finished runs from {', '.join(experiments)}"
          + (f"; skipped: {', '.join(f'{n} {s}' for s, n in skipped.items())}" if skipped else ""))
    print(f"\n{text}\nwrote {len(files)} files to {out}")
    if not args.no_log and not args.jobs:
        tags = {"experiments": ",".join(experiments), "filters": ",".join(f"{k}={v}" for k, v in filters.items()),
                "runs": str(len(runs)), "report_name": args.name}
        run_id = log_report(args.tracking_uri, out, tags)
        print(f"logged as MLflow run {run_id} in experiment '{REPORT_EXPERIMENT}' at {args.tracking_uri}")
    return out


if __name__ == "__main__":
    main()
