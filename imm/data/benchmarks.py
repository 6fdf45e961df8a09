"""The paper's datasets: where each lives and how its rows become test items.

``load_benchmark("gsm8k")`` loads a benchmark by hub id through Hugging Face ``datasets``;
``load_benchmark("svamp", path="svamp.json")`` reads a local file (JSONL, a JSON list, or a folder
of them, e.g. MATH's one-JSON-per-problem release) in the same raw schema. Either way the rows
come back as items ``{"question", "answer", "kind", "id"}`` plus ``"choices"`` (option texts) for
multiple choice, whose question already lists its options as "(A) ... (B) ...". ``kind`` says how
``imm.grading.checks`` compares answers: ``numeric`` by value, ``latex`` through math-verify, ``choice``
by letter. ``BENCHMARKS`` is the registry; ``get(name)`` fails naming the valid ones.

A row without a gold answer (a MATH solution with no boxed answer) is skipped, not fatal: the
loader logs how many it skipped, and ``load_items`` returns that count with the items.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from imm.grading.answers import LETTERS, last_boxed

log = logging.getLogger(__name__)

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")
# MMLU's STEM category (Hendrycks et al., categories.py: math, physics, chemistry, biology, computer
# science, engineering): 18 subjects, 3,018 test questions. Anatomy is "health" there (lm-eval's
# mmlu_stem group adds it).
MMLU_STEM = ("abstract_algebra", "astronomy", "college_biology", "college_chemistry",
             "college_computer_science", "college_mathematics", "college_physics", "computer_security",
             "conceptual_physics", "electrical_engineering", "elementary_mathematics",
             "high_school_biology", "high_school_chemistry", "high_school_computer_science",
             "high_school_mathematics", "high_school_physics", "high_school_statistics",
             "machine_learning")
GSM8K_GOLD_RE = re.compile(r"####\s*(.+?)\s*$", re.S)
DECIMAL_RE = re.compile(r"^-?\d+\.\d+$")
GROUPED_RE = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")  # 1,234.5
UNIT_RE = re.compile(r"\s*\([^)]*\)")  # ASDiv's "9 (apples)"
# An option mark "a )" / "B)": a letter after the start, a space, a comma or a quote, then ")".
OPTION_RE = re.compile(r"(?:^|(?<=[\s,'\"\[]))([a-eA-E])\s?\)")
OPTION_PAD = " ,'\"[]"


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str  # numeric | latex | choice: how answers are compared (imm.grading.checks)
    to_item: Callable[[dict], Optional[dict]]  # raw row -> {"question", "answer", "choices"?, "id"?}; None: no gold
    hub: Optional[str] = None  # hub id for datasets.load_dataset; None = local files only
    configs: tuple = (None,)  # hub configs loaded and concatenated (MATH subjects, MMLU subjects)
    split: str = "test"
    prompt: str = "gsm8k"  # exemplar set of imm.data.prompts
    schema: str = ""  # the raw fields a local file needs
    keep: Optional[Callable[[dict], bool]] = None  # rows to keep (MMLU: STEM subjects only)


# ---- raw row -> item, one pure function per dataset ----

def pick(row: dict, *names: str):
    """The first of ``names`` present in the row (schemas differ in case between releases)."""
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    raise KeyError(f"row has none of {names}: keys {sorted(row)}")


def number_text(x) -> str:
    """A numeric gold as text, 8.0 -> "8", "2.50" -> "2.5", "1,250" -> "1250"; anything else unchanged."""
    s = str(int(x)) if isinstance(x, float) and x.is_integer() else str(x).strip()
    s = s.replace(",", "") if GROUPED_RE.match(s) else s
    if DECIMAL_RE.match(s):
        s = s.rstrip("0").rstrip(".")
    return s


def with_choices(question: str, choices: list[str]) -> str:
    listed = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return f"{question.strip()}\nAnswer Choices: {listed}"


def split_options(text: str) -> list[str]:
    """Option texts of "a ) 12 , b ) 1,600" (MathQA), "['a ) 1', ...]" or "A) 3 B) 5" (SAT).

    Only marks whose letters run a, b, c, ... in order count, so a letter inside an option or
    MathQA's doubled "a ) a ) 1055" does not start a new option."""
    marks, expect = [], 0
    for m in OPTION_RE.finditer(text):
        if expect < len(LETTERS) and m.group(1).upper() == LETTERS[expect]:
            marks.append(m)
            expect += 1
    ends = [m.start() for m in marks[1:]] + [len(text)]
    out = []
    for m, end in zip(marks, ends):
        body = text[m.end():end].strip(OPTION_PAD)
        body = re.sub(rf"^{m.group(1)}\s?\)\s*", "", body)  # the doubled mark
        out.append(body.strip(OPTION_PAD))
    return out


