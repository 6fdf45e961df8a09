"""The report's figures, drawn from the tidy rows of imm/report/tables.py (matplotlib, Agg backend).

- iteration curves like the paper's Figs 6/7: x = Base, SFT 1, Merge 1, SFT 2, ...; one line per method,
  mean over seeds with a ± std band;
- pass@k curves like Figs 8/13: accuracy against k, final iteration;
- step shares (steps.png): sound / shortcut / flawed shares of the kept samples per iteration, and
  of the final model's right ID and OOD answers, one line per method;
- transitions (transitions.png): per set, the items forgotten and newly solved since the base model;
- the α curve (alpha.png) like the paper's Fig. 5: the merged model's final ID and OOD pass@1 against α,
  with the base model and the methods that do not merge as horizontal lines.

Run through ``python -m imm.report`` (see imm/report/cli.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: the report runs on machines without a display
import matplotlib.pyplot as plt  # noqa: E402

from imm.report.tables import stage_labels  # noqa: E402

# one look per method in every figure: (marker and line, colour)
STYLES = {"Base": ("*--", "k"), "vanilla": ("o-", "C0"), "star": ("P-", "C5"), "mixture": ("v-", "C2"),
          "accumulation": ("^-", "C4"), "imm": ("s-", "C3"), "iimm": ("D-", "C1"),
          "vanilla+grad_decay": ("x--", "C6"), "vanilla+grad_clip": ("+--", "C7"), "vanilla+weight_mask": ("1--", "C8")}


def _style(line: str) -> tuple[str, str | None]:
    fmt, color = STYLES.get(line.split(" ")[0], (".-", None))
    dashed = line.endswith(" SFT")  # a merging method's SFT model, drawn beside its merged one
    if "(" in line:  # several settings (e.g. p values) per method: let the colour tell them apart
        color = None
    return (fmt.replace("-", ":") if dashed else fmt), color


def _line_name(row: dict) -> str:
    return row["method"] + (f" ({row['setting']})" if row.get("setting") else "")


def _band(ax, xs, means, stds, style: tuple[str, str | None], label: str) -> None:
    ax.plot(xs, [100 * m for m in means], style[0], color=style[1], label=label, markersize=4)
    if any(not math.isnan(s) for s in stds):
        lo = [100 * (m - (0 if math.isnan(s) else s)) for m, s in zip(means, stds)]
        hi = [100 * (m + (0 if math.isnan(s) else s)) for m, s in zip(means, stds)]
        ax.fill_between(xs, lo, hi, alpha=0.15, color=ax.lines[-1].get_color())


def _iteration_axes(ax, rows: list[dict], set_name: str) -> None:
    mine = [r for r in rows if r["set"] == set_name]
    for name in dict.fromkeys(_line_name(r) for r in mine):
        pts = sorted((r for r in mine if _line_name(r) == name), key=lambda r: r["x"])
        _band(ax, [r["x"] for r in pts], [r["mean"] for r in pts], [r["std"] for r in pts], _style(name), name)
    top = max((r["x"] for r in mine), default=0)
    labels = stage_labels((top + 1) // 2)[: top + 1]
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_title(set_name)
    ax.set_ylabel("pass@1 (%)")
    ax.grid(alpha=0.3)


def iteration_figures(rows: list[dict], sets: list[str], out: Path, title: str) -> list[Path]:
    """One PNG per set (iterations_<set>.png) and the grid of all sets (iterations.png)."""
    paths = []
    for set_name in sets:
        fig, ax = plt.subplots(figsize=(6, 3.8))
        _iteration_axes(ax, rows, set_name)
        ax.legend(fontsize=8)
        fig.suptitle(title, fontsize=9)
        paths.append(_save(fig, out / f"iterations_{set_name}.png"))
    ncols = min(3, len(sets)) or 1
    nrows = math.ceil(len(sets) / ncols) or 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    for ax, set_name in zip(axes.flat, sets):
        _iteration_axes(ax, rows, set_name)
    for ax in list(axes.flat)[len(sets):]:
        ax.set_visible(False)
    paths.append(_save(fig, out / "iterations.png", top=_legend_above(fig, axes, title)))
    return paths


def passk_figure(rows: list[dict], out: Path, title: str) -> Path:
    """Accuracy against k for each set with pass@k metrics, one panel a set (passk.png)."""
    sets = list(dict.fromkeys(r["set"] for r in rows))
    ncols = min(3, len(sets)) or 1
    nrows = math.ceil(len(sets) / ncols) or 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    for ax, set_name in zip(axes.flat, sets):
        mine = [r for r in rows if r["set"] == set_name]
        for name in dict.fromkeys(r["line"] for r in mine):
            pts = sorted((r for r in mine if r["line"] == name), key=lambda r: r["k"])
            _band(ax, [r["k"] for r in pts], [r["mean"] for r in pts], [r["std"] for r in pts], _style(name), name)
        ks = sorted({r["k"] for r in mine})
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k (%)")
        ax.set_title(set_name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(sets):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    return _save(fig, out / "passk.png")


def _step_axes(ax, rows: list[dict], title: str, ylabel: str) -> None:
    """One line per method over iterations (x = step), mean ± std band."""
    for name in dict.fromkeys(_line_name(r) for r in rows):
        pts = sorted((r for r in rows if _line_name(r) == name), key=lambda r: r["step"])
        _band(ax, [r["step"] for r in pts], [r["mean"] for r in pts], [r["std"] for r in pts], _style(name), name)
    steps = sorted({r["step"] for r in rows})
    ax.set_xticks(steps, [str(s) for s in steps])
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def _legend_above(fig, axes, title: str) -> float:
    """The title and one legend of every line in any panel, above the panels; returns the panels' top
    (a figure fraction) that leaves them room: 0.3 inch for the title, 0.25 inch a legend row."""
    handles: dict[str, object] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    labels, height = list(handles), fig.get_figheight()
    fig.suptitle(title, fontsize=10, y=1 - 0.05 / height, va="top")
    fig.legend([handles[lab] for lab in labels], labels, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.3 / height),
               ncol=min(len(labels), 6) or 1, fontsize=9, frameon=False)
    return 1 - (0.55 + 0.25 * math.ceil(len(labels) / 6)) / height


def steps_figure(rows: list[dict], out: Path, title: str) -> Path | None:
    """steps.png: rows = what is read (kept samples, right ID answers, right OOD answers), columns =
    sound / shortcut / flawed; None when no run logged step shares."""
    sources = [o for o in ("kept", "id", "ood") if any(r["of"] == o for r in rows)]
    if not sources:
        return None
    shares = ("sound", "shortcut", "flawed")
    fig, axes = plt.subplots(len(sources), len(shares), figsize=(12.6, 3.2 * len(sources)), squeeze=False)
    what = {"kept": "kept samples", "id": "right ID answers", "ood": "right OOD answers"}
    for i, of in enumerate(sources):
        for j, share in enumerate(shares):
            mine = [r for r in rows if r["of"] == of and r["share"] == share]
            _step_axes(axes[i][j], mine, f"{share}: {what[of]}", "share (%)")
    return _save(fig, out / "steps.png", top=_legend_above(fig, axes, title))


def transitions_figure(rows: list[dict], sets: list[str], out: Path, title: str) -> Path | None:
    """transitions.png: rows = forgotten / newly solved since the base model, columns = test sets."""
    sets = [s for s in sets if any(r["set"] == s for r in rows)]
    if not sets:
        return None
    measures = ("forgotten", "newly_solved")
    fig, axes = plt.subplots(2, len(sets), figsize=(3.6 * len(sets), 6.4), squeeze=False)
    for i, measure in enumerate(measures):
        for j, set_name in enumerate(sets):
            mine = [r for r in rows if r["set"] == set_name and r["measure"] == measure]
            _step_axes(axes[i][j], mine, f"{set_name}: {measure.replace('_', ' ')}", "share of items (%)")
    return _save(fig, out / "transitions.png", top=_legend_above(fig, axes, title))


def alpha_figure(rows: list[dict], references: dict[str, dict[str, float]], out: Path, title: str) -> Path | None:
    """ID and OOD final pass@1 of the merging method against α (``rows``: alpha_long's set, alpha, mean, std),
    each name of ``references`` (Base, vanilla, ...: {"id": share, "ood": share}) a horizontal line."""
    panels = [name for name in ("id", "ood") if any(r["set"] == name for r in rows)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, name in zip(axes[0], panels):
        pts = sorted((r for r in rows if r["set"] == name), key=lambda r: float(r["alpha"]))
        _band(ax, [float(r["alpha"]) for r in pts], [r["mean"] for r in pts], [r["std"] for r in pts],
              _style("imm"), "merged model")
        for ref, values in references.items():
            if values.get(name) is not None:
                fmt, color = _style(ref)
                ax.axhline(100 * values[name], linestyle="--" if ref == "Base" else ":", color=color or "C7", label=ref)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo - 0.06 * (hi - lo), hi + 0.06 * (hi - lo))  # a line at the edge stays in view
        ax.set_xlabel("α (Eq. 6: the base model's weight)")
        ax.set_ylabel("pass@1 (%)")
        ax.set_title(name.upper())
    return _save(fig, out / "alpha.png", top=_legend_above(fig, axes, title))


def _save(fig, path: Path, top: float | None = None) -> Path:
    fig.tight_layout()
    if top is not None:  # room for the shared legend above the panels
        fig.subplots_adjust(top=top)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
