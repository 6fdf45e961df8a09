"""Intervals over seeds and test items together, and how many of each a comparison needs.

    python -m imm.report.power outputs/jobs/*                       # every comparison of the jobs
    python -m imm.report.power outputs/jobs/* --half-width 2 --items 200,500,1000
    python -m imm.report.power outputs/jobs/* --family "imm (α 0.5) − vanilla" "imm (α 0.5) − Base"

A paired difference of two models (``a - b``, 0/1 per item) over S seeds and N test items (the same
items for every seed) is read as a two-way random-effects model without replication:

    d[s, i] = μ + a_s + b_i + e_si,   Var a = σ²_seed, Var b = σ²_item, Var e = σ²_rest,

a_s the seed's effect (its samples, its SFT order), b_i the item's (some items only one model gets
right), e the rest. The mean over seeds and items then has variance σ²_seed/S + σ²_item/N +
σ²_rest/(S·N), estimated by the ANOVA mean squares (each component floored at 0). The interval is
t-based with Satterthwaite's degrees of freedom, so at 5 seeds it is as wide as 5 seeds allow (a
percentile bootstrap over so few seeds covers far less than 95%: imm.report.intervals), and it
counts the test items' noise too (a t-interval over seeds alone does not: the items are shared).
tests/unit/test_power.py checks its coverage by simulation.

From a pilot's components the half-width for other S and N follows; ``--half-width`` prints the
fewest seeds that reach it at each item count. The OOD difference is over the pooled OOD items (the
sets have the same size here, so it is the mean over sets). ``--family`` names the comparisons of one
declared family: their p-values get Holm's correction together.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from imm.report.paired import Interval, by_setting, emit, final_label, groups, holm, label, matrix, right


@dataclass(frozen=True)
class Components:
    """A seeds × items difference matrix's mean (points) and variance components (points²)."""

    mean: float
    seeds: int
    items: int
    seed: float  # σ²_seed
    item: float  # σ²_item
    ms_seed: float  # the mean squares the interval's degrees of freedom come from
    ms_item: float
    ms_rest: float

    @property
    def rest(self) -> float:
        """σ²_rest (seed × item): its mean square is its estimate."""
        return self.ms_rest

    def variance(self, seeds: int | None = None, items: int | None = None) -> float:
        """Variance of the mean difference at ``seeds`` seeds and ``items`` items (default: the observed)."""
        s, n = seeds or self.seeds, items or self.items
        return self.seed / s + self.item / n + self.rest / (s * n)

    def half_width(self, seeds: int | None = None, items: int | None = None, level: float = 0.95) -> float:
        """The projected interval's half-width: the normal quantile (a plan's figure, before the run)."""
        return stats.norm.ppf(0.5 + level / 2) * math.sqrt(self.variance(seeds, items))

    def seeds_for(self, half: float, items: int, most: int = 100) -> int | None:
        """The fewest seeds whose projected half-width at ``items`` items is at most ``half`` (None: over ``most``)."""
        return next((s for s in range(2, most + 1) if self.half_width(s, items) <= half), None)


def components(d: np.ndarray) -> Components:
    """Components of a seeds × items matrix of differences (in points); one seed: the seed terms are 0."""
    d = np.asarray(d, float)
    s, n = d.shape
    grand = d.mean()
    by_seed, by_item = d.mean(axis=1), d.mean(axis=0)
    ms_item = s * ((by_item - grand) ** 2).sum() / max(n - 1, 1)
    if s < 2:  # no seed replication: every item's variance is the item's
        return Components(float(grand), s, n, 0.0, float(ms_item), 0.0, float(ms_item), 0.0)
    ms_seed = n * ((by_seed - grand) ** 2).sum() / (s - 1)
    resid = d - by_seed[:, None] - by_item[None, :] + grand
    ms_rest = (resid ** 2).sum() / ((s - 1) * (n - 1))
    return Components(float(grand), s, n, max(0.0, (ms_seed - ms_rest) / n), max(0.0, (ms_item - ms_rest) / s),
                      float(ms_seed), float(ms_item), float(ms_rest))


@dataclass(frozen=True)
class Estimate(Interval):
    df: float = float("nan")  # Satterthwaite's degrees of freedom of the t quantile


def interval(d: np.ndarray, level: float = 0.95) -> Estimate:
    """The mean difference's t interval over seeds and items, and its two-sided p-value.

    Var(mean) = (MS_seed + MS_item − MS_rest) / (S·N), the unbiased combination of mean squares, with
    Satterthwaite's degrees of freedom; where the rest's mean square exceeds the smaller of the other two
    (that component estimated at 0) the larger one alone stands in, a slightly wider interval."""
    c = components(d)
    s, n = c.seeds, c.items
    if s < 2:
        var, df = c.ms_item / n, n - 1.0
    else:
        terms = [(c.ms_seed, s - 1), (c.ms_item, n - 1), (-c.ms_rest, (s - 1) * (n - 1))]
        total = sum(m for m, _ in terms)
        if min(c.ms_seed, c.ms_item) < c.ms_rest:
            terms = [max(terms[:2], key=lambda t: t[0])]
            total = terms[0][0]
        var = total / (s * n)
        df = total ** 2 / sum(m ** 2 / f for m, f in terms if f > 0) if total > 0 else float(s - 1)
    se = math.sqrt(max(var, 0.0))
    if se == 0:
        return Estimate(c.mean, c.mean, c.mean, 1.0 if c.mean == 0 else 0.0, float(df))
    q = stats.t.ppf(0.5 + level / 2, df)
    p = float(2 * stats.t.sf(abs(c.mean) / se, df))
    return Estimate(c.mean, c.mean - q * se, c.mean + q * se, p, float(df))


