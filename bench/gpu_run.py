"""The paper-shaped run on one GPU through the real entrypoint, then sampling side by side.

    python -m bench.gpu_run --device cuda           # Qwen2.5-0.5B shape, bf16, GSM8K-sized: a few minutes on an H100/H200
    python -m bench.gpu_run --device cpu --tiny     # the same wiring on a 2-layer model, under a minute on a CPU
    python -m bench.gpu_run --device cuda --no-loop --profile   # the side by side alone, one call profiled

1. Builds the rehearsal (``imm.data.rehearsal``: a random-weight Qwen2 checkpoint folder and hub-schema
   GSM8K-shaped files; kept under --out and reused) and runs ``python -m imm.main`` on it as a
   subprocess: one iteration of ``method=imm`` with the paper's SFT settings (``sft=paper``), every
   stage on --device. A random model never ends a sample, so the run decodes under
   ``bench.sampling_side_by_side.StopRule`` (realistic lengths: from 50 tokens on, a row ends with
   chance 1/170 a step, at most 400; mean ≈ 200), which lets imm's loop drop finished rows.
2. Prints one JSON line per stage from the run's MLflow store and its log: generate, sft, merge,
   evaluate_base / evaluate_sft / evaluate_merged, each with its device, wall time and throughput
   (new tokens/s for sampling and evaluation over their decoding calls, trained non-padding
   tokens/s for SFT, and the SFT MFU = 6 · parameters · tokens/s / peak FLOP/s).
3. ``--compare`` (on by default): plain ``generate`` at several batch sizes, imm's hf backend
   (automatic batch size) and its compiled path on the same prompts and rows, with fixed lengths
   (every row exactly --fixed-new tokens) and realistic ones (the rule above): one JSON line each,
   then a markdown table. ``--profile``: one imm sampling call under torch.profiler.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from bench.sampling_side_by_side import StopRule

ROOT = Path(__file__).resolve().parents[1]
# GSM8K-sized: 1,024 training questions, 512 items per test set, k = 3 over the paper's temperatures,
# 10-shot prompts; lengths capped at 400 new tokens (realistic rule, mean ≈ 200) to fit the time.
PAPER = dict(shape="qwen2.5-0.5b", dtype="bfloat16", train=1024, test=512, test_sets="gsm8k,svamp", k=3,
             shots=10, rule="50,170,400", sft_batch=32, global_batch=128, epochs=3, threads=0,
             prompts=256, n=4, prompt_len=512, fixed_new=256, batches="256,512,1024")
TINY = dict(shape="tiny", dtype="float32", train=16, test=8, test_sets="gsm8k,svamp", k=2, shots=2,
            rule="4,12,32", sft_batch=4, global_batch=8, epochs=1, threads=1,
            prompts=8, n=2, prompt_len=64, fixed_new=16, batches="4,16")
LOG = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[[^\]]+\]\[\w+\] (.*)$")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model and small sizes (CPU check)")
    ap.add_argument("--out", default="outputs/gpu_run", help="rehearsal, run folder and MLflow store")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="peak dense bf16 FLOP/s of the chip in TFLOP/s for the MFU (H100/H200 SXM: 989)")
    ap.add_argument("--loop", action=argparse.BooleanOptionalAction, default=True, help="the imm.main run")
    ap.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True, help="sampling side by side")
    ap.add_argument("--compiled", action=argparse.BooleanOptionalAction, default=True,
                    help="include engine.compile=true in the side by side")
    ap.add_argument("--profile", action="store_true", help="profile one imm sampling call (realistic lengths)")
    ap.add_argument("--loop-lengths", default="realistic", choices=["realistic", "fixed"],
                    help="fixed: every sample runs to the cap (a random model's own behaviour, EOS never drawn)")
    for key, value in PAPER.items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None, help=f"default {value} "
                        f"(--tiny: {TINY[key]})")
    args = ap.parse_args(argv)
    for key, value in (TINY if args.tiny else PAPER).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def rehearsal(args) -> dict:
    """The checkpoint folder and data files, built once per shape and size under --out."""
    from imm.data.rehearsal import build

    folder = Path(args.out) / f"rehearsal-{args.shape}-{args.dtype}-{args.train}-{args.test}"
    done = folder / "built.json"
    if done.is_file():
        return json.loads(done.read_text())
    start = time.perf_counter()
    built = build(folder, args.shape, args.dtype, args.train, args.test)
    done.write_text(json.dumps(built))
    print(json.dumps({"stage": "rehearsal_build", "wall_s": round(time.perf_counter() - start, 2)}), flush=True)
    return built


def loop_command(args, built: dict, outputs: Path) -> list[str]:
    """``python -m imm.main`` with the overrides of the paper-shaped run, under the length rule."""
    from imm.data.rehearsal import overrides

    sets = args.test_sets.split(",")
    kept = [o for o in overrides(built, "gsm8k", args.dtype) if not o.startswith("dataset.test_sets=")
            and not any(o.startswith(f"dataset.files.{b}.test=") for b in built["files"] if b not in sets)]
    rule = StopRule.parse(args.rule)
    if args.loop_lengths == "fixed":
        rule = StopRule.fixed(rule.cap)
    run = [f"dataset.test_sets=[{','.join(sets)}]", "dataset.id_sets=[gsm8k]", "method=imm", "run.iterations=1",
           f"dataset.n_train={args.train}", f"dataset.n_test={args.test}", f"dataset.shots={args.shots}",
           f"generate.k={args.k}", f"generate.max_new_tokens={rule.cap}", f"eval.max_new_tokens={rule.cap}",
           "sft=paper", f"sft.batch_size={args.sft_batch}", f"sft.global_batch={args.global_batch}",
           f"sft.epochs={args.epochs}", f"model.device={args.device}", f"model.threads={args.threads}",
           f"outputs={outputs}"]
    return [sys.executable, "-m", "bench.sampling_side_by_side", "--rule", str(rule), "--", *kept, *run]


def logged(stdout: str) -> list[tuple[float, str]]:
    """(time, message) of each log line of the run."""
    out = []
    for line in stdout.splitlines():
        m = LOG.match(line)
        if m:
            out.append((datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp(), m[2]))
    return out


def decode_calls(events) -> list[dict]:
    """Each decoding call's log line (imm.sampling.complete)."""
    pat = re.compile(r"^(.+): (\d+) rows, (\d+) new tokens in ([\d.]+) s .*?, (\d+) rows a call(?:,|$)")
    return [{"t": t, "desc": m[1], "rows": int(m[2]), "new_tokens": int(m[3]), "seconds": float(m[4]),
             "rows_per_call": int(m[5])} for t, msg in events if (m := pat.match(msg))]


