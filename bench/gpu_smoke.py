"""One loop iteration at realistic lengths on a random Qwen2.5-0.5B-shaped model: stage throughput.

No weights are downloaded: the model is random-initialised from the Qwen2.5-0.5B shape (hidden 896,
24 layers, 14 heads, 2 KV heads, MLP 4864, vocab 151936, tied embeddings) and the tokenizer is a
byte-level one built on the fly (one token per ASCII byte, so a prompt of N characters is N tokens;
the rest of the vocabulary is filler tokens). Stages: sampling (imm.sampling.complete, k samples
over the paper's temperatures, all prompts in one batch of prompts x k rows) beside a plain batched
``generate`` on the same rows, and on the static compiled path (twice: with and without compiling);
vLLM too where installed), SFT (imm.sft.torch_loop.train, or TRL with
--sft-backend trl), a DARE merge (p=0.1, α=0.5, imm.merge.engine.merge_checkpoints) and greedy evaluation.
Each prints tokens/s; SFT also prints MFU = 6·params·tokens/s / peak FLOP/s.

    python -m bench.gpu_smoke --device cuda                       # H100, bf16, 512-token prompts, 256 new tokens
    python -m bench.gpu_smoke --device cuda --peak-tflops 989     # MFU against H100 dense bf16
    python -m bench.gpu_smoke --device cpu --tiny                 # seconds on a laptop: checks the wiring
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from contextlib import contextmanager

import torch

QWEN25_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  intermediate_size=4864, vocab_size=151936)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=512)
TINY_LENGTHS = dict(prompt_len=48, new_tokens=16, prompts=4, k=2, sft_rows=8, sft_batch=4, grad_accum=1)
SPECIALS = ("<|endoftext|>", "<|pad|>")  # EOS (also <unk>), padding
TEMPERATURES = [0.2, 0.4, 0.6]  # the paper's sampling temperatures


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda | cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model and short lengths (CPU check)")
    ap.add_argument("--prompt-len", type=int, default=512, help="prompt tokens (a 10-shot GSM8K prompt is ~900)")
    ap.add_argument("--new-tokens", type=int, default=256, help="tokens generated per sample")
    ap.add_argument("--prompts", type=int, default=64, help="questions sampled and evaluated")
    ap.add_argument("--k", type=int, default=4, help="samples per question (paper: 3 GSM8K, 6 MATH)")
    ap.add_argument("--sft-rows", type=int, default=256,
                    help="training sequences (prompt + new-tokens response): 16 optimizer steps at the defaults")
    ap.add_argument("--sft-batch", type=int, default=4, help="sequences per micro-batch (paper: 4 per device)")
    ap.add_argument("--grad-accum", type=int, default=4, help="micro-batches per optimizer step (paper: 4)")
    ap.add_argument("--sft-backend", default="torch", choices=["torch", "trl"], help="imm.sft.torch_loop.train or TRL")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense FLOP/s of the chip, in TFLOP/s "
                    "(H100 SXM bf16: 989); 0 = no MFU")
    ap.add_argument("--vllm", default="auto", choices=["auto", "on", "off"], help="also sample with vLLM")
    ap.add_argument("--vllm-memory", type=float, default=0.5,
                    help="vLLM's share of GPU memory (the transformers model stays loaded beside it)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                    help="also sample on the static-cache, compiled path (generate.compile=true)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.tiny:  # tiny lengths unless given explicitly
        defaults = {a.dest: a.default for a in ap._actions}
        for key, value in TINY_LENGTHS.items():
            if getattr(args, key) == defaults[key]:
                setattr(args, key, value)
    return args


def ascii_alphabet() -> list[str]:
    """The characters GPT-2's byte-level mapping gives the 128 ASCII bytes (printables map to themselves)."""
    shifted = [b for b in range(128) if not 33 <= b <= 126]  # control bytes, space, DEL: moved past 255
    return [chr(b) if 33 <= b <= 126 else chr(256 + shifted.index(b)) for b in range(128)]


