"""A small mutation check of the formulas behind reported numbers: one-line changes (an operator flipped,
a constant changed), each run against the unit tests that pin that formula; a change no test fails on
is listed as survived.

    python scripts/mutation_check.py                      # every target, on a copy of the committed tree
    python scripts/mutation_check.py --only passk paired  # the targets whose file path has one of these
    python scripts/mutation_check.py --list               # the mutants, without running anything
    python scripts/mutation_check.py --rerun check.log    # only the mutants an earlier run's log says survived

The working tree is never written: the check runs in a temporary copy of HEAD (``git archive``), so
commit what it should read. Each mutant re-runs its tests in a fresh interpreter (a few seconds each).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
import tempfile
import tokenize
from pathlib import Path

# (file, functions or methods whose body is mutated, unit tests that pin them)
TARGETS = [
    ("imm/grading/passk.py", ("pass_at_k", "mean_pass_at_k"), ("test_passk.py", "test_eval_metrics.py")),
    ("imm/report/intervals.py", ("pearson", "fisher_interval", "permutation_p", "_rows_r", "correlation_note"),
     ("test_intervals.py", "test_report_schedules.py")),
    ("imm/report/paired.py", ("_draws", "paired_bootstrap", "share_bootstrap", "per_run", "holm", "_difference_row",
                              "_sound_row"), ("test_paired.py",)),
    ("imm/report/tables.py", ("stat",), ("test_report_schedules.py", "test_silent_changes.py")),
    ("imm/analysis/forgetting.py", ("chance_level", "corrected", "chance_corrected", "verified_pass1", "group_means"),
     ("test_diagnostics.py",)),
    ("imm/analysis/divergence.py", ("token_kl", "response_kl"), ("test_diagnostics.py",)),
    ("imm/analysis/diversity.py", ("answer_diversity",), ("test_diagnostics.py",)),
    ("imm/analysis/reasoning.py", ("shares", "step_metrics", "kept_shares", "transitions"), ("test_reasoning.py",)),
    ("imm/analysis/mechanism.py", ("set_metrics", "kept_forms"), ("test_mechanism.py",)),
    ("imm/evaluate.py", ("evaluate",), ("test_eval_metrics.py",)),
    ("imm/grading/filtering.py", ("rate", "coverage", "keep_correct"),
     ("test_round_figures.py", "test_methods.py", "test_paper_code.py")),
    ("imm/sampling/__init__.py", ("ending_shares",), ("test_round_figures.py",)),
    ("imm/stages.py", ("kept_text",), ("test_round_figures.py",)),
    ("imm/sft/torch_loop.py", ("train",), ("test_round_figures.py",)),
    ("imm/sft/interventions.py", ("decay_step_size", "keep_top_updates"), ("test_round_figures.py",)),
    ("imm/merge/stats.py", ("summary",), ("test_merge.py",)),
    ("imm/plan/memory.py", ("params", "kv_bytes_per_token", "activation_bytes", "sft_memory", "sample_memory"),
     ("test_plan_by_hand.py", "test_plan.py")),
    ("imm/plan/job.py", ("trained_rows", "workload", "context_tokens"),
     ("test_plan_by_hand.py", "test_plan_roles.py", "test_plan.py")),
    ("imm/plan/throughput.py", ("gpu_rates",), ("test_plan_by_hand.py",)),
]
SWAPS = [(" + ", " - "), (" - ", " + "), (" * ", " / "), (" / ", " * "), (" < ", " <= "), (" <= ", " < "),
         (" > ", " >= "), (" >= ", " > "), (" == ", " != "), (" != ", " == "), ("min(", "max("), ("max(", "min("),
         (" and ", " or "), (" or ", " and ")]
NUMBER = re.compile(r"(?<![\w.])(\d+\.\d*|\d+)(?![\w.])")


def body_lines(source: str, names: tuple[str, ...]) -> list[int]:
    """0-based lines of the named functions' code: their docstrings left out."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in names:
            body = node.body[1:] if ast.get_docstring(node) else node.body
            lines += [i for stmt in body for i in range(stmt.lineno - 1, stmt.end_lineno)]
    return sorted(set(lines))


def literal_spans(source: str) -> dict[int, list[tuple[int, int]]]:
    """0-based line -> (start, end) columns of the string literals and comments on it: never mutated."""
    spans: dict[int, list[tuple[int, int]]] = {}
    for tok in tokenize.generate_tokens(iter(source.splitlines(keepends=True)).__next__):
        if tok.type in (tokenize.STRING, tokenize.COMMENT, getattr(tokenize, "FSTRING_MIDDLE", -1)):
            for row in range(tok.start[0], tok.end[0] + 1):
                start = tok.start[1] if row == tok.start[0] else 0
                end = tok.end[1] if row == tok.end[0] else 10 ** 6
                spans.setdefault(row - 1, []).append((start, end))
    return spans


def mutants(line: str, skip: list[tuple[int, int]]) -> list[str]:
    """Every one-change variant of a line's code, none inside a string or comment (``skip``)."""
    code = lambda at: not any(a <= at < b for a, b in skip)  # noqa: E731
    out = []
    for old, new in SWAPS:
        start = line.find(old)
        while start >= 0:
            if code(start):
                out.append(line[:start] + new + line[start + len(old):])
            start = line.find(old, start + 1)
    for m in NUMBER.finditer(line):
        if code(m.start()):
            text = m.group()
            changed = str(int(text) + 1) if text.isdigit() else repr(float(text) * 2 if float(text) else 1.0)
            out.append(line[:m.start()] + changed + line[m.end():])
    return out


def run_tests(root: Path, tests: tuple[str, ...]) -> str:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
           *(f"tests/unit/{t}" for t in tests)]
    env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}
    try:
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "caught (timeout)"
    return "survived" if done.returncode == 0 else "caught"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--rerun", type=Path, help="a log of an earlier run: only its survivors")
    args = parser.parse_args(argv)
    again = {tuple(line.split(None, 1)[1].split("  ->  ", 1)) for line in args.rerun.read_text().splitlines()
             if line.startswith("survived")} if args.rerun else None
    targets = [t for t in TARGETS if not args.only or any(o in t[0] for o in args.only)]
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=repo, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
        survived = total = 0
        for file, names, tests in targets:
            path = root / file
            original = path.read_text()
            lines, skip = original.splitlines(keepends=True), literal_spans(original)
            if again is not None and not any(w[0].startswith(f"{file}:") for w in again):
                continue
            if not args.list and run_tests(root, tests) != "survived":
                print(f"{file}: its tests fail unmutated; skipped")
                continue
            for i in body_lines(original, names):
                for variant in mutants(lines[i], skip.get(i, [])):
                    where = f"{file}:{i + 1}: {lines[i].strip()}  ->  {variant.strip()}"
                    if again is not None and tuple(where.split("  ->  ", 1)) not in again:
                        continue
                    total += 1
                    if args.list:
                        print(where)
                        continue
                    path.write_text("".join(lines[:i] + [variant] + lines[i + 1:]))
                    verdict = run_tests(root, tests)
                    path.write_text(original)
                    survived += verdict == "survived"
                    print(f"{verdict:16} {where}", flush=True)
        print(f"{total} mutants" + ("" if args.list else f", {survived} survived"))


if __name__ == "__main__":
    main()