# ---------------------------------------------------------------- comparisons of job folders

def comparisons(jobs: list[Path]) -> tuple[list[tuple[str, dict[str, np.ndarray]]], tuple, tuple]:
    """(name, {"ID": seeds × items, "OOD": ...}) of each final model against the base and of each pair
    of (method, α) groups on their common seeds; the ID and OOD sets."""
    found, id_sets, ood_sets = groups(jobs)
    finals, out = {}, []
    for (method, alpha), by_unit in sorted(found.items()):
        units = sorted(by_unit)
        finals[(method, alpha)] = {u: by_unit[u][final_label(by_unit[u], method.split()[0])] for u in units}
        base = [by_unit[u]["Base"] for u in units]
        out.append((f"{label(method, alpha)} − Base", _diffs(list(finals[(method, alpha)].values()), base, id_sets, ood_sets)))
    keys = sorted(finals)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            common = sorted(set(finals[a]) & set(finals[b]))
            if common:
                out.append((f"{label(*a)} − {label(*b)}", _diffs([finals[a][u] for u in common],
                                                                 [finals[b][u] for u in common], id_sets, ood_sets)))
    return out, id_sets, ood_sets


def _diffs(a: list[list[dict]], b: list[list[dict]], id_sets: tuple, ood_sets: tuple) -> dict[str, np.ndarray]:
    return {group: 100 * (matrix(a, sets, right) - matrix(b, sets, right))
            for group, sets in (("ID", id_sets), ("OOD", ood_sets))}


def report(jobs: list[Path], half: float = 2.0, items: list[int] = (200, 500, 1000), family: list[str] = ()) -> str:
    """The table of every setting the jobs were evaluated in (imm.report.paired.setting), a heading each
    where there are several: jobs on other items are never compared."""
    parts = by_setting(jobs)
    if len(parts) == 1:
        return _report(jobs, half, items, family)
    return "\n\n".join(f"#### dataset.seed {seed}, {split} split\n\n{_report(part, half, items, family)}"
                       for (seed, split, _, _), part in sorted(parts.items()))


def _report(jobs: list[Path], half: float, items: list[int], family: list[str]) -> str:
    found, id_sets, ood_sets = comparisons(jobs)
    unknown = set(family) - {name for name, _ in found}
    if unknown:
        raise SystemExit(f"--family names {sorted(unknown)}, not among the comparisons: {[n for n, _ in found]}")
    estimates = {(name, g): interval(d) for name, ds in found for g, d in ds.items()}
    adjusted = dict(zip(family, holm([estimates[name, "OOD"].p for name in family]))) if family else {}
    per_set = {"ID": len(id_sets), "OOD": len(ood_sets)}
    head = " | ".join(f"seeds for ±{half:g} at {n} a set" for n in items)
    lines = [f"Intervals over seeds and items (t, Satterthwaite df), points of pass@1; variance components in "
             f"points² (imm.report.power). ID: {', '.join(id_sets)}; OOD: {', '.join(ood_sets)}.", "",
             f"| comparison | group | seeds | items | difference [95%] | df | p | p_holm (family, OOD) | σ²_seed | σ²_item | "
             f"σ²_rest | {head} |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(items)]
    for name, ds in found:
        for group, d in ds.items():
            c, e = components(d), estimates[name, group]
            need = [c.seeds_for(half, n * per_set[group]) for n in items]
            holm_cell = f"{adjusted[name]:.3f}" if group == "OOD" and name in adjusted else ""
            lines.append(f"| {name} | {group} | {c.seeds} | {c.items} | {e} | {e.df:.0f} | {e.p:.3f} | {holm_cell} | "
                         f"{c.seed:.1f} | {c.item:.0f} | {c.rest:.0f} | "
                         + " | ".join("over 100" if s is None else str(s) for s in need) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imm.report.power", description=__doc__.split("\n")[0])
    parser.add_argument("jobs", nargs="+", type=Path)
    parser.add_argument("--half-width", type=float, default=2.0, help="target half-width of the 95%% interval, points")
    parser.add_argument("--items", default="200,500,1000", help="items per set to project at (comma-separated)")
    parser.add_argument("--family", nargs="*", default=[], help="comparisons of one declared family (Holm over their OOD p)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    emit(report([j for j in args.jobs if (j / "config.yaml").exists()], args.half_width,
                [int(x) for x in args.items.split(",")], args.family), args.out)


if __name__ == "__main__":
    main()
