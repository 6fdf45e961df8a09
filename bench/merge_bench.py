"""Merge benchmark: imm's streaming IMM merge vs mergekit vs pure I/O, on a Qwen2.5-0.5B-shaped
model (random weights, bf16, tied embeddings, about 1 GB per checkpoint).

    python bench/merge_bench.py --mergekit PATH/TO/venv/bin/mergekit-yaml [--dir /tmp/imm-merge-bench]

mergekit is not a dependency of imm: install it into its own virtual environment
(``python -m venv V && V/bin/pip install torch==2.13.0 mergekit==0.1.5``) and pass its
``mergekit-yaml``. Each method runs in its own process under ``/usr/bin/time -v`` (wall time, peak
RSS); the inputs are in the page cache for all of them (they are written just before).

(a) ours: ``merge_checkpoints`` with DARE p=0.1, then α=0.5 with the base, in one pass;
(b) mergekit in two stages: ``dare_linear`` (prev as base model, sft weight 1, density 0.9, rescale),
    then ``linear`` of that result with the base (0.5/0.5), bf16 arithmetic: two CLI runs, times
    summed, RSS the larger;
(c) mergekit in one ``dare_linear`` stage, the same merge: base model θ_prev, θ_sft with weight 1−α
    and density 1−p, θ_base with weight α and density 1, ``normalize: false``; since
    θ_prev + (1−α)·DARE(θ_sft − θ_prev) + α·(θ_base − θ_prev) = α·θ_base + (1−α)·(θ_prev + DARE(δ)).
    Once with float32 arithmetic (as imm: one rounding to bf16 at the end), once with bf16;
(d) pure I/O: read the three inputs tensor by tensor, write one output, no arithmetic.
Correctness beside it: every merge again with p=0, compared with imm's tensor by tensor (max abs diff).
The 1-minute load average is read after each row (the machine may be shared).
The table is printed and written to bench/RESULTS-merge.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imm.merge.rules import MergeConfig, row_ranges  # noqa: E402
from imm.merge.engine import Checkpoint, merge_checkpoints, shard_names, write_header  # noqa: E402

QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                  max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6)

REPEATS = 3
OURS, IO = "ours (imm merge_checkpoints)", "pure I/O"
TWO_STAGES = ("""merge_method: dare_linear
base_model: {prev}
models:
  - model: {sft}
    parameters: {{weight: 1.0, density: {density}}}
parameters: {{rescale: true}}
dtype: bfloat16
""", """merge_method: linear
models:
  - model: {base}
    parameters: {{weight: {alpha}}}
  - model: {stage1}
    parameters: {{weight: {keep}}}
dtype: bfloat16
""")
# mergekit adds the weighted task vectors to the base model: prev + (1−α)·DARE(sft − prev) + α·(base − prev)
ONE_STAGE = """merge_method: dare_linear
base_model: {prev}
models:
  - model: {sft}
    parameters: {{weight: {keep}, density: {density}}}
  - model: {base}
    parameters: {{weight: {alpha}, density: 1.0}}
parameters: {{normalize: false, rescale: true}}
dtype: {dtype}
out_dtype: bfloat16
"""
ALPHA, P = 0.5, 0.1


def make_checkpoints(root: Path) -> None:
    """base, prev = base + small noise, sft = prev + small noise; saved with save_pretrained."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if all((root / n / "config.json").is_file() for n in ("base", "prev", "sft")):
        return
    torch.manual_seed(0)
    model = Qwen2ForCausalLM._from_config(Qwen2Config(**QWEN25_05B), dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    for name in ("base", "prev", "sft"):
        if name != "base":  # an SFT-sized step: ~5 % of the typical weight magnitude
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=g, dtype=torch.bfloat16), alpha=1e-3)
        model.save_pretrained(root / name)


def child_ours(root: Path, out: Path, p: float) -> None:
    merge_checkpoints(root / "base", root / "prev", root / "sft", out, MergeConfig(alpha=ALPHA, p=p, seed=0), 0)


