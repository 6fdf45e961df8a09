"""A paper-shaped rehearsal: a random-weight Qwen2 checkpoint folder and hub-schema data files.

    python -m imm.data.rehearsal --out DIR --shape tiny             # CPU, seconds
    python -m imm.data.rehearsal --out DIR --shape qwen2.5-0.5b     # Qwen2.5-0.5B's dimensions, for a GPU

writes ``DIR/model`` exactly as a hub download looks (config.json, generation_config.json,
model.safetensors, tokenizer.json, tokenizer_config.json; a byte-level BPE tokenizer trained on the
generated texts) and ``DIR/data/<benchmark>/{train,test}.jsonl`` in each benchmark's raw hub schema
(``imm.data.benchmarks``): GSM8K and MATH with a train and a test split, MATH-500, SVAMP, ASDiv,
MAWPS, MathQA, SAT-Math and MMLU-STEM with a test split. No training question appears in a test
set. It prints the overrides that point ``python -m imm.main`` at them (``overrides()``), so a
rehearsal goes through the real entrypoint, every stage, the paper's prompts and grading.

A random model answers almost nothing correctly: run it with ``run.rehearsal_gold=true`` so that
SFT and merging still have rows to train on.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from imm.data.prompts import build_prompt
from imm.models import DTYPES

EOS, PAD = "<|endoftext|>", "<|pad|>"
# Qwen2.5-0.5B-Instruct's config.json dimensions (494M parameters); tiny runs a CPU test in seconds.
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=4096, rope_theta=10000.0),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0,
                         vocab_size=151936),
}
TRAINED = ("gsm8k", "math")  # benchmarks with a train split (the loop samples them)
TESTS = ("gsm8k", "math", "math500", "svamp", "asdiv", "mawps", "mathqa", "sat_math", "mmlu_stem")
SUITES = {  # the dataset config's test suite, plus the two OOD sets that only load from files
    "gsm8k": ["gsm8k", "svamp", "asdiv", "mawps", "mathqa", "sat_math", "mmlu_stem"],
    "math": ["math500", "gsm8k", "svamp", "asdiv", "mawps", "mathqa", "sat_math", "mmlu_stem"],
}
NAMES = ("Ava", "Ben", "Chloe", "Dev", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack", "Kira", "Liam")
THINGS = ("apples", "books", "coins", "stamps", "marbles", "pencils", "shells", "cards", "eggs", "toys")
OPS = (("+", "gets {b} more", "Addition"), ("-", "gives away {b}", "Subtraction"),
       ("*", "has {b} times as many after a trade", "Multiplication"))


class Problems:
    """Distinct arithmetic word problems: no two calls return the same question (train/test disjoint)."""

    def __init__(self, seed: int):
        self.rng, self.seen = random.Random(seed), set()

    def next(self) -> dict:
        while True:
            name, thing = self.rng.choice(NAMES), self.rng.choice(THINGS)
            sign, verb, kind = self.rng.choice(OPS)
            a, b = self.rng.randint(2, 99), self.rng.randint(2, 9 if sign == "*" else 99)
            if sign == "-" and b > a:
                a, b = b, a
            if (name, thing, sign, a, b) not in self.seen:
                self.seen.add((name, thing, sign, a, b))
                break
        c = {"+": a + b, "-": a - b, "*": a * b}[sign]
        body = f"{name} has {a} {thing}. {name} {verb.format(b=b)}."
        return dict(name=name, thing=thing, sign=sign, kind=kind, a=a, b=b, c=c, body=body,
                    ask=f"How many {thing} does {name} have now?")


def options(c: int, rng: random.Random, n: int) -> tuple[list[str], int]:
    """``n`` option texts, the right answer ``c`` at a random place: (texts, its index)."""
    choices = [str(c + d) for d in (1, -1, 2, 10)][:n - 1]
    at = rng.randrange(n)
    choices.insert(at, str(c))
    return choices, at


def row(bench: str, p: dict, i: int, rng: random.Random) -> dict:
    """One raw row of ``bench``'s hub schema (the fields ``imm.data.benchmarks`` reads)."""
    a, b, c, s = p["a"], p["b"], p["c"], p["sign"]
    q = f"{p['body']} {p['ask']}"
    tex = {"+": "+", "-": "-", "*": r"\times"}[s]
    if bench == "gsm8k":
        return {"question": q, "answer": f"{p['name']} has {a} {s} {b} = <<{a}{s}{b}={c}>>{c} {p['thing']}.\n#### {c}"}
    if bench in ("math", "math500"):
        problem = f"{p['body']} Compute ${a} {tex} {b}$ to find how many {p['thing']} {p['name']} has."
        solution = f"We compute ${a} {tex} {b} = \\boxed{{{c}}}$."
        if bench == "math":
            return {"problem": problem, "solution": solution, "level": "Level 1", "type": "Prealgebra"}
        return {"problem": problem, "solution": solution, "answer": str(c), "subject": "Prealgebra", "level": 1,
                "unique_id": f"test/prealgebra/{i}.json"}
    if bench == "svamp":
        return {"ID": f"chal-{i}", "Body": p["body"], "Question": p["ask"], "Equation": f"( {a}.0 {s} {b}.0 )",
                "Answer": float(c), "Type": p["kind"]}
    if bench == "asdiv":
        return {"body": p["body"], "question": p["ask"], "solution_type": p["kind"], "answer": f"{c} ({p['thing']})",
                "formula": f"{a}{s}{b}={c}"}
    if bench == "mawps":
        return {"input": q, "target": float(c)}
    choices, at = options(c, rng, 5 if bench == "mathqa" else 4)
    if bench == "mathqa":
        listed = " , ".join(f"{'abcde'[k]} ) {x}" for k, x in enumerate(choices))
        return {"Problem": q.lower(), "Rationale": f"\"{a} {s} {b} = {c} answer is {'abcde'[at]}\"",
                "options": listed, "correct": "abcde"[at], "category": "general"}
    if bench == "sat_math":
        return {"question": q, "options": " ".join(f"{'ABCD'[k]}) {x}" for k, x in enumerate(choices)),
                "Answer": "ABCD"[at]}
    if bench == "mmlu_stem":
        return {"question": q, "subject": "elementary_mathematics", "choices": choices, "answer": at}
    raise KeyError(bench)


