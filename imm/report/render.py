"""The report's tables as text: percent cells, markdown, LaTeX and CSV (pure functions over tables.py's
cells and grids)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from imm.report.tables import Grid, Stat


def fmt(s: Stat | None, ref_n: int = 0) -> str:
    """Percent with one decimal: "38.8 ± 1.2", "38.8" for one seed, "" when missing; "(n=2)" off the usual n."""
    if s is None:
        return ""
    text = f"{100 * s.mean:.1f}" if s.n < 2 else f"{100 * s.mean:.1f} ± {100 * s.std:.1f}"
    return text + (f" (n={s.n})" if ref_n and s.n != ref_n else "")


def grid_text(g: Grid) -> tuple[list[str], list[list[str]], str]:
    """Header, rows of cell strings and the footnote on seeds."""
    ns = [c.n for c in g.cells.values()]
    ref = max(set(ns), key=ns.count) if ns else 0  # the usual seed count; other counts are marked in the cell
    body = [[r] + [fmt(g.cells.get((r, c)), ref) for c in g.cols] for r in g.rows]
    note = (f"pass@1 (%) of the final iteration; mean ± sample std over n={ref} seeds"
            if ref > 1 else "pass@1 (%) of the final iteration; one seed per cell")
    if any(n != ref for n in ns):
        note += "; a cell over another number of seeds shows its n"
    return [g.corner, *g.cols], body, note


def markdown(header: list[str], body: list[list[str]], note: str = "") -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + (f"\n\n{note}\n" if note else "\n")


LATEX_ESCAPES = {"_": r"\_", "%": r"\%", "±": r"$\pm$", "α": r"$\alpha$"}


def latex(header: list[str], body: list[list[str]], caption: str) -> str:
    esc = lambda s: "".join(LATEX_ESCAPES.get(ch, ch) for ch in s)  # noqa: E731
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}",
             r"\toprule", " & ".join(esc(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(esc(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{esc(caption)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, header: list[str], body: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(body)
    return path


def write_records(path: Path, rows: list[dict[str, object]]) -> Path:
    header = list(dict.fromkeys(k for row in rows for k in row))
    return write_csv(path, header, [[_cell(row.get(k)) for k in header] for row in rows])


def _cell(v: object) -> object:
    if isinstance(v, Stat):
        return fmt(v)
    if isinstance(v, float) and math.isnan(v):
        return ""
    return "" if v is None else v
