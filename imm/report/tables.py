"""The report's numbers, as pure functions over run records (no MLflow here, so tests build records by hand).

A run record holds what one MLflow run logged: tags, params and, per metric, {step: value}.
Step 0 is the base model, steps 1..T the iterations; pass@1 is ``eval/<kind>/<set>`` and pass@k
``eval/<kind>/<set>/pass@<k>``, with kind base | sft | merged. Values are fractions; tables show percent.

Run through ``python -m imm.report`` (see imm/report/cli.py).
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field

from imm.methods import METHODS

SUMMARY_SETS = ("id", "ood")  # the loop's means over ID and OOD sets; listed after the single sets
# tags (and dotted params) that split runs into separate grid points, lines and rows when they vary: a run
# on the validation split, another data seed or other ID sets is never a rerun of one on the test split
SETTING_KEYS = ("model", "dataset", "p", "dataset.seed", "dataset.eval_split", "dataset.id_sets")
# MLflow refuses "@" in metric names, so a run may log pass@k as pass_at_4, pass_4, pass:4, ...;
# records keep the canonical "pass@4" spelling
PASSK_RE = re.compile(r"^pass(?:@|_at_|_at|_|-|:)?(\d+)$")
PARAM_FALLBACK = {"method": "method.name", "alpha": "merge.alpha", "p": "merge.p", "seed": "run.seed",
                  "model": "model.name", "dataset": "dataset.name", "sft_intervention": "sft.intervention",
                  "history_share": "method.history_share", "merge": "merge.name",
                  "schedule": "merge.schedule"}  # for runs logged without a tag
INTERVENTIONS = ("grad_decay", "grad_clip", "weight_mask")  # the SFT interventions (paper Table 5)
# α of Eq. 6 weights the base model; the paper's Table 3 columns run the other way (its α = 0.1 column
# is the model nearest the base): α_table = 1 − α
ALPHA_AXES = {"eq6": "α (Eq. 6: weight of the base model)",
              "paper": "α (paper Table 3: 1 − Eq. 6's α, weight of the self-improved model)"}


@dataclass
class RunRecord:
    run_id: str
    status: str = "FINISHED"
    experiment: str = ""
    start_time: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, dict[int, float]] = field(default_factory=dict)  # key -> {step: value}

    def tag(self, key: str) -> str:
        return self.tags.get(key) or self.params.get(PARAM_FALLBACK.get(key, key), "")

    @property
    def method(self) -> str:
        return self.tag("method")

    @property
    def alpha(self) -> float:
        try:
            return float(self.tag("alpha"))
        except ValueError:
            return math.nan

    @property
    def intervention(self) -> str:
        """The SFT intervention ("" for plain SFT)."""
        name = self.tag("sft_intervention")
        return "" if name in ("", "none") else name

    @property
    def line(self) -> str:
        """The run's name in tables and figures: the method, with its SFT intervention if any
        ("vanilla+grad_decay"), so runs that differ only in the intervention stay apart."""
        return self.method + (f"+{self.intervention}" if self.intervention else "")

    @property
    def merges(self) -> bool:
        """Whether this run's models of interest are merged ones (decides merged vs sft as "final")."""
        known = METHODS.get(self.method)
        return known[1] if known else any(k.startswith("eval/merged/") for k in self.metrics)


def canonical_key(key: str) -> str:
    """``eval/sft/ood_mult/pass_at_4`` -> ``eval/sft/ood_mult/pass@4``; other keys unchanged."""
    head, _, last = key.rpartition("/")
    m = PASSK_RE.match(last)
    return f"{head}/pass@{m.group(1)}" if head.count("/") == 2 and m else key


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # sample std; nan when n < 2
    n: int


