"""The end-of-run view: a short ID/OOD table per stage and the per-iteration plot (paper Figs 6/7).

On the testbed the table also reads the reasoning (imm/analysis/reasoning.py): per model, the sound share of
its right ID and OOD answers and the share of OOD items it forgot since the base model; per
iteration, the sound / shortcut / flawed shares of the kept samples that trained it."""

from __future__ import annotations

from pathlib import Path


STEP_COLUMNS = {"id/sound_share": "sound ID", "ood/sound_share": "sound OOD", "ood/forgotten": "forgot OOD"}
KEPT_COLUMNS = {"kept": "kept", "sound_share": "sound", "shortcut_share": "shortcut", "flawed_share": "flawed"}


def table(rows: list[tuple[str, dict[str, float]]], sets: list[str],
          kept: list[tuple[int, dict]] | None = None) -> str:
    """Rows "Base, SFT 1, Merge 1, ..." with ID, OOD and each test set's pass@1, and where logged the
    step columns (sound share of right answers, OOD items forgotten), as fixed-width text; below it,
    with ``kept`` [(iteration, yield)], the kept samples' step shares per iteration."""
    cols = ["id", "ood", *sets]
    steps = [c for c in STEP_COLUMNS if any(c in m for _, m in rows)]
    head = f"{'stage':<14}" + "".join(f"{c[:10]:>11}" for c in cols) + "".join(f"{STEP_COLUMNS[c]:>11}" for c in steps)
    lines = [head, "-" * len(head)]
    for label, m in rows:
        lines.append(f"{label:<14}" + "".join(f"{m.get(c, float('nan')):>11.3f}" for c in cols + steps))
    if kept and any("sound_share" in y for _, y in kept):
        head = f"{'kept samples':<14}" + "".join(f"{name:>11}" for name in KEPT_COLUMNS.values())
        lines += ["", head, "-" * len(head)]
        for step, y in kept:
            cells = [f"{y.get('kept', 0):>11d}"] + [f"{y.get(c, float('nan')):>11.3f}" for c in list(KEPT_COLUMNS)[1:]]
            lines.append(f"{f'iteration {step}':<14}" + "".join(cells))
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