def child_io(root: Path, out: Path) -> None:
    """Read every tensor of the three inputs (in the engine's row blocks, into one reused buffer per
    input: the fastest way found), write the SFT tensors back out: the I/O floor, no arithmetic."""
    cks = [Checkpoint(root / n) for n in ("base", "prev", "sft")]
    out.mkdir(parents=True, exist_ok=True)
    sft = cks[2]
    for i, names in enumerate(shard_names(sft, 2 * 1024**3)):
        with open(out / f"model-{i + 1:05d}.safetensors", "wb") as f:
            write_header(f, [(n, sft.shape(n), sft.dtype(n)) for n in names], {"format": "pt"})
            for name in names:
                for rows in row_ranges("dare_linear", sft.shape(name)):
                    base, prev, t = (c.read(name, rows, reuse=True) for c in cks)
                    f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def timed(cmd: list[str], log: Path) -> tuple[float, float, float]:
    """(wall seconds, peak RSS in GiB, CPU seconds user+sys) of one command, by /usr/bin/time -v."""
    os.sync()  # earlier runs' dirty pages must not be flushed on this run's clock
    start = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - start
    log.write_text(res.stdout + res.stderr)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed, see {log}:\n{res.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", res.stderr).group(1)) for k in ("User", "System"))
    return wall, rss_kb / 1024**2, cpu


def best_of(n: int, fn, *args) -> tuple[float, float, float]:
    """The fastest of n runs (the machine may be shared): its wall time, with the largest RSS seen."""
    runs = [fn(*args) for _ in range(n)]
    fastest = min(runs)
    return fastest[0], max(r[1] for r in runs), fastest[2]


def with_load(fn, *args) -> tuple[float, ...]:
    """fn's figures and the 1-minute load average right after them."""
    return (*fn(*args), os.getloadavg()[0])


def run_ours(root: Path, out: Path, p: float) -> tuple[float, float, float]:
    return timed([sys.executable, __file__, "--child", "ours", "--dir", str(root), "--out", str(out), "--p", str(p)],
                 root / f"log-ours-{p}.txt")


def run_io(root: Path, out: Path) -> tuple[float, float, float]:
    return timed([sys.executable, __file__, "--child", "io", "--dir", str(root), "--out", str(out)],
                 root / "log-io.txt")


def mergekit_stages(root: Path, out: Path, p: float, kind: str) -> list[tuple[str, Path]]:
    """(YAML, output folder) of each mergekit run: kind is "two", "one-float32" or "one-bfloat16"."""
    names = {n: root / n for n in ("base", "prev", "sft")}
    if kind == "two":
        stage1 = out.with_name(out.name + "-stage1")
        return [(TWO_STAGES[0].format(density=1 - p, **names), stage1),
                (TWO_STAGES[1].format(alpha=ALPHA, keep=1 - ALPHA, stage1=stage1, **names), out)]
    return [(ONE_STAGE.format(keep=1 - ALPHA, alpha=ALPHA, density=1 - p, dtype=kind[4:], **names), out)]


def run_mergekit(root: Path, mergekit: str, out: Path, p: float, kind: str) -> tuple[float, float, float]:
    """Wall and CPU seconds summed over the stages, the largest peak RSS."""
    flags = ["--lazy-unpickle", "--no-cuda", "--no-copy-tokenizer", "--no-write-model-card", "--quiet",
             "--random-seed", "0"]
    runs = []
    for i, (yaml, dst) in enumerate(mergekit_stages(root, out, p, kind)):
        cfg = root / f"mergekit-{kind}-{i + 1}-p{p}.yaml"
        cfg.write_text(yaml)
        runs.append(timed([mergekit, str(cfg), str(dst), *flags], root / f"log-mergekit-{kind}-{i + 1}-p{p}.txt"))
    return sum(r[0] for r in runs), max(r[1] for r in runs), sum(r[2] for r in runs)


def mergekit_version(mergekit: str) -> str:
    """The version installed beside the mergekit-yaml executable (its own virtual environment)."""
    python = Path(mergekit).parent / "python"
    res = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('mergekit'))"],
                         capture_output=True, text=True)
    return res.stdout.strip() or "?"


def max_abs_diff(a_dir: Path, b_dir: Path) -> tuple[float, float]:
    """Max |a − b| over all tensors, and the share of entries that differ at all."""
    a, b = Checkpoint(a_dir), Checkpoint(b_dir)
    worst, differ, total = 0.0, 0, 0
    for name in a.names:
        x, y = a.read(name).float(), b.read(name).float()
        d = (x - y).abs()
        worst = max(worst, float(d.max()))
        differ += int((d > 0).sum())
        total += d.numel()
    return worst, differ / total