def stat(values: list[float]) -> Stat | None:
    """Mean ± sample std over the present values (None and nan are missing); None when none is present."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None
    return Stat(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan, len(vals))


# ---------------------------------------------------------------- selecting runs

def matches(rec: RunRecord, filters: dict[str, str]) -> bool:
    """KEY=VALUE filters: a dotted key is a param (``run.iterations=3``), any other a tag (``method=imm``)."""
    for key, want in filters.items():
        if key == "sweep_id":
            if not in_sweep(rec, want):
                return False
            continue
        have = rec.params.get(key) if "." in key else rec.tag(key)
        if have is None or not _same(have, want):
            return False
    return True


def in_sweep(rec: RunRecord, sweep_id: str) -> bool:
    """Whether the run served the sweep: created by it (sweep_id), or reused / continued by it (sweep.<id>)."""
    return rec.tags.get("sweep_id") == sweep_id or rec.tags.get(f"sweep.{sweep_id}") == "1"


def _same(have: str, want: str) -> bool:
    try:  # alpha=0.50 matches the tag "0.5"
        return float(have) == float(want)
    except ValueError:
        return have == want


def select(records: list[RunRecord], filters: dict[str, str]) -> tuple[list[RunRecord], dict[str, int]]:
    """FINISHED runs matching the filters, newest run per grid point; returns (runs, {reason: count skipped})."""
    skipped: dict[str, int] = {}
    latest: dict[tuple, RunRecord] = {}
    for rec in records:
        if not matches(rec, filters):
            continue
        if rec.status != "FINISHED":
            skipped[rec.status] = skipped.get(rec.status, 0) + 1
            continue
        key = grid_point(rec)
        if key in latest:  # a rerun of the same grid point and seed: count it once, the newest wins
            skipped["rerun"] = skipped.get("rerun", 0) + 1
            if latest[key].start_time >= rec.start_time:
                continue
        latest[key] = rec
    return sorted(latest.values(), key=lambda r: r.start_time), skipped


def schedule_label(schedule: str, every: object) -> str:
    """A merge schedule as the report names it: ``steps`` with another pull interval than merge.every's
    default 8 carries it ("steps every 2"), so runs that pull at other intervals stay apart."""
    return f"steps every {every}" if schedule == "steps" and str(every) not in ("", "8") else schedule


def grid_point(rec: RunRecord) -> tuple:
    # α does not change a non-merging run, so a method × α sweep holds copies of it: keep one per seed
    alpha = rec.tag("alpha") if rec.merges else ""
    share = rec.tag("history_share") if rec.method == "mixture" else ""  # only mixture reads it
    rule = (rec.tag("merge"), schedule_label(rec.tag("schedule"), rec.params.get("merge.every", ""))) \
        if rec.merges else ("", "")  # merge rule and schedule
    return (rec.experiment, rec.line, alpha, share, *(rec.tag(k) for k in SETTING_KEYS), *rule, rec.tag("seed"))


def setting_labeller(records: list[RunRecord]):
    """A function naming a run's setting (e.g. "p=0.2"), by the setting tags that vary; "" when none does."""
    varying = [k for k in SETTING_KEYS if len({r.tag(k) for r in records}) > 1]
    return lambda rec: ", ".join(f"{k}={rec.tag(k)}" for k in varying)


def method_lines(records: list[RunRecord]) -> list[tuple[str, str, list[RunRecord]]]:
    """(setting, line name, its runs) for each line of the figures and tables, in the report's method order."""
    label = setting_labeller(records)
    lines: dict[tuple, list[RunRecord]] = {}
    for r in records:
        lines.setdefault((label(r), method_order(r.line)), []).append(r)
    return [(setting, order[-1], runs) for (setting, order), runs in sorted(lines.items())]


def method_order(name: str) -> tuple:
    """Methods in METHODS' order, each followed by its runs with an SFT intervention ("vanilla+grad_clip")."""
    order = list(METHODS)
    method, _, intervention = name.partition("+")
    rank = order.index(method) if method in order else len(order)
    sub = INTERVENTIONS.index(intervention) + 1 if intervention in INTERVENTIONS else (len(INTERVENTIONS) + 1
                                                                                       if intervention else 0)
    return (rank, sub, name)


def set_names(records: list[RunRecord]) -> list[str]:
    """Every set with a pass@1 metric: the single sets sorted, then id and ood."""
    sets = {key.split("/")[2] for r in records for key in r.metrics
            if key.startswith("eval/") and key.count("/") == 2}
    return sorted(sets - set(SUMMARY_SETS)) + [s for s in SUMMARY_SETS if s in sets]


