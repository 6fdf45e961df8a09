"""The testbed world's families written as benchmark files, for real LLMs (GSM8K, SVAMP, ASDiv, MAWPS schemas).

    python -m imm.data.world.benchmark_files --out outputs/data/world-nl-s0 --seed 0

A real pretrained model reads these through the same path a researcher's benchmark files take
(``dataset=world_nl``: ``dataset.files.<set>.<split>``, the benchmark loaders, the paper's prompt
format and grading), so nothing about them is special-cased. The families were chosen on the
validation split so that SmolLM2-135M-Instruct's greedy pass@1 lies between 20% and 70% on each
(docs/real-llm.md: it solves almost no two-step story, so ID is one small step and the OOD sets step
away from it in wording, in the numbers and in the operation). Each family goes into the schema of the
benchmark it stands in for:

- ``gsm8k/train.jsonl``, ``gsm8k/test.jsonl``: ID, one add/subtract step, start 2-20, change 1-9
  (``id_small``), ``{"question", "answer": "<worked solution>\\n#### N"}``;
- ``svamp/test.json``: another wording (a box), one step (``ood_box_small``),
  ``{"Body", "Question", "Answer": N.0, "ID"}`` (a JSON list, as SVAMP ships);
- ``asdiv/test.jsonl``: another operation, one product 4-12 x 4-12 (``ood_product_wide``),
  ``{"body", "question", "answer": "N (objects)"}``;
- ``mawps/test.jsonl``: other numbers, the ID wording with a change of 10-19 (``ood_tens``),
  ``{"question", "answer"}``;
- ``<set>/validation.jsonl`` (``.json`` for SVAMP): each set's validation items, in its schema: drawn
  from the training part of question space, none of them a training question (``dataset.eval_split=validation``).

Splits come from the world's hash split (imm/data/world/problems.py), so train and test never share
a question; ``load_data``'s overlap check confirms it on every run. ``layout.json`` names the families
and sizes a folder holds: a folder written for other families or sizes is written again (the items a
smaller folder held stay its first ones: each split's draw is a fixed sequence).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from imm.data.world import problems

FAMILY_OF = {"gsm8k": "id_small", "svamp": "ood_box_small", "asdiv": "ood_product_wide", "mawps": "ood_tens"}
# (benchmark, split) -> (world family, world split)
LAYOUT = {("gsm8k", "train"): ("id_small", "train")} | {
    (bench, split): (family, split) for bench, family in FAMILY_OF.items() for split in ("test", "validation")}
N_TRAIN = 2000
N_TEST = 1000        # test items a set: the real-LLM test phase's power calculation (docs/real-llm.md)
N_VALIDATION = 500
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
    return Path(out) / benchmark / (f"{split}.json" if benchmark == "svamp" else f"{split}.jsonl")  # SVAMP: one JSON list


def validation_items(family: str, n: int, seed: int, taken: set[str]) -> list[dict]:
    """``n`` validation items of ``family``, none of them a question in ``taken`` (the training file's)."""
    drawn = problems.make_split(family, "validation", n + len(taken), seed)
    return [item for item in drawn if item["question"] not in taken][:n]


def write(out: Path, seed: int, n_train: int = N_TRAIN, n_test: int = N_TEST,
          n_validation: int = N_VALIDATION) -> dict[tuple[str, str], Path]:
    """Every file of ``LAYOUT`` under ``out`` (seeded by the world seed) and ``layout.json``; returns their paths."""
    paths = {}
    train = problems.make_split(LAYOUT["gsm8k", "train"][0], "train", n_train, seed)
    taken = {item["question"] for item in train}
    for (bench, split), (family, world_split) in LAYOUT.items():
        if split == "validation":
            items = validation_items(family, n_validation, seed, taken)
        else:
            items = train if split == "train" else problems.make_split(family, world_split, n_test, seed)
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
    (Path(out) / "layout.json").write_text(json.dumps(_layout(seed, n_train, n_test, n_validation), indent=1))
    return paths


def _layout(seed: int, n_train: int = N_TRAIN, n_test: int = N_TEST, n_validation: int = N_VALIDATION) -> dict:
    return {"seed": seed, "families": {f"{b}/{s}": f for (b, s), (f, _) in LAYOUT.items()},
            "sizes": {"train": n_train, "test": n_test, "validation": n_validation}}


def _current(out: Path, seed: int) -> bool:
    """The folder holds this layout at the default sizes (a folder of other sizes is written again)."""
    manifest = out / "layout.json"
    return (manifest.exists() and json.loads(manifest.read_text()) == _layout(seed)
            and all(path_of(out, b, s).exists() for b, s in LAYOUT))


def ensure(out: Path, seed: int) -> None:
    """Write the files under ``out`` unless every one is there (under a lock: parallel jobs write once)."""
    from filelock import FileLock

    out = Path(out)
    if _current(out, seed):
        return
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / ".write.lock")):
        if not _current(out, seed):
            write(out, seed)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m imm.data.world.benchmark_files", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("outputs/data/world-nl-s0"))
    p.add_argument("--seed", type=int, default=0, help="world seed")
    p.add_argument("--n-train", type=int, default=N_TRAIN)
    p.add_argument("--n-test", type=int, default=N_TEST)
    args = p.parse_args(argv)
    for (bench, split), path in write(args.out, args.seed, args.n_train, args.n_test).items():
        print(f"{bench:6s} {split:5s} {path}")


if __name__ == "__main__":
    main()