def report(rows: dict[str, tuple[float, float, float, float]], diffs: dict[str, tuple[float, float]],
           build_s: float, loadavg: tuple[str, str]) -> str:
    """The results table (wall, CPU, peak RSS, load average per row) and the p=0 agreement."""
    ours, io = rows[OURS], rows[IO]
    lines = [
        "# Merge benchmark: IMM merge of a Qwen2.5-0.5B-shaped model (bf16, 3 x ~1 GB inputs)",
        "",
        f"Machine: {os.cpu_count()}-core CPU, {_mem_gib():.0f} GiB RAM, {platform.system()}, "
        f"torch {torch.__version__}; inputs in the page cache. Command: `python bench/merge_bench.py`.",
        f"Merge: DARE p={P} on sft − prev, then α={ALPHA} with base. Building the inputs took {build_s:.0f} s "
        "(0 when an earlier run left them in --dir).",
        f"Ours and pure I/O: best of {REPEATS} runs; mergekit: one run each. `/proc/loadavg` before: "
        f"`{loadavg[0]}`, after: `{loadavg[1]}`.",
        "",
        "| method | wall time (s) | CPU time user+sys (s) | peak RSS (GiB) | load avg (1 min) after |",
        "|---|---:|---:|---:|---:|",
        *[f"| {k} | {t:.1f} | {c:.1f} | {r:.2f} | {a:.1f} |" for k, (t, r, c, a) in rows.items()],
        "",
        f"- ours / pure I/O: time {ours[0] / io[0]:.2f}x, CPU time {ours[2] / io[2]:.2f}x, "
        f"peak RSS {ours[1] / io[1]:.2f}x (goal <= 2x time)",
        *[f"- ours / {k}: time {ours[0] / r[0]:.2f}x, CPU time {ours[2] / r[2]:.2f}x, peak RSS {ours[1] / r[1]:.2f}x"
          for k, r in rows.items() if k.startswith("mergekit")],
        *[f"- correctness, p=0: max |ours − {k}| = {d:.3g}; entries that differ: {share:.2%}"
          for k, (d, share) in diffs.items()],
    ]
    return "\n".join(lines) + "\n"


def _mem_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "imm-merge-bench",
                    help="work folder (~7 GB)")
    ap.add_argument("--mergekit", default="mergekit-yaml", help="the mergekit-yaml executable")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS-merge.md")
    ap.add_argument("--child", choices=("ours", "io"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--p", type=float, default=P, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "ours":
        return child_ours(args.dir, args.out, args.p)
    if args.child == "io":
        return child_io(args.dir, args.out)

    args.dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    make_checkpoints(args.dir)
    build_s = time.perf_counter() - start
    version = mergekit_version(args.mergekit)
    kinds = {f"mergekit {version}, two stages, bf16 arithmetic": "two",
             f"mergekit {version}, one dare_linear stage, float32 arithmetic": "one-float32",
             f"mergekit {version}, one dare_linear stage, bf16 arithmetic": "one-bfloat16"}
    before = Path("/proc/loadavg").read_text().strip()
    rows = {IO: with_load(best_of, REPEATS, run_io, args.dir, args.dir / "out-io"),
            OURS: with_load(best_of, REPEATS, run_ours, args.dir, args.dir / "out-ours", P)}
    for label, kind in kinds.items():
        rows[label] = with_load(run_mergekit, args.dir, args.mergekit, args.dir / f"out-mergekit-{kind}", P, kind)
    after = Path("/proc/loadavg").read_text().strip()
    run_ours(args.dir, args.dir / "out-ours-p0", 0.0)
    diffs = {}
    for label, kind in kinds.items():
        run_mergekit(args.dir, args.mergekit, args.dir / f"out-mergekit-{kind}-p0", 0.0, kind)
        diffs[label] = max_abs_diff(args.dir / "out-ours-p0", args.dir / f"out-mergekit-{kind}-p0")
    text = report(rows, diffs, build_s, (before, after))
    print(text)
    args.results.write_text(text)


if __name__ == "__main__":
    main()
