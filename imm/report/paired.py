"""Paired differences with 95% intervals, resampling test items and seeds, from per-item results.

    python -m imm.report.paired outputs/jobs/*            # every job folder of a sweep
    python -m imm.report.paired outputs/jobs/* --boot 4000 --out outputs/reports/paired.md

Each job writes its evaluations' per-item results (``evaluations/<label>.jsonl``: set, index, right,
step class). Jobs that were evaluated on other items (another ``dataset.seed``, evaluation split or
ID/OOD sets) are reported apart, one section each. Within a section jobs are grouped by method and
α; a group's runs (one base model × one seed each: several pretrained bases enter as more runs)
are paired item by item with their base model's evaluation of the same items. For each group's
final model it prints:

- the difference from the base model, ID and OOD (points of pass@1, the OOD mean over its sets);
- the difference between methods at the final iteration (same seeds, same items);
- the share of right OOD answers with sound steps, for the base and each final model;
- format apart from reasoning, where the records carry it: the difference in the share of answers
  that state a final answer, and in pass@1 among those;

each with a 95% percentile interval from a bootstrap, a bootstrap p-value, and for the IMM
comparisons with the base over several α values (or merge rules and schedules) a Holm correction
(``p_holm``) across them. Every bootstrap draw resamples the test items with replacement, the same
items for both models and for every run (the runs share the test items: an item hard for one seed
is hard for the others). It resamples the runs too only where a row has at least
``MIN_BOOTSTRAP_RUNS`` (20) of them (imm.report.intervals: at 3 runs a bootstrap over runs covers
under 80%); with fewer the runs are held fixed, so the interval and p-value speak of the test items'
noise for these runs, not of the seeds', the table says so, and each run's own value is listed.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from imm.report.intervals import MIN_BOOTSTRAP_RUNS
from imm.report.tables import schedule_label

ID_SETS, OOD_SETS = ("id_addsub",), ("ood_wording", "ood_mult", "ood_multistep")  # the testbed's
MERGING, NO_ALPHA = ("imm", "iimm"), -1.0  # methods whose jobs differ by α; the key of the others


def label(method: str, alpha: float) -> str:
    return f"{method} (α {alpha:g})" if alpha != NO_ALPHA else method


def split_sets(cfg: dict, evals: dict[str, list[dict]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A job's ID and OOD sets as its config names them (dataset.id_sets / ood_sets; OOD left empty =
    every other evaluated set); the testbed's families where the config names none."""
    data = cfg.get("dataset") or {}
    ids = tuple(data.get("id_sets") or ()) or ID_SETS
    present = sorted({r["set"] for rows in evals.values() for r in rows})
    ood = tuple(data.get("ood_sets") or ()) or (tuple(s for s in present if s not in ids) if data.get("id_sets") else OOD_SETS)
    return ids, ood


@dataclass(frozen=True)
class Interval:
    mean: float
    lo: float
    hi: float
    p: float  # two-sided bootstrap p-value of "no difference"

    def __str__(self) -> str:
        return f"{self.mean:+.1f} [{self.lo:+.1f}, {self.hi:+.1f}]"