def choice_item(question: str, choices: list[str], letter: str) -> dict:
    letter = str(letter).strip().strip("()").upper()
    if letter not in LETTERS[:len(choices)]:
        raise ValueError(f"answer {letter!r} is not one of {len(choices)} options: {question[:60]!r}")
    return {"question": with_choices(question, choices), "answer": letter, "choices": choices}


def gsm8k_item(row: dict) -> dict:
    solution = row["answer"]
    gold = GSM8K_GOLD_RE.search(solution).group(1).replace(",", "")
    return {"question": row["question"], "answer": number_text(gold), "solution": solution}


def math_item(row: dict) -> dict | None:
    """The gold is the solution's last \\boxed{}, \\fbox{} or "\\boxed N" (as Hendrycks'
    ``last_boxed_only_string`` reads it); None (row skipped) when it has none."""
    gold = last_boxed(row["solution"])
    if not gold:
        return None
    return {"question": row["problem"], "answer": gold, "solution": row["solution"]}


def math500_item(row: dict) -> dict:
    return {"question": row["problem"], "answer": str(row["answer"]), "solution": row.get("solution"),
            "id": row.get("unique_id")}


def mawps_item(row: dict) -> dict:
    gold = pick(row, "answer", "target", "lSolutions")
    gold = gold[0] if isinstance(gold, list) else gold
    return {"question": pick(row, "question", "input", "sQuestion"), "answer": number_text(gold)}


def svamp_item(row: dict) -> dict:
    body = pick(row, "Body", "body").strip()
    body = body if body.endswith((".", "?", "!", ",")) else body + "."  # many Bodies end without one
    question = f"{body} {pick(row, 'Question', 'question').strip()}"
    return {"question": question, "answer": number_text(pick(row, "Answer", "answer")),
            "id": row.get("ID")}


def asdiv_item(row: dict) -> dict:
    gold = UNIT_RE.sub("", str(row["answer"])).strip()  # "9 (apples)" -> "9"; "yes", "2:3" kept
    return {"question": f"{row['body'].strip()} {row['question'].strip()}", "answer": number_text(gold)}


def mathqa_item(row: dict) -> dict:
    choices = split_options(row["options"])
    return choice_item(pick(row, "Problem", "problem"), choices, row["correct"])


def sat_item(row: dict) -> dict:
    options = row["options"]
    if isinstance(options, dict):
        choices = [str(options[k]).strip() for k in sorted(options)]
    elif isinstance(options, list):
        choices = [re.sub(r"^\(?[A-E]\)\s*", "", str(o)).strip() for o in options]
    else:
        choices = split_options(options)
    return choice_item(row["question"], choices, pick(row, "Answer", "answer", "label"))


def agieval_sat_item(row: dict) -> dict:
    passage = (row.get("passage") or "").strip()
    question = f"{passage}\n{row['question'].strip()}" if passage else row["question"]
    choices = [re.sub(r"^\(?[A-E]\)\s*", "", o).strip() for o in row["options"]]
    return choice_item(question, choices, row["label"])


def is_stem(row: dict) -> bool:
    """Whether an MMLU row is a STEM subject (rows without a subject, e.g. a STEM-only file, are kept)."""
    return row.get("subject", MMLU_STEM[0]) in MMLU_STEM


