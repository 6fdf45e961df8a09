"""Stage throughput, side by side with the plain alternatives, on the testbed model and data.

    python -m bench.stages                      # generation, SFT, evaluation on the shipped testbed model
    python -m bench.stages --questions 256 --k 4 --batch 64 --naive 32

Generation: our stage (length-sorted batches, finished rows leave the batch, one prefill per
prompt for all k samples) vs a naive per-prompt ``generate`` loop vs a plain batched ``generate``
with the same batch size. SFT: our loop vs TRL's ``SFTTrainer`` with default settings on the same
samples (response-only loss both). Evaluation: greedy pass@1 items/s. Tokens/s counts useful new
tokens (up to and including EOS) for generation, non-padding tokens for SFT.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import platform
import tempfile
import time

import torch

from imm import sft
from imm.data import DatasetConfig, load_data
from imm.evaluate import EvalConfig, evaluate
from imm.sampling import GenerateConfig, synthesize
from imm.models import ModelConfig, asset_path, load_model, load_tokenizer
from imm.data.world import problems


def useful_tokens(rows: torch.Tensor, eos: int, pad: int) -> int:
    """New tokens up to and including each row's first EOS (what a caller actually gets)."""
    total = 0
    for row in rows.tolist():
        n = len(row)
        if eos in row:
            n = row.index(eos) + 1
        total += n - sum(1 for t in row[:n] if t == pad and pad != eos)
    return total