def write_data(out: Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, dict[str, str]]:
    """Every benchmark's files under ``out``: {benchmark: {split: path}}."""
    problems, rng, files = Problems(seed), random.Random(seed + 1), {}
    for bench in TESTS:
        splits = [("train", n_train)] if bench in TRAINED else []
        for split, n in splits + [("test", n_test)]:
            rows = [row(bench, problems.next(), i, rng) for i in range(n)]
            path = out / bench / (f"{split}.json" if bench == "svamp" else f"{split}.jsonl")  # SVAMP ships a list
            path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(rows, indent=1) if bench == "svamp" else "".join(json.dumps(r) + "\n" for r in rows)
            path.write_text(text)
            files.setdefault(bench, {})[split] = str(path)
    return files


def corpus(data: Path) -> list[str]:
    """Texts the tokenizer learns from: every generated file and the few-shot exemplars of each prompt set."""
    texts = [p.read_text() for p in sorted(data.rglob("*.json*"))]
    return texts + [build_prompt("", name, 10) for name in ("gsm8k", "math", "mathqa")]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD,
                                   clean_up_tokenization_spaces=False)


def write_model(out: Path, shape: str, dtype: str, tok: PreTrainedTokenizerFast, seed: int = 0) -> Path:
    """A random-weight Qwen2ForCausalLM folder, saved as ``save_pretrained`` writes a hub checkpoint."""
    dims = dict(SHAPES[shape])
    vocab = max(dims.pop("vocab_size", 0), len(tok))
    eos, pad = tok.convert_tokens_to_ids(EOS), tok.convert_tokens_to_ids(PAD)
    config = Qwen2Config(vocab_size=vocab, tie_word_embeddings=True, rms_norm_eps=1e-6, bos_token_id=eos,
                         eos_token_id=eos, pad_token_id=pad, **dims)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(DTYPES[dtype])
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=pad)
    tok.model_max_length = config.max_position_embeddings
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


def build(out: str | Path, shape: str = "tiny", dtype: str = "float32", n_train: int = 64, n_test: int = 32,
          seed: int = 0) -> dict:
    """The checkpoint folder and the data files under ``out``: {"model": path, "files": {...}}."""
    out = Path(out)
    files = write_data(out / "data", n_train, n_test, seed)
    tok = train_tokenizer(corpus(out / "data"), 1000 if shape == "tiny" else 8000)
    return {"model": str(write_model(out / "model", shape, dtype, tok, seed)), "files": files}


def overrides(built: dict, dataset: str, dtype: str = "float32") -> list[str]:
    """``python -m imm.main`` overrides for the built checkpoint and files, on ``dataset`` (gsm8k | math)."""
    out = [f"model.path={built['model']}", "model.name=rehearsal", "model.source=local", f"model.dtype={dtype}",
           f"dataset={dataset}", f"dataset.test_sets=[{','.join(SUITES[dataset])}]", "run.rehearsal_gold=true"]
    return out + [f"dataset.files.{bench}.{split}={path}" for bench, splits in built["files"].items()
                  for split, path in splits.items()
                  if (split == "train" and bench == dataset) or (split == "test" and bench in SUITES[dataset])]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for model/ and data/")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="storage dtype of the weights")
    ap.add_argument("--train", type=int, default=64, help="training questions (GSM8K, MATH)")
    ap.add_argument("--test", type=int, default=32, help="items per test set")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    built = build(args.out, args.shape, args.dtype, args.train, args.test, args.seed)
    for dataset in SUITES:
        print(f"# {dataset}:\npython -m imm.main " + " ".join(overrides(built, dataset, args.dtype)))
    return built


if __name__ == "__main__":
    main()