def byte_tokenizer(vocab_size: int):
    """One token per ASCII byte, specials, then filler tokens up to vocab_size (other bytes are <unk>).

    The fillers ("f0", "f1", ...) are spelled in ASCII, so anything a random model samples decodes to
    valid text, and the pre-tokenizer reads "f<digits>" back as one token, so re-encoding a sample
    counts its tokens (up to a sampled "f" that a sampled digit follows).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(ascii_alphabet())}
    for s in SPECIALS:
        vocab[s] = len(vocab)
    if vocab_size < len(vocab):
        raise ValueError(f"vocab_size={vocab_size} is below the {len(vocab)} byte and special tokens")
    for i in range(vocab_size - len(vocab)):
        vocab[f"f{i}"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIALS[0]))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        pre_tokenizers.Split(Regex(r"f[0-9]+|."), behavior="isolated"),  # a filler, else one byte
    ])
    tok.decoder = decoders.ByteLevel()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIALS[0], pad_token=SPECIALS[1],
                                  unk_token=SPECIALS[0])
    out.clean_up_tokenization_spaces = False
    return out


def build_model(shape: dict, tok, device: str, dtype: torch.dtype, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**shape, tie_word_embeddings=True, max_position_embeddings=32768, rope_theta=1_000_000.0,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    return model.to(dtype).eval()


def texts(n: int, length: int, seed: int) -> list[str]:
    """n distinct ASCII texts of exactly ``length`` characters (= tokens), cut from few-shot prompts."""
    from imm.data.prompts import build_prompt

    base = build_prompt("How many apples are left?", "gsm8k", shots=10)
    out = []
    for i in range(n):
        start = (seed * 7919 + i * 131) % len(base)
        s = (base[start:] + "\n" + base) * (length // len(base) + 2)
        out.append(f"{i} {s}"[:length].encode("ascii", "replace").decode())
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def timed(device: str, result: dict):
    sync(device)
    start = time.perf_counter()
    yield
    sync(device)
    result["seconds"] = time.perf_counter() - start


@contextmanager
def inputs_on_model_device(model):
    """imm.sft.torch_loop.train builds its batches on the CPU; move them to the model's device for the smoke."""
    def move(module, args, kwargs):
        return (tuple(a.to(model.device) if torch.is_tensor(a) else a for a in args),
                {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in kwargs.items()})

    handle = model.register_forward_pre_hook(move, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def counted(tok, groups) -> int:
    """New tokens in the returned texts, re-encoded (a random model rarely stops before the limit)."""
    return sum(len(tok(s, add_special_tokens=False)["input_ids"]) for g in groups for s in g)


def sample_stage(model, tok, prompts, args, compile: bool = False) -> dict:
    from imm.sampling import complete

    out: dict = {}
    with timed(args.device, out):
        samples = complete(model, tok, prompts, n=args.k, temperatures=TEMPERATURES, max_new_tokens=args.new_tokens,
                           batch_size=args.prompts, seed=args.seed, desc="smoke sample", stops=(), compile=compile)
    out["new_tokens"] = counted(tok, samples)
    out["tokens_per_s"] = out["new_tokens"] / out["seconds"]
    return out


def reference_stage(model, tok, prompts, args) -> dict:
    """The plain alternative: one batched ``generate`` over all prompts x k rows (dynamic cache, every
    row until the slowest ends), sampling at the middle temperature."""
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, return_token_type_ids=False).to(model.device)
    out: dict = {}
    with timed(args.device, out):
        ids = model.generate(**enc, do_sample=True, temperature=TEMPERATURES[1], top_k=0, num_return_sequences=args.k,
                             max_new_tokens=args.new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    texts = tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    out["new_tokens"] = counted(tok, [texts])
    out["tokens_per_s"] = out["new_tokens"] / out["seconds"]
    return out


def warm_up(model, tok, args) -> None:
    """One short generate before any timing: CUDA context, cuBLAS handles, kernel loading."""
    enc = tok(texts(2, 16, args.seed), return_tensors="pt", padding=True, return_token_type_ids=False).to(model.device)
    model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    sync(args.device)


def vllm_stage(model, tok, prompts, args) -> dict | None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        if args.vllm == "on":
            raise
        return None
    from imm.sampling.vllm import complete_vllm

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="imm-smoke-") as path:
        model.save_pretrained(path)
        tok.save_pretrained(path)
        torch.cuda.empty_cache()
        with timed(args.device, out):  # includes the engine start (weights, CUDA graphs), as in the loop
            samples = complete_vllm(path, prompts, n=args.k, temperatures=TEMPERATURES, max_new_tokens=args.new_tokens,
                                    seed=args.seed, stops=(), dtype=args.dtype,
                                    gpu_memory_utilization=args.vllm_memory)
    out["new_tokens"] = counted(tok, samples)
    out["tokens_per_s"] = out["new_tokens"] / out["seconds"]
    return out