def _draws(n_runs: int, n_items: int, boot: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each draw's runs (boot × runs × 1) and items (boot × 1 × items), to index a runs × items matrix:
    runs with replacement from MIN_BOOTSTRAP_RUNS runs on, else every run once; items with
    replacement, the same ones for every run."""
    items = rng.integers(0, n_items, (boot, 1, n_items))
    if n_runs < MIN_BOOTSTRAP_RUNS:
        return np.arange(n_runs)[None, :, None], items
    return rng.integers(0, n_runs, (boot, n_runs, 1)), items


def paired_bootstrap(a: np.ndarray, b: np.ndarray, boot: int = 2000, seed: int = 0) -> Interval:
    """Mean of ``a - b`` (runs × items, 0/1 or any score) in points, its 95% interval and p-value."""
    d = (np.asarray(a, float) - np.asarray(b, float)) * 100
    runs, items = _draws(*d.shape, boot, np.random.default_rng(seed))
    stats = d[runs, items].mean(axis=(1, 2))
    p = min(1.0, 2 * min((stats <= 0).mean(), (stats >= 0).mean()))
    return Interval(float(d.mean()), *np.percentile(stats, [2.5, 97.5]).tolist(), p)


def share_bootstrap(hit: np.ndarray, counted: np.ndarray, boot: int = 2000, seed: int = 0) -> Interval:
    """A pooled share ``hit / counted`` (runs × items, e.g. sound among right answers) in %, its interval."""
    hit, counted = np.asarray(hit, float), np.asarray(counted, float)
    runs, items = _draws(*hit.shape, boot, np.random.default_rng(seed))
    num = hit[runs, items].sum(axis=(1, 2))
    den = counted[runs, items].sum(axis=(1, 2))
    stats = 100 * num / np.maximum(den, 1)
    return Interval(float(100 * hit.sum() / max(counted.sum(), 1)), *np.percentile(stats, [2.5, 97.5]).tolist(), 1.0)


def share_difference_bootstrap(hit_a: np.ndarray, counted_a: np.ndarray, hit_b: np.ndarray, counted_b: np.ndarray,
                               boot: int = 2000, seed: int = 0) -> Interval:
    """The difference of two pooled shares ``hit / counted`` (runs × items each, the same items), e.g.
    right among answered, in points: its 95% interval and two-sided p-value, the items resampled
    together for both models (runs as in ``_draws``)."""
    arrays = [np.asarray(x, float) for x in (hit_a, counted_a, hit_b, counted_b)]
    runs, items = _draws(*arrays[0].shape, boot, np.random.default_rng(seed))
    ha, ca, hb, cb = (x[runs, items].sum(axis=(1, 2)) for x in arrays)
    stats = 100 * (ha / np.maximum(ca, 1) - hb / np.maximum(cb, 1))
    mean = 100 * (arrays[0].sum() / max(arrays[1].sum(), 1) - arrays[2].sum() / max(arrays[3].sum(), 1))
    p = min(1.0, 2 * min((stats <= 0).mean(), (stats >= 0).mean()))
    return Interval(float(mean), *np.percentile(stats, [2.5, 97.5]).tolist(), p)


def per_run(values, fmt: str) -> str:
    """Each run's value, as a row with fewer than MIN_BOOTSTRAP_RUNS runs lists them ("" from there on)."""
    return ", ".join(fmt.format(v) for v in values) if len(values) < MIN_BOOTSTRAP_RUNS else ""


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values (family-wise error over the comparisons)."""
    order = np.argsort(pvalues)
    out, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        out[i] = running
    return out


# ---------------------------------------------------------------- reading job folders

def read_job(job: Path) -> tuple[dict, dict[str, list[dict]]]:
    """A job's config and its evaluations by label ("Base", "SFT3", "Merge3", ...)."""
    cfg = yaml.safe_load((job / "config.yaml").read_text())
    evals = {p.stem: [json.loads(line) for line in p.open()] for p in sorted((job / "evaluations").glob("*.jsonl"))}
    return cfg, evals


def matrix(rows_by_seed: list[list[dict]], sets: tuple[str, ...], value) -> np.ndarray:
    """seeds × items of ``value(row)`` over the named sets, items in (set, index) order."""
    return np.array([[value(r) for r in sorted((r for r in rows if r["set"] in sets),
                                                key=lambda r: (r["set"], r["index"]))] for rows in rows_by_seed])


def final_label(evals: dict[str, list[dict]], method: str) -> str:
    """The final model's evaluation: the last merge of a merging method (its last SFT where the
    schedule merged inside SFT), else the last SFT."""
    for prefix in (("Merge", "SFT") if method in MERGING else ("SFT",)):
        steps = [k for k in evals if k.startswith(prefix) and k[len(prefix):].isdigit()]
        if steps:
            return max(steps, key=lambda k: int(k[len(prefix):]))
    return "Base"


def finished(cfg: dict, evals: dict[str, list[dict]]) -> bool:
    """Whether the job evaluated its last iteration (a stopped job's folder holds only the first ones)."""
    final = final_label(evals, cfg["method"]["name"])
    return final != "Base" and int(final.lstrip("MergeSFT")) == int(cfg["run"].get("iterations", 0) or 0)


Unit = tuple[str, int]  # one run: (base model, seed)


def setting(cfg: dict) -> tuple:
    """Which items a job was evaluated on: its data seed, evaluation split and ID/OOD sets."""
    data = cfg.get("dataset") or {}
    return (data.get("seed", 0), data.get("eval_split", "test"), tuple(data.get("id_sets") or ()),
            tuple(data.get("ood_sets") or ()))


def by_setting(jobs: list[Path]) -> dict[tuple, list[Path]]:
    out: dict[tuple, list[Path]] = {}
    for job in jobs:
        out.setdefault(setting(yaml.safe_load((job / "config.yaml").read_text())), []).append(job)
    return out


def groups(jobs: list[Path]) -> tuple[dict[tuple[str, float], dict[Unit, dict[str, list[dict]]]], tuple, tuple]:
    """(method, α) -> run (base model, seed) -> evaluations; and the ID and OOD sets (the first job's:
    the jobs of one setting share them)."""
    out: dict[tuple[str, float], dict[Unit, dict[str, list[dict]]]] = {}
    sets = (ID_SETS, OOD_SETS)
    for job in jobs:
        cfg, evals = read_job(job)
        if evals and finished(cfg, evals):
            if not out:
                sets = split_sets(cfg, evals)
            method = line(cfg)
            alpha = float(cfg["merge"]["alpha"]) if method.split()[0] in MERGING else NO_ALPHA  # α changes no other
            unit = ((cfg.get("model") or {}).get("name", ""), int(cfg["run"]["seed"]))
            out.setdefault((method, alpha), {})[unit] = evals
    return out, *sets


def line(cfg: dict) -> str:
    """A job's method as its rows name it: a merging method with another merge rule or schedule than
    IMM's (dare_linear, once per round) or another DARE drop rate than 0.1 carries them ("imm [della,
    steps]", "imm [p 0.2]"), so grids over rules, schedules and presets keep them apart."""
    method, merge = cfg["method"]["name"], cfg.get("merge") or {}
    rule, p = merge.get("name", "dare_linear"), merge.get("p", 0.1)
    schedule = schedule_label(merge.get("schedule", "round"), merge.get("every", ""))
    if method not in MERGING:
        return method
    parts = ([] if (rule, schedule) == ("dare_linear", "round") else [rule, schedule])
    parts += [f"p {p:g}"] if rule == "dare_linear" and p != 0.1 else []  # DARE's drop rate, if not IMM's 0.1
    return f"{method} [{', '.join(parts)}]" if parts else method


def right(r: dict) -> float:
    return float(r["right"])


def report(jobs: list[Path], boot: int = 2000) -> str:
    """The tables of every setting the jobs were evaluated in; a heading each where there are several."""
    parts = by_setting(jobs)
    if len(parts) == 1:
        return _report(jobs, boot)
    return "\n\n".join(f"#### dataset.seed {seed}, {split} split, ID {', '.join(ids) or 'default'}, "
                       f"OOD {', '.join(ood) or 'default'}\n\n{_report(part, boot)}"
                       for (seed, split, ids, ood), part in sorted(parts.items()))


def _report(jobs: list[Path], boot: int) -> str:
    found, id_sets, ood_sets = groups(jobs)
    rows: list[list[str]] = []
    imm_rows: list[tuple[int, float]] = []
    finals: dict[tuple[str, float], tuple[list[Unit], list[list[dict]]]] = {}
    compared: list[tuple[str, list[list[dict]], list[list[dict]]]] = []
    for (method, alpha), by_seed in sorted(found.items()):
        seeds = sorted(by_seed)
        final = [by_seed[s][final_label(by_seed[s], method.split()[0])] for s in seeds]
        base = [by_seed[s]["Base"] for s in seeds]
        finals[(method, alpha)] = (seeds, final)
        compared.append((f"{label(method, alpha)} final − Base", final, base))
        rows.append(_difference_row(*compared[-1], (id_sets, ood_sets), boot))
        if method.split()[0] == "imm":
            imm_rows.append((len(rows) - 1, float(rows[-1][5])))
    for (i, _), p in zip(imm_rows, holm([p for _, p in imm_rows])):
        rows[i][6] = f"{p:.3f}"
    keys = sorted(finals)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            common = sorted(set(finals[a][0]) & set(finals[b][0]))
            if not common:
                continue
            pick = lambda k: [finals[k][1][finals[k][0].index(s)] for s in common]  # noqa: E731
            compared.append((f"{label(*a)} − {label(*b)}, final", pick(a), pick(b)))
            rows.append(_difference_row(*compared[-1], (id_sets, ood_sets), boot))
    lines = _held_fixed_note([int(r[1]) for r in rows])
    lines += ["| comparison | runs | ID (points) | p | OOD (points) | p | p_holm (OOD) | ID per run | OOD per run |",
              "|---|---:|---:|---:|---:|---:|---:|---|---|"] + ["| " + " | ".join(r) + " |" for r in rows]
    if compared and all("answered" in r for _, a, _ in compared for recs in a for r in recs):
        lines += ["", "Format apart from reasoning: the difference in the share of first answers that state a final "
                  "answer (answered), and in pass@1 among the answers that do (right among answered); "
                  "points, 95% interval, p.", "",
                  "| comparison | runs | ID answered | ID right among answered | OOD answered | OOD right among answered |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [_format_row(name, a, b, (id_sets, ood_sets), boot) for name, a, b in compared]
    bases = {unit: evals["Base"] for by_unit in found.values() for unit, evals in by_unit.items()}
    has_steps = any(r.get("steps") for by_seed in found.values() for evals in by_seed.values()
                    for recs in evals.values() for r in recs)
    if not has_steps:  # benchmark files: no step classes to share out
        return "\n".join(lines)
    lines += ["", "| model | runs | right OOD answers | sound among them (%) | 95% interval | per run (%) |",
              "|---|---:|---:|---:|---|---|"]
    if bases:  # every run's base model once
        lines.append(_sound_row("Base", [bases[u] for u in sorted(bases)], boot, ood_sets))
    for (method, alpha), (seeds, final) in sorted(finals.items()):
        lines.append(_sound_row(f"{label(method, alpha)} final", final, boot, ood_sets))
    return "\n".join(lines)


def _difference_row(name: str, a: list[list[dict]], b: list[list[dict]], sets: tuple[tuple, tuple], boot: int) -> list[str]:
    """comparison, runs, ID interval and p, OOD interval and p, p_holm (filled in later), each run's
    ID and OOD difference (where the runs are held fixed)."""
    cells, runs = [], []
    for names in sets:
        x, y = matrix(a, names, right), matrix(b, names, right)
        cells.append(paired_bootstrap(x, y, boot))
        runs.append(per_run(100 * (x - y).mean(axis=1), "{:+.1f}"))
    return [name, str(len(a)), str(cells[0]), f"{cells[0].p:.3f}", str(cells[1]), f"{cells[1].p:.3f}", "", *runs]


def _format_row(name: str, a: list[list[dict]], b: list[list[dict]], sets: tuple[tuple, tuple], boot: int) -> str:
    """How much of a difference is format: answered, and right among answered, ID and OOD."""
    answered = lambda r: float(r["answered"])  # noqa: E731
    right_answered = lambda r: float(r["right"] and r["answered"])  # noqa: E731
    cells = []
    for names in sets:
        ca, cb = matrix(a, names, answered), matrix(b, names, answered)
        cells.append(paired_bootstrap(ca, cb, boot))
        cells.append(share_difference_bootstrap(matrix(a, names, right_answered), ca, matrix(b, names, right_answered),
                                                cb, boot))
    return f"| {name} | {len(a)} | " + " | ".join(f"{c} (p {c.p:.3f})" for c in cells) + " |"


def _held_fixed_note(runs: list[int]) -> list[str]:
    """The sentence above a table whose rows have fewer runs than a bootstrap over runs needs."""
    if not runs or min(runs) >= MIN_BOOTSTRAP_RUNS:
        return []
    return [f"Rows with fewer than {MIN_BOOTSTRAP_RUNS} runs give no interval over runs: their intervals and "
            "p-values resample the test items with the runs held fixed (the test items' noise, not the "
            "seeds'); each run's own difference is listed.", ""]


def _sound_row(name: str, rows_by_seed: list[list[dict]], boot: int, ood_sets: tuple[str, ...]) -> str:
    first = lambda r: (r.get("steps") or ["wrong"])[0]  # noqa: E731  (greedy pass@1: the one sample)
    sound = matrix(rows_by_seed, ood_sets, lambda r: float(first(r) == "sound"))
    counted = matrix(rows_by_seed, ood_sets, lambda r: float(first(r) != "wrong"))
    s = share_bootstrap(sound, counted, boot)
    shares = per_run(100 * sound.sum(axis=1) / np.maximum(counted.sum(axis=1), 1), "{:.1f}")
    return f"| {name} | {len(rows_by_seed)} | {int(counted.sum())} | {s.mean:.1f} | [{s.lo:.1f}, {s.hi:.1f}] | {shares} |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("jobs", nargs="+", type=Path)
    parser.add_argument("--boot", type=int, default=2000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    emit(report([j for j in args.jobs if (j / "config.yaml").exists()], args.boot), args.out)


def emit(text: str, out: Path | None) -> None:
    """Print a report, and write it to ``out`` where one is given."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")


if __name__ == "__main__":
    main()
