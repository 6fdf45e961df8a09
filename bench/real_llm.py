"""Throughput on a real instruct LLM (SmolLM2-135M-Instruct), side by side with the plain alternatives.

    python -m bench.real_llm --threads 1                       # sampling, then SFT, on the world_nl prompts
    python -m bench.real_llm --prompts 32 --k 2 --shots 4 --sft-rows 128

Sampling: imm's hf backend (``imm.sampling.complete``: the few-shot prefix run once per call, rows
that end leave the batch, a sample ends after its answer) against plain batched ``generate`` on the
same prompts, batch size and token limit (stopping at the model's EOS ids, as a plain script does).
Both are timed over the same k samples per prompt at the same temperatures; the figures are samples/s,
new tokens/s and the share of samples whose final answer was right. SFT: imm's torch loop against
TRL's ``SFTTrainer`` (defaults but epochs, batch, lr) on the same rows (the paper's instruction
prompt, a worked solution as the response), in non-padding tokens/s.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import torch

from imm import prepare, sft
from imm.data import DatasetConfig, SplitFiles, load_data
from imm.data.world import benchmark_files
from imm.data.prompts import INSTRUCTION
from imm.grading.answers import final_answer
from imm.grading.checks import numeric_equal
from imm.models import ModelConfig, load_model, load_tokenizer
from imm.sampling import complete
from imm.sampling.decode import eos_ids
from bench.stages import trl_sft


def world_data(out: str, n: int, shots: int):
    benchmark_files.ensure(out, 0)
    files = {"gsm8k": SplitFiles(*(str(benchmark_files.path_of(out, "gsm8k", s)) for s in ("train", "test")))}
    return load_data(DatasetConfig(name="world_nl", kind="benchmarks", train_set="gsm8k", test_sets=["gsm8k"],
                                   files=files, n_train=n, n_test=1, shots=shots))


def plain_generate(model, tok, prompts, temps, max_new, batch) -> tuple[list[list[str]], int]:
    """Batched ``generate``, one call per temperature, stopping at the model's EOS ids."""
    tok.padding_side = "left"
    eos = sorted(eos_ids(model, tok))
    texts: list[list[str]] = [[] for _ in prompts]
    new = 0
    for b in range(0, len(prompts), batch):
        enc = tok(prompts[b:b + batch], return_tensors="pt", padding=True, return_token_type_ids=False)
        for temp in temps:
            out = model.generate(**enc, do_sample=temp > 0, temperature=temp or None, max_new_tokens=max_new,
                                 pad_token_id=tok.pad_token_id, eos_token_id=eos)[:, enc["input_ids"].shape[1]:]
            for j, row in enumerate(out.tolist()):
                ended = next((i for i, t in enumerate(row) if t in eos), len(row))
                new += ended
                texts[b + j].append(tok.decode(row[:ended], skip_special_tokens=True))
    return texts, new


def right_share(texts: list[list[str]], golds: list[str]) -> float:
    flat = [(t, g) for group, g in zip(texts, golds) for t in group]
    return sum(bool(final_answer(t)) and numeric_equal(final_answer(t), g) for t, g in flat) / len(flat)


def bench_sampling(model, tok, data, args) -> None:
    prompts, golds = [i["prompt"] for i in data.train], [i["answer"] for i in data.train]
    temps = [[0.2, 0.4, 0.6][i % 3] for i in range(args.k)]
    width = len(tok(prompts[0])["input_ids"])
    print(f"\n## sampling: {len(prompts)} prompts x k={args.k} (temperatures {temps}), {args.shots}-shot prompts "
          f"of ~{width} tokens, at most {args.max_new} new tokens, batch {args.batch} prompts")
    print(f"{'method':<44}{'seconds':>9}{'samples/s':>11}{'new tok/s':>11}{'right':>8}")
    rows = []
    for _ in range(args.repeats):  # alternate, so a change in machine load hits both
        torch.manual_seed(0)
        start = time.perf_counter()
        plain, new = plain_generate(model, tok, prompts, temps, args.max_new, args.batch)
        rows.append(("plain batched generate (EOS ids)", time.perf_counter() - start, new, right_share(plain, golds)))
        stats: dict = {}
        start = time.perf_counter()
        ours = complete(model, tok, prompts, n=args.k, temperatures=temps, max_new_tokens=args.max_new,
                        batch_size=args.batch, stats=stats)
        rows.append(("imm complete (prefix once, ends at answer)", time.perf_counter() - start, stats["new_tokens"],
                     right_share(ours, golds)))
    n = len(prompts) * args.k
    for name, took, new, right in rows:
        print(f"{name:<44}{took:>9.1f}{n / took:>11.2f}{new / took:>11.1f}{right:>8.1%}")
    best = {name: min(t for nm, t, _, _ in rows if nm == name) for name, *_ in rows}
    plain_s, ours_s = best["plain batched generate (EOS ids)"], best["imm complete (prefix once, ends at answer)"]
    print(f"imm vs plain batched generate, wall time for the same samples (best of {args.repeats}): "
          f"{plain_s / ours_s:.2f}x")


def bench_sft(model, tok, data, args) -> None:
    prompt_fn = lambda q: INSTRUCTION.format(question=q)  # noqa: E731 (the paper's SFT format)
    rows = [{"question": i["question"], "response": "\n" + i["answer_text"]} for i in data.train[:args.sft_rows]]
    print(f"\n## SFT: {len(rows)} rows, 1 epoch, batch 8, lr 2e-5, best of {args.repeats} (alternating)")
    ours, trl = [], []
    for _ in range(args.repeats):
        ours.append(sft.train(copy.deepcopy(model), tok, rows, prompt_fn, sft.SFTConfig(epochs=1, lr=2e-5, batch_size=8),
                              0)["tokens_per_s"])
        trl.append(trl_sft(copy.deepcopy(model), tok, rows, 1, 8, 2e-5, prompt_fn, join="")[0])
    print(f"{'imm sft (length-grouped)':<44}{max(ours):>11.0f} tokens/s")
    print(f"{'TRL SFTTrainer (defaults)':<44}{max(trl):>11.0f} tokens/s")
    print(f"imm vs TRL: {max(ours) / max(trl):.2f}x")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="outputs/data/world-nl-s0")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--batch", type=int, default=16, help="prompts per call, both methods")
    p.add_argument("--max-new", type=int, default=96)
    p.add_argument("--sft-rows", type=int, default=128, help="0 = sampling only")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = prepare.ensure("smollm2-135m-instruct", Path("outputs/models/smollm2-135m-instruct"))
    model, tok = load_model(ModelConfig(path=str(path), dtype="float32")), load_tokenizer(str(path))
    data = world_data(args.data, max(args.prompts, args.sft_rows), args.shots)
    for item in data.train:  # the GSM8K file's worked solution, without its "#### N" line
        item["answer_text"] = item.get("solution", "").split("\n####")[0] or f"The answer is {item['answer']}."
    data.train, pool = data.train[:args.prompts], data.train
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; SmolLM2-135M-Instruct, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M "
          f"params, float32")
    bench_sampling(model, tok, data, args)
    if args.sft_rows:
        data.train = pool
        bench_sft(model, tok, data, args)


if __name__ == "__main__":
    main()