def hf_generate(model, tok, prompts, temps, max_new, batch: int) -> int:
    """Plain batched ``generate``: prompts in given order, one call per temperature group."""
    tok.padding_side = "left"
    groups: dict[float, int] = {}
    for t in temps:
        groups[t] = groups.get(t, 0) + 1
    tokens = 0
    for b in range(0, len(prompts), batch):
        enc = tok(prompts[b:b + batch], return_tensors="pt", padding=True, return_token_type_ids=False)
        for temp, n in groups.items():
            out = model.generate(**enc, do_sample=True, temperature=temp, num_return_sequences=n,
                                 max_new_tokens=max_new, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            tokens += useful_tokens(out[:, enc["input_ids"].shape[1]:], tok.eos_token_id, tok.pad_token_id)
    return tokens


def bench_generation(model, tok, prompts, args) -> list[tuple[str, float, float]]:
    temps = [[0.2, 0.4, 0.6][i % 3] for i in range(args.k)]
    rows = []
    torch.manual_seed(0)
    start = time.perf_counter()
    tokens = hf_generate(model, tok, prompts[:args.naive], temps, args.max_new, batch=1)
    rows.append(("naive per-prompt generate", tokens / (time.perf_counter() - start), time.perf_counter() - start))
    start = time.perf_counter()
    tokens = hf_generate(model, tok, prompts, temps, args.max_new, batch=args.batch)
    rows.append((f"plain batched generate (batch {args.batch})", tokens / (time.perf_counter() - start),
                 time.perf_counter() - start))
    cfg = GenerateConfig(k=args.k, temperatures=[0.2, 0.4, 0.6], max_new_tokens=args.max_new, batch_size=args.batch)
    runs = [(f"imm synthesize (batch {args.batch})", cfg)]
    if args.compile:  # the static compiled path: once with its compile, once reusing it
        runs += [(f"imm synthesize, compile ({label})", dataclasses.replace(cfg, compile=True))
                 for label in ("compiling", "compiled")]
    for name, run_cfg in runs:
        start = time.perf_counter()
        samples = synthesize(model, tok, prompts, run_cfg, 0)
        took = time.perf_counter() - start
        tokens = sum(len(tok(s["text"], add_special_tokens=False)["input_ids"]) + 1 for g in samples for s in g)
        rows.append((name, tokens / took, took))
    return rows


def trl_sft(model, tok, rows, epochs: int, batch: int, lr: float, prompt_fn=problems.format_prompt,
            join: str = " ", **settings) -> tuple[float, float]:
    """TRL SFTTrainer, default settings but epochs/batch/lr and ``settings`` (SFTConfig fields: bf16,
    padding_free, ...); returns (non-pad tokens/s, padding share).
    ``join``: what stands between prompt and response (the testbed's gold solutions follow a space)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    data = Dataset.from_list([{"prompt": prompt_fn(r["question"]), "completion": join + r["response"]} for r in rows])
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=batch,
                         learning_rate=lr, report_to="none", save_strategy="no", logging_strategy="no",
                         use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, **settings)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
        real = padded = 0
        for b in trainer.get_train_dataloader():
            if "attention_mask" in b:
                real += int(b["attention_mask"].sum())
            else:  # padding-free: one row of concatenated sequences, nothing padded
                real += b["input_ids"].numel() if "position_ids" in b else int((b["input_ids"] != tok.pad_token_id).sum())
            padded += b["input_ids"].numel()
        start = time.perf_counter()
        trainer.train()
        took = time.perf_counter() - start
    return real * epochs / took, 1 - real / padded


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=asset_path("testbed"))
    p.add_argument("--questions", type=int, default=256)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--batch", type=int, default=64, help="prompts per call (ours and the plain batched generate)")
    p.add_argument("--naive", type=int, default=32, help="prompts for the naive loop (it is slow)")
    p.add_argument("--max-new", type=int, default=80)
    p.add_argument("--sft-rows", type=int, default=1024, help="0 = generation only (no SFT, no evaluation)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="also time generate.compile=true (static cache, compiled)")
    p.add_argument("--repeats", type=int, default=2, help="SFT runs per method (best counts)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tok, model = load_tokenizer(args.model), load_model(ModelConfig(path=args.model))
    items = problems.make_split(problems.ID_FAMILY, "train", args.questions, 0)
    prompts = [problems.format_prompt(i["question"]) for i in items]
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params")

    print(f"\n## generation: {args.questions} questions x k={args.k}, max {args.max_new} new tokens")
    gen = bench_generation(model, tok, prompts, args)
    naive = gen[0][1]
    print(f"{'method':<40}{'tokens/s':>10}{'seconds':>10}{'vs naive':>10}")
    for name, rate, took in gen:
        print(f"{name:<40}{rate:>10.0f}{took:>10.1f}{rate / naive:>9.1f}x")
    print(f"imm vs plain batched: {gen[2][1] / gen[1][1]:.2f}x")
    if args.sft_rows == 0:
        return

    rows = [{"question": i["question"], "response": i["solution"]}
            for i in problems.make_split(problems.ID_FAMILY, "train", args.sft_rows, 1)]
    print(f"\n## SFT: {len(rows)} samples, 1 epoch, batch 16, lr 1e-4, best of {args.repeats} (alternating)")
    ours, trl = [], []
    for _ in range(args.repeats):  # alternate, so a change in machine load hits both
        ours.append(sft.train(copy.deepcopy(model), tok, rows, problems.format_prompt,
                              sft.SFTConfig(epochs=1, lr=1e-4, batch_size=16), 0))
        trl.append(trl_sft(copy.deepcopy(model), tok, rows, 1, 16, 1e-4))
    stats = max(ours, key=lambda s: s["tokens_per_s"])
    trl_rate, trl_pad = max(trl)
    print(f"{'method':<40}{'tokens/s':>10}{'padding':>10}")
    print(f"{'imm sft (length-grouped)':<40}{stats['tokens_per_s']:>10.0f}{stats['pad_share']:>10.1%}")
    print(f"{'TRL SFTTrainer (defaults)':<40}{trl_rate:>10.0f}{trl_pad:>10.1%}")
    print(f"imm vs TRL: {stats['tokens_per_s'] / trl_rate:.2f}x")

    data = load_data(DatasetConfig(n_train=1, n_test=400))
    n_items = sum(len(v) for v in data.tests.values())
    start = time.perf_counter()
    evaluate(model, tok, data, lambda it: problems.format_prompt(it["question"]), EvalConfig(max_new_tokens=args.max_new))
    took = time.perf_counter() - start
    print(f"\n## evaluation: greedy pass@1, {n_items} items: {n_items / took:.0f} items/s ({took:.1f} s)")


if __name__ == "__main__":
    main()