# ---------------------------------------------------------------- reading values

def metric_at(rec: RunRecord, key: str, step: int | None = None) -> float | None:
    """The value at a step (None = the last step logged); None when missing."""
    hist = rec.metrics.get(key)
    if not hist:
        return None
    return hist.get(max(hist) if step is None else step)


def final_kind(rec: RunRecord) -> str:
    """merged for a merging run that logged merged models (merge.schedule=steps merges inside SFT: sft)."""
    return "merged" if rec.merges and any(k.startswith("eval/merged/") for k in rec.metrics) else "sft"


def final_value(rec: RunRecord, set_name: str, kind: str | None = None, suffix: str = "") -> float | None:
    """The last iteration's pass@1 (or ``suffix="/pass@k"``) of the final model: merged, else sft."""
    return metric_at(rec, f"eval/{kind or final_kind(rec)}/{set_name}{suffix}")


def base_value(records: list[RunRecord], set_name: str, suffix: str = "") -> Stat | None:
    """The base model's score, one value per seed (every run of a seed starts from the same model)."""
    per_seed: dict[str, list[float]] = {}
    for rec in records:
        v = metric_at(rec, f"eval/base/{set_name}{suffix}", 0)
        if v is not None:
            per_seed.setdefault(rec.tag("seed"), []).append(v)
    return stat([statistics.fmean(vs) for vs in per_seed.values()])


# ---------------------------------------------------------------- the α table (paper Table 3)

@dataclass
class Grid:
    """A table of Stats: rows × columns, with a label for the row and column headers."""
    corner: str
    rows: list[str]
    cols: list[str]
    cells: dict[tuple[str, str], Stat]


def alpha_table(records: list[RunRecord], method: str = "imm", convention: str = "eq6") -> Grid:
    """Rows = test sets, columns = α sorted; cell = final pass@1 over seeds (merged model for imm/iimm).

    ``convention``: "eq6" labels the columns with α of Eq. 6 (the weight of the base model, as the
    config's merge.alpha); "paper" with the paper's Table 3 α = 1 − α, its columns ascending."""
    if convention not in ALPHA_AXES:
        raise ValueError(f"α convention {convention!r} is not one of {sorted(ALPHA_AXES)}")
    runs = [r for r in records if r.method == method and not r.intervention]
    label = setting_labeller(runs)
    shown = (lambda a: a) if convention == "eq6" else (lambda a: round(1 - a, 10))  # noqa: E731
    alphas = sorted({r.alpha for r in runs}, key=shown)
    rows = [(s, setting) for setting in sorted({label(r) for r in runs}) for s in set_names(runs)]
    cells: dict[tuple[str, str], Stat] = {}
    for set_name, setting in rows:
        for a in alphas:
            group = [r for r in runs if r.alpha == a and label(r) == setting]
            cell = stat([final_value(r, set_name) for r in group])
            if cell is not None:
                cells[(_row_name(set_name, setting), _fmt_alpha(shown(a)))] = cell
    return Grid(ALPHA_AXES[convention], [_row_name(s, g) for s, g in rows], [_fmt_alpha(shown(a)) for a in alphas],
                cells)


def _row_name(set_name: str, setting: str) -> str:
    return f"{set_name} ({setting})" if setting else set_name


def _fmt_alpha(a: float) -> str:
    return "?" if math.isnan(a) else f"{a:g}"


# ---------------------------------------------------------------- the methods summary

def methods_summary(records: list[RunRecord]) -> list[dict[str, object]]:
    """One row per (setting, method, α) plus Base: final ID/OOD pass@1 over seeds (merged for imm/iimm)."""
    label = setting_labeller(records)
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        alpha = _fmt_alpha(r.alpha) if r.merges else "–"
        groups.setdefault((label(r), method_order(r.line), alpha), []).append(r)
    out = []
    for setting in sorted({k[0] for k in groups}):
        runs = [r for k, rs in groups.items() if k[0] == setting for r in rs]
        base = {s: base_value(runs, s) for s in SUMMARY_SETS}
        out.append(_summary_row(setting, "Base", "–", len({r.tag("seed") for r in runs}), base))
        for key in sorted(k for k in groups if k[0] == setting):
            rs = groups[key]
            vals = {s: stat([final_value(r, s) for r in rs]) for s in SUMMARY_SETS}
            out.append(_summary_row(setting, key[1][-1], key[2], len(rs), vals))
    return out


