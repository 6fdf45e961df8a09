"""One self-contained HTML page of a report: its tables and figures (images inlined), for a browser
or MLflow's artifact view (which shows .html artifacts in place)."""

from __future__ import annotations

import base64
import csv
import html
from pathlib import Path

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%;margin:.5em 0 1.5em}
.note{color:#666;font-size:90%}"""

TABLES = (("alpha_table.csv", "α ablation (final merged pass@1, %)"), ("summary.csv", "Methods (final pass@1, %)"),
          ("baselines.csv", "Baselines (paper Table 5: pass@1 %, kept samples' sound share)"),
          ("per_iteration.csv", "Per iteration (pass@1 %, kept samples and their step classes)"),
          ("stages.csv", "Every stage (pass@1 %, no-answer and ran-to-limit shares, OOD items moved since the base)"),
          ("mechanism.csv", "What the models write out of domain, every stage (%)"))


def _table(path: Path) -> str:
    rows = list(csv.reader(path.open()))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(out: Path, title: str, note: str = "") -> Path:
    """``out``/report.html from the tables (CSV) and figures (PNG) already in ``out``."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if note:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    for name, heading in TABLES:
        if (out / name).exists():
            parts.append(f"<h2>{html.escape(heading)}</h2>{_table(out / name)}")
    if (out / "paired.md").exists():  # several markdown tables: shown as written
        parts.append(f"<h2>Paired differences</h2><pre>{html.escape((out / 'paired.md').read_text())}</pre>")
    for png in sorted(out.glob("*.png")):
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(png.stem)}</h2><img alt='{png.stem}' src='data:image/png;base64,{data}'>")
    path = out / "report.html"
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    return path