def evaluations(events) -> list[dict]:
    """Evaluation stages in order: device, wall time (from 'evaluate on' to its result line) and decoding."""
    out, calls = [], decode_calls(events)
    for t, msg in events:
        if msg.startswith("evaluate on "):
            out.append({"device": msg.split()[2], "start": t})
        elif out and "end" not in out[-1] and (m := re.match(r"^(Base|SFT \d+|Merge \d+): ID ", msg)):
            out[-1].update(end=t, model={"Base": "base", "SFT": "sft", "Merge": "merged"}[m[1].split()[0]])
    for ev in out:
        mine = [c for c in calls if c["desc"].startswith("eval ") and ev["start"] <= c["t"] <= ev.get("end", 1e30)]
        ev.update(new_tokens=sum(c["new_tokens"] for c in mine), decode_s=sum(c["seconds"] for c in mine),
                  rows=sum(c["rows"] for c in mine), rows_per_call=max((c["rows_per_call"] for c in mine), default=0))
    return out


def metrics(db: Path) -> dict[str, float]:
    """The run's last value of every MLflow metric."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT key, value FROM metrics ORDER BY step, timestamp").fetchall()
    return dict(rows)


def device_of(events, stage: str) -> str:
    return next((msg.split()[2] for _, msg in events if msg.startswith(f"{stage} on ")), "?")


def n_params(model_dir: str) -> int:
    """Parameters of the checkpoint (tied embeddings stored once)."""
    from safetensors import safe_open

    total = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():
                total += math.prod(st.get_slice(name).get_shape())
    return total


def stage_lines(events, m: dict[str, float], params: int, peak_tflops: float, lengths: str) -> list[dict]:
    """One line per stage the loop ran, from the MLflow metrics and the log."""
    def rate(tokens, seconds):
        return round(tokens / seconds, 1) if seconds else 0.0

    gen = next((c for c in decode_calls(events) if c["desc"].startswith("sample ")), None)
    lines = []
    if gen:
        tokens = int(m.get("gen/new_tokens", gen["new_tokens"]))
        lines.append({"stage": "generate", "device": device_of(events, "synthesize"),
                      "wall_s": round(m.get("time/generate_s", 0.0), 2), "decode_s": gen["seconds"],
                      "new_tokens": tokens, "tokens_per_s": rate(tokens, gen["seconds"]), "rows": gen["rows"],
                      "mean_new_tokens": round(tokens / max(1, gen["rows"]), 1), "rows_per_call": gen["rows_per_call"],
                      "lengths": lengths})
    if "sft/tokens_per_s" in m:
        tps = m["sft/tokens_per_s"]
        lines.append({"stage": "sft", "device": device_of(events, "sft"), "wall_s": round(m.get("time/sft_s", 0.0), 2),
                      "tokens_per_s": round(tps, 1), "mfu": float(f"{6 * params * tps / (peak_tflops * 1e12):.3g}"),
                      "params": params, "steps": int(m.get("sft/steps", 0)), "rows": int(m.get("sft/rows", 0)),
                      "pad_share": round(m.get("sft/pad_share", 0.0), 4), "loss": round(m.get("sft/loss", 0.0), 4)})
    if "time/merge_s" in m:
        wall = m["time/merge_s"]
        lines.append({"stage": "merge", "device": device_of(events, "merge"), "wall_s": round(wall, 2),
                      "params_per_s": rate(params, wall)})
    for ev in evaluations(events):
        lines.append({"stage": f"evaluate_{ev.get('model', '?')}", "device": ev["device"],
                      "wall_s": round(ev.get("end", ev["start"]) - ev["start"], 2), "decode_s": round(ev["decode_s"], 2),
                      "new_tokens": ev["new_tokens"], "tokens_per_s": rate(ev["new_tokens"], ev["decode_s"]),
                      "rows": ev["rows"], "mean_new_tokens": round(ev["new_tokens"] / max(1, ev["rows"]), 1),
                      "rows_per_call": ev["rows_per_call"], "lengths": lengths})
    return lines


def run_loop(args, built: dict) -> list[dict]:
    import shutil

    outputs = (Path(args.out) / "run").resolve()
    shutil.rmtree(outputs, ignore_errors=True)  # a fresh store: every stage computed, none reused
    cmd = loop_command(args, built, outputs)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"imm.main failed (exit {proc.returncode}): {' '.join(cmd)}")
    events = logged(proc.stdout)
    lines = stage_lines(events, metrics(outputs / "mlflow.db"), n_params(built["model"]), args.peak_tflops,
                        args.loop_lengths)
    for line in lines:
        print(json.dumps(line), flush=True)
    print(json.dumps({"stage": "imm.main", "wall_s": round(wall, 2), "command": " ".join(cmd[1:])}), flush=True)
    return lines


def prompts_of(built: dict, tok, count: int, length: int, shots: int) -> list[str]:
    """``count`` distinct texts of about ``length`` tokens: a GSM8K question, then few-shot exemplars."""
    from imm.data.prompts import build_prompt

    questions = [json.loads(x)["question"] for x in Path(built["files"]["gsm8k"]["train"]).read_text().splitlines()]
    shots_text = build_prompt("", "gsm8k", shots=max(shots, 1))
    out = []
    for i in range(count):
        text = f"{questions[i % len(questions)]} ({i})\n\n" + shots_text * 4
        out.append(tok.decode(tok(text, add_special_tokens=False)["input_ids"][:length]))
    return out


def run_compare(args, built: dict) -> list[dict]:
    from bench.sampling_side_by_side import compare, profile, table
    from imm.models import ModelConfig, load_model, load_tokenizer

    model = load_model(ModelConfig(path=built["model"], dtype=args.dtype, device=args.device, threads=args.threads))
    tok = load_tokenizer(built["model"])
    prompts = prompts_of(built, tok, args.prompts, args.prompt_len, args.shots)
    enc = tok(prompts[:2], return_tensors="pt", padding=True).to(model.device)  # CUDA context, kernels, handles
    model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    rules = {"fixed": StopRule.fixed(args.fixed_new), "realistic": StopRule.parse(args.rule)}
    batches = [int(b) for b in args.batches.split(",")]
    lines = compare(model, tok, prompts, args.n, batches, rules, compiled=args.compiled)
    print(table(lines), flush=True)
    if args.profile:
        profile(model, tok, prompts, args.n, rules["realistic"])
    return lines


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no GPU visible; use --device cpu --tiny")
        print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    start = time.perf_counter()
    built = rehearsal(args)
    report = {"stages": run_loop(args, built) if args.loop else [],
              "compare": run_compare(args, built) if args.compare else []}
    print(json.dumps({"stage": "total", "wall_s": round(time.perf_counter() - start, 2)}), flush=True)
    return report


if __name__ == "__main__":
    main()
