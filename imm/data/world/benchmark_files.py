"""The testbed world's families written as benchmark files, for real LLMs (GSM8K, SVAMP, ASDiv, MAWPS schemas).

    python -m imm.data.world.benchmark_files --out outputs/data/world-nl-s0 --seed 0

A real pretrained model reads these through the same path a researcher's benchmark files take
(``dataset=world_nl``: ``dataset.files.<set>.<split>``, the benchmark loaders, the paper's few-shot
prompts and grading), so nothing about them is special-cased. A 135M instruct model solves almost no
two-step story of the testbed (0 of 24 with 4 shots), so the ID family is the one-step rung of the same
stories and the OOD sets step away from it in wording, operation and length. Each family goes into
the schema of the benchmark it stands in for:

- ``gsm8k/train.jsonl``, ``gsm8k/test.jsonl``: ID, one add/subtract step (``id_onestep``),
  ``{"question", "answer": "<worked solution>\\n#### N"}``;
- ``svamp/test.json``: another wording (a box) and bigger numbers, one step (``ood_wording_onestep``),
  ``{"Body", "Question", "Answer": N.0, "ID"}`` (a JSON list, as SVAMP ships);
- ``asdiv/test.jsonl``: one multiplication (``ood_product``), ``{"body", "question", "answer": "N (objects)"}``;
- ``mawps/test.jsonl``: two add/subtract steps, the testbed's own ID family (``id_addsub``),
  ``{"question", "answer"}``.

Splits come from the world's hash split (imm/data/world/problems.py), so train and test never share
a question; ``load_data``'s overlap check confirms it on every run.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from imm.data.world import problems

# (benchmark, split) -> (world family, world split)
LAYOUT = {
    ("gsm8k", "train"): ("id_onestep", "train"),
    ("gsm8k", "test"): ("id_onestep", "test"),
    ("svamp", "test"): ("ood_wording_onestep", "test"),
    ("asdiv", "test"): ("ood_product", "test"),
    ("mawps", "test"): ("id_addsub", "test"),
}
FILE_NAMES = {"svamp": "test.json"}  # SVAMP ships one JSON list; the others JSON lines
SENTENCE_RE = re.compile(r"(?<=[.!?])\s+")


def _body_and_question(text: str) -> tuple[str, str]:
    """SVAMP and ASDiv keep the story and the asked question apart: split off the last sentence."""
    parts = SENTENCE_RE.split(text.strip())
    return " ".join(parts[:-1]), parts[-1]


def row(benchmark: str, item: dict, index: int) -> dict:
    """One world item as a row of ``benchmark``'s own schema."""
    if benchmark == "gsm8k":
        return {"question": item["question"], "answer": f"{item['solution']}\n#### {item['answer']}"}
    if benchmark == "svamp":
        body, question = _body_and_question(item["question"])
        return {"ID": f"world-{index}", "Body": body, "Question": question, "Answer": float(item["answer"])}
    if benchmark == "asdiv":
        body, question = _body_and_question(item["question"])
        unit = question.split()[2] if question.lower().startswith("how many ") else ""
        return {"body": body, "question": question, "answer": f"{item['answer']} ({unit})" if unit else item["answer"]}
    if benchmark == "mawps":
        return {"question": item["question"], "answer": int(item["answer"])}
    raise KeyError(f"no world layout for benchmark {benchmark!r}; known: {sorted({b for b, _ in LAYOUT})}")


def path_of(out: Path, benchmark: str, split: str) -> Path:
    return Path(out) / benchmark / (FILE_NAMES.get(benchmark, f"{split}.jsonl") if split == "test" else f"{split}.jsonl")


def write(out: Path, seed: int, n_train: int = 2000, n_test: int = 500) -> dict[tuple[str, str], Path]:
    """Every file of ``LAYOUT`` under ``out`` (seeded by the world seed); returns their paths."""
    paths = {}
    for (bench, split), (family, world_split) in LAYOUT.items():
        items = problems.make_split(family, world_split, n_train if split == "train" else n_test, seed)
        rows = [row(bench, item, i) for i, item in enumerate(items)]
        path = path_of(out, bench, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        if path.suffix == ".json":
            tmp.write_text(json.dumps(rows, indent=1))
        else:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.rename(path)
        paths[bench, split] = path
    return paths


def ensure(out: Path, seed: int) -> None:
    """Write the files under ``out`` unless every one is there (under a lock: parallel jobs write once)."""
    from filelock import FileLock

    out = Path(out)
    if all(path_of(out, b, s).exists() for b, s in LAYOUT):
        return
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / ".write.lock")):
        if not all(path_of(out, b, s).exists() for b, s in LAYOUT):
            write(out, seed)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m imm.data.world.benchmark_files", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("outputs/data/world-nl-s0"))
    p.add_argument("--seed", type=int, default=0, help="world seed")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=500)
    args = p.parse_args(argv)
    for (bench, split), path in write(args.out, args.seed, args.n_train, args.n_test).items():
        print(f"{bench:6s} {split:5s} {path}")


if __name__ == "__main__":
    main()