def _summary_row(setting: str, method: str, alpha: str, n: int, vals: dict) -> dict[str, object]:
    row: dict[str, object] = {"setting": setting} if setting else {}
    return {**row, "method": method, "α": alpha, "n": n, "ID": vals["id"], "OOD": vals["ood"]}


# ---------------------------------------------------------------- iteration curves (Figs 6/7)

def stage_labels(iterations: int) -> list[str]:
    """The shared x axis: Base, SFT 1, Merge 1, SFT 2, ... (x position = index)."""
    return ["Base"] + [f"{kind} {t}" for t in range(1, iterations + 1) for kind in ("SFT", "Merge")]


def curve_runs(records: list[RunRecord], alpha: float) -> list[RunRecord]:
    """Merging runs at α (non-merging runs do not depend on α, so all of them)."""
    return [r for r in records if not r.merges or math.isclose(r.alpha, alpha)]


def iteration_points(records: list[RunRecord], sets: list[str]) -> list[dict[str, object]]:
    """Tidy rows (setting, method, set, stage, x, mean, std, n), one per point of each method's line."""
    rows = []
    for setting, method, runs in method_lines(records):
        steps = sorted({s for r in runs for k, h in r.metrics.items() if k.startswith("eval/") for s in h})
        kinds = [("Merge", "merged"), ("SFT", "sft")] if runs[0].merges else [("SFT", "sft")]
        for set_name in sets:
            points = [("Base", 0, "base", 0)] + [
                (f"{name} {t}", 2 * t - (name == "SFT"), kind, t) for t in steps if t > 0 for name, kind in kinds]
            for stage, x, kind, step in sorted(points, key=lambda p: p[1]):
                s = stat([metric_at(r, f"eval/{kind}/{set_name}", step) for r in runs])
                if s is not None:
                    rows.append({"setting": setting, "method": method, "set": set_name, "stage": stage, "x": x,
                                 "mean": s.mean, "std": s.std, "n": s.n})
    return rows


# ---------------------------------------------------------------- pass@k (Figs 8/13)

def passk_sets(records: list[RunRecord]) -> dict[str, list[int]]:
    """Sets with pass@k metrics and their ks (1 included: pass@1 is logged without a suffix)."""
    found: dict[str, set[int]] = {}
    for r in records:
        for key in r.metrics:
            parts = key.split("/")
            if len(parts) == 4 and parts[0] == "eval" and parts[3].startswith("pass@"):
                found.setdefault(parts[2], {1}).add(int(parts[3][len("pass@"):]))
    return {s: sorted(ks) for s, ks in sorted(found.items())}


def passk_points(records: list[RunRecord], ks_by_set: dict[str, list[int]]) -> list[dict[str, object]]:
    """Tidy rows (line, set, k, mean, std, n): Base, each method's final model, and the SFT model under merges."""
    label = setting_labeller(records)
    lines: dict[str, list[tuple[RunRecord, str]]] = {}
    for r in sorted(records, key=lambda r: method_order(r.line)):
        name = r.line + (f" ({label(r)})" if label(r) else "")
        lines.setdefault(name, []).append((r, final_kind(r)))
        if r.merges:
            lines.setdefault(f"{name} SFT", []).append((r, "sft"))
    rows = []
    for set_name, ks in ks_by_set.items():
        for k in ks:
            suffix = "" if k == 1 else f"/pass@{k}"
            base = base_value(records, set_name, suffix)
            if base is not None:
                rows.append({"line": "Base", "set": set_name, "k": k, "mean": base.mean, "std": base.std, "n": base.n})
            for name, pairs in lines.items():
                s = stat([final_value(r, set_name, kind, suffix) for r, kind in pairs])
                if s is not None:
                    rows.append({"line": name, "set": set_name, "k": k, "mean": s.mean, "std": s.std, "n": s.n})
    return rows
