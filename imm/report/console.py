"""The end-of-run view: a short ID/OOD table per stage and the per-iteration plot (paper Figs 6/7)."""

from __future__ import annotations

from pathlib import Path


def table(rows: list[tuple[str, dict[str, float]]], sets: list[str]) -> str:
    """Rows "Base, SFT 1, Merge 1, ..." with ID, OOD and each test set's pass@1, as fixed-width text."""
    cols = ["id", "ood", *sets]
    head = f"{'stage':<14}" + "".join(f"{c[:10]:>11}" for c in cols)
    lines = [head, "-" * len(head)]
    for label, m in rows:
        lines.append(f"{label:<14}" + "".join(f"{m.get(c, float('nan')):>11.3f}" for c in cols))
    return "\n".join(lines)


def plot(rows: list[tuple[str, dict[str, float]]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label, _ in rows]
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(rows)), 3.5))
    for key, style in (("id", "o-"), ("ood", "s--")):
        ax.plot(labels, [m.get(key, float("nan")) for _, m in rows], style, label=key.upper())
    ax.set_ylabel("pass@1")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.autofmt_xdate(rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