def sft_stage(model, tok, prompts, responses, args, n_params: int) -> dict:
    from imm import sft

    rows = [{"question": str(i), "response": r} for i, r in enumerate(responses)]
    prompt_of = dict(enumerate(prompts))
    cfg = sft.SFTConfig(epochs=1, lr=2e-5, batch_size=args.sft_batch, grad_accum=args.grad_accum, seed=args.seed)
    out: dict = {}
    with timed(args.device, out):
        if args.sft_backend == "trl":
            from imm.sft.trl_trainer import train_trl

            stats = train_trl(model, tok, rows, lambda q: prompt_of[int(q)], cfg, 0,
                              bf16=args.dtype == "bfloat16")
        else:
            with inputs_on_model_device(model):
                stats = sft.train(model, tok, rows, lambda q: prompt_of[int(q)], cfg, 0)
    out.update(loss=stats["loss"], steps=stats["steps"], tokens_per_s=stats["tokens_per_s"])
    if args.peak_tflops > 0:
        out["mfu"] = 6 * n_params * stats["tokens_per_s"] / (args.peak_tflops * 1e12)
    return out


def merge_stage(model, base: dict, args) -> dict:
    from pathlib import Path

    from safetensors.torch import save_file

    from imm.merge.engine import Checkpoint, merge_checkpoints
    from imm.merge.rules import MergeConfig
    from imm.models import weights

    tuned = {k: v.cpu() for k, v in weights(model).items()}  # the merge streams files on the CPU
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="imm-smoke-merge-") as tmp:
        root = Path(tmp)
        for name, state in (("base", base), ("sft", tuned)):
            (root / name).mkdir()
            save_file(state, str(root / name / "model.safetensors"))
        with timed("cpu", out):  # as the loop runs it: checkpoint files in, checkpoint files out
            merge_checkpoints(root / "base", root / "base", root / "sft", root / "merged",
                              MergeConfig(name="dare_linear", alpha=0.5, p=0.1), 0)
        ck = Checkpoint(root / "merged")
        merged = {n: ck.read(n) for n in ck.names}
        ck.close()
    out["params_per_s"] = sum(t.numel() for t in merged.values()) / out["seconds"]
    set_weights(model, {k: v.to(model.device) for k, v in merged.items()})
    return out


def set_weights(model, state: dict) -> None:
    """Load a merged state dict into ``model``; tied weights (embeddings = lm_head) may be absent."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(model.state_dict()) - set(state)
    if unexpected or set(missing) - tied:
        raise ValueError(f"weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def eval_stage(model, tok, prompts, args) -> dict:
    from imm.sampling import complete

    out: dict = {}
    with timed(args.device, out):
        answers = complete(model, tok, prompts, n=1, temperatures=0.0, max_new_tokens=args.new_tokens,
                           desc="smoke eval", stops=())
    out["new_tokens"] = counted(tok, answers)
    out["tokens_per_s"] = out["new_tokens"] / out["seconds"]
    return out


def main(argv=None) -> dict:
    from imm.models import DTYPES, weights

    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU visible; use --device cpu --tiny")
    tok = byte_tokenizer((TINY if args.tiny else QWEN25_05B)["vocab_size"])
    model = build_model(TINY if args.tiny else QWEN25_05B, tok, args.device, DTYPES[args.dtype], args.seed)
    n_params = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    prompts = texts(args.prompts, args.prompt_len, args.seed)
    report: dict = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
                    "params": n_params, "dtype": args.dtype, "prompt_len": args.prompt_len,
                    "new_tokens": args.new_tokens, "prompts": args.prompts, "k": args.k}
    print(json.dumps(report), flush=True)
    base = {k: v.cpu() for k, v in weights(model).items()}

    warm_up(model, tok, args)
    stages = [("sample_reference_generate", lambda: reference_stage(model, tok, prompts, args)),
              ("sample", lambda: sample_stage(model, tok, prompts, args))]
    if args.compile:  # the first call compiles the step (and captures CUDA graphs), the second reuses it
        stages += [("sample_compiled_first", lambda: sample_stage(model, tok, prompts, args, compile=True)),
                   ("sample_compiled", lambda: sample_stage(model, tok, prompts, args, compile=True))]
    if args.vllm != "off" and args.device.startswith("cuda"):
        stages.append(("sample_vllm", lambda: vllm_stage(model, tok, prompts, args)))
    sft_prompts = texts(args.sft_rows, args.prompt_len, args.seed + 1)
    responses = texts(args.sft_rows, args.new_tokens, args.seed + 2)
    stages += [("sft", lambda: sft_stage(model, tok, sft_prompts, responses, args, n_params)),
               ("merge", lambda: merge_stage(model, base, args)),
               ("eval", lambda: eval_stage(model, tok, prompts, args))]
    for name, run in stages:
        result = run()
        if result is None:
            continue
        report[name] = result
        if args.device.startswith("cuda"):
            result["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        print(json.dumps({"stage": name, **{k: round(v, 4) if isinstance(v, float) else v
                                            for k, v in result.items()}}), flush=True)
    return report


if __name__ == "__main__":
    main()