def mmlu_item(row: dict) -> dict:
    gold = row["answer"]
    letter = LETTERS[gold] if isinstance(gold, int) else str(gold)
    return choice_item(row["question"], [str(c).strip() for c in row["choices"]], letter)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("gsm8k", "numeric", gsm8k_item, hub="openai/gsm8k", configs=("main",),
              schema='{"question", "answer": "...#### 1,234"}'),
    Benchmark("math", "latex", math_item, hub="EleutherAI/hendrycks_math", configs=MATH_SUBJECTS,
              prompt="math", schema='{"problem", "solution" with a final \\boxed{}, "level", "type"}'),
    Benchmark("math500", "latex", math500_item, hub="HuggingFaceH4/MATH-500", prompt="math",
              schema='{"problem", "answer", "solution", "unique_id"}'),
    Benchmark("mawps", "numeric", mawps_item,
              schema='{"question" | "input" | "sQuestion", "answer" | "target" | "lSolutions"}'),
    Benchmark("svamp", "numeric", svamp_item, hub="ChilleD/SVAMP",
              schema='{"Body", "Question", "Answer": 8.0, "ID"}'),
    Benchmark("asdiv", "numeric", asdiv_item, hub="EleutherAI/asdiv", split="validation",
              schema='{"body", "question", "answer": "9 (apples)"}'),
    # allenai/math_qa is a loading script, which datasets >= 4 refuses; regisss/math_qa holds the
    # same rows and columns as parquet (checked row by row in lm-evaluation-harness PR #3943).
    Benchmark("mathqa", "choice", mathqa_item, hub="regisss/math_qa", prompt="choice",
              schema='{"Problem" | "problem", "options": "a ) 12 , b ) 16 , ...", "correct": "a"}'),
    # The paper's SAT-Math scores are multiples of 1/32: Minerva's 32-problem SAT set.
    Benchmark("sat_math", "choice", sat_item, prompt="choice",
              schema='{"question", "options": "A) 3 B) 5 C) 7 D) 9" | [...] | {"A": ...}, '
                     '"Answer" | "answer" | "label": "B"}'),
    # AGIEval's 220-problem sat-math.jsonl, for comparison with other papers.
    Benchmark("sat_math_agieval", "choice", agieval_sat_item, prompt="choice",
              schema='{"passage", "question", "options": ["(A)3", ...], "label": "A"}'),
    Benchmark("mmlu_stem", "choice", mmlu_item, hub="cais/mmlu", configs=MMLU_STEM, prompt="choice",
              schema='{"question", "choices": [4 texts], "answer": 0-3, "subject"}',
              keep=is_stem),
)}


def get(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; valid: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


# ---- loading ----

def read_rows(path: str | Path) -> list[dict]:
    """Raw rows of a JSONL file, a JSON file (a list, or one row), or a folder of them."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl"))
        return [row for p in files for row in read_rows(p)]
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    return data if isinstance(data, list) else [data]


def hub_rows(bench: Benchmark, split: str) -> list[dict]:
    if bench.hub is None:
        raise ValueError(f"{bench.name} has no hub id: pass path= to a local file of rows {bench.schema}")
    from datasets import load_dataset  # optional dependency, only for hub loading

    return [dict(row) for config in bench.configs for row in load_dataset(bench.hub, config, split=split)]


@dataclass
class Loaded:
    items: list[dict]
    skipped: int  # rows without a gold answer (MATH: no boxed answer in the solution)


def load_items(name: str, split: str | None = None, path: str | None = None, limit: int = 0) -> Loaded:
    """Normalised items {question, answer, kind, id, choices?} of a benchmark (first ``limit``; 0 = all)
    and the number of rows skipped for having no gold answer (logged as a warning)."""
    bench = get(name)
    split = split or bench.split
    rows = read_rows(path) if path else hub_rows(bench, split)
    if bench.keep:
        rows = [r for r in rows if bench.keep(r)]
    items, skipped = [], 0
    for i, row in enumerate(rows):
        if limit and len(items) == limit:
            break
        item = bench.to_item(row)
        if item is None:
            skipped += 1
            continue
        item["kind"] = bench.kind
        item["id"] = str(item.get("id") or f"{name}/{split}/{i}")  # the row's index: stable across skips
        items.append({k: v for k, v in item.items() if v is not None})
    if skipped:
        log.warning("%s/%s: skipped %d of %d rows with no gold answer", name, split, skipped, len(items) + skipped)
    return Loaded(items, skipped)


def load_benchmark(name: str, split: str | None = None, path: str | None = None, limit: int = 0) -> list[dict]:
    """The items of ``load_items`` (skipped rows are logged there)."""
    return load_items(name, split, path, limit).items
