"""The paper's layer analyses as commands that write a CSV and a PNG.

    python -m imm.analysis importance --model imm/assets/testbed --data reasoning --out outputs/analysis
    python -m imm.analysis importance --model imm/assets/testbed --data plain --n 256 --out outputs/analysis
    python -m imm.analysis importance --model DIR --data plain --jsonl texts.jsonl --out DIR
    python -m imm.analysis weight-change A_DIR B_DIR --out outputs/analysis
    python -m imm.analysis weight-change-run outputs/jobs/JOB_KEY        # writes into JOB_KEY/analysis

- ``importance``: I_n per layer (Eq. 3; paper Figs 3, 10, 11). ``reasoning`` data are the testbed's
  worked solutions (loss on the solution only); ``plain`` text is the question texts alone as
  language-model data, or the ``text`` field of each line of ``--jsonl``.
- ``weight-change``: ΔW_n = Σ_k ‖W_A^{k,n} − W_B^{k,n}‖ between two checkpoints (Eq. 4; Fig. 4).
- ``weight-change-run``: each iteration's SFT step in a job folder (``sft1, merge1, sft2, ...``;
  iteration 1 starts from ``model.path`` in the job's ``config.yaml``), as shares per layer (Fig. 12).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from imm.analysis.weight_change import run_weight_change, shares, weight_change
from imm.data.world.problems import ID_FAMILY, format_prompt, make_split


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def plot_layers(path: Path, series: dict[str, dict[int, float]], ylabel: str, title: str, bars: bool) -> None:
    """One bar chart (a single series) or one line per series, layers on the x axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, values in series.items():
        xs, ys = list(values), list(values.values())
        if bars:
            ax.bar(xs, ys, label=label)
        else:
            ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("layer")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_texts(data: str, n: int, seed: int, family: str, jsonl: str | None) -> list:
    """Reasoning rows {question, response} or plain texts."""
    if jsonl:
        lines = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
        return [row["text"] for row in lines[:n]]
    items = make_split(family, "train", n, seed)
    if data == "reasoning":
        return [{"question": it["question"], "response": " " + it["solution"]} for it in items]  # as the model writes it: after a space
    return [it["question"] for it in items]


def cmd_importance(args) -> dict[int, float]:
    import torch
    from transformers import AutoModelForCausalLM

    from imm.analysis.importance import importance_per_layer, plain_examples, reasoning_examples
    from imm.models import load_tokenizer

    if args.jsonl and args.data == "reasoning":
        raise SystemExit("--jsonl gives plain text: use it with --data plain")
    tok = load_tokenizer(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    data = load_texts(args.data, args.n, args.seed, args.family, args.jsonl)
    examples = reasoning_examples(tok, data, format_prompt) if args.data == "reasoning" else plain_examples(tok, data)
    scores = importance_per_layer(model, examples, tok.pad_token_id, args.batch_size)
    share = shares(scores)
    stem = args.out / f"importance-{args.data}"
    write_csv(stem.with_suffix(".csv"), ["layer", "importance", "share"], [[n, v, share[n]] for n, v in scores.items()])
    plot_layers(stem.with_suffix(".png"), {args.data: scores}, "importance I_n (Eq. 3)",
                f"Layer importance on {args.data} data ({len(examples)} examples)", bars=True)
    return scores


def cmd_weight_change(args) -> dict[int, float]:
    change = weight_change(args.a, args.b)
    share = shares(change)
    write_csv(args.out / "weight-change.csv", ["layer", "change", "share"],
              [[n, v, share[n]] for n, v in change.items()])
    plot_layers(args.out / "weight-change.png", {"ΔW": change}, "ΔW_n (Eq. 4)",
                f"Weight change: {Path(args.a).name} vs {Path(args.b).name}", bars=True)
    return change


def cmd_weight_change_run(args) -> dict[int, dict[int, float]]:
    from omegaconf import OmegaConf

    run = Path(args.run_dir)
    base = OmegaConf.load(run / "config.yaml").model.path
    changes = run_weight_change(run, base)
    out = args.out or run / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    rows = [[t, n, v, s] for t, change in changes.items() for (n, v), s in zip(change.items(), shares(change).values())]
    write_csv(out / "weight-change-run.csv", ["iteration", "layer", "change", "share"], rows)
    series = {f"iteration {t}": {n: 100 * s for n, s in shares(c).items()} for t, c in changes.items()}
    plot_layers(out / "weight-change-run.png", series, "share of ΔW (%)", f"Weight change per iteration: {run.name}",
                bars=False)
    return changes


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m imm.analysis", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("importance", help="layer importance I_n (Eq. 3)")
    imp.add_argument("--model", required=True, help="checkpoint folder (model + tokenizer)")
    imp.add_argument("--data", choices=("reasoning", "plain"), required=True)
    imp.add_argument("--n", type=int, default=256, help="examples (default 256)")
    imp.add_argument("--jsonl", help="plain text: a JSONL file with a 'text' field per line")
    imp.add_argument("--family", default=ID_FAMILY, help="testbed problem family (default: in-domain)")
    imp.add_argument("--seed", type=int, default=0)
    imp.add_argument("--batch-size", type=int, default=32)
    imp.add_argument("--out", type=Path, required=True)
    wc = sub.add_parser("weight-change", help="ΔW_n between two checkpoints (Eq. 4)")
    wc.add_argument("a")
    wc.add_argument("b")
    wc.add_argument("--out", type=Path, required=True)
    run = sub.add_parser("weight-change-run", help="ΔW_n shares of each iteration's SFT step in a run")
    run.add_argument("run_dir")
    run.add_argument("--out", type=Path, help="default: RUN_DIR/analysis")
    return ap


COMMANDS = {"importance": cmd_importance, "weight-change": cmd_weight_change,
            "weight-change-run": cmd_weight_change_run}


def main(argv: list[str] | None = None):
    args = parser().parse_args(argv)
    if getattr(args, "out", None):
        args.out.mkdir(parents=True, exist_ok=True)
    result = COMMANDS[args.command](args)
    print(json.dumps({"command": args.command, "out": str(args.out or Path(args.run_dir) / "analysis")}))
    return result


if __name__ == "__main__":
    main()
