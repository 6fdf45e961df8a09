"""Training questions and test sets (``load_data``), by ``dataset.kind``:

- ``testbed``: the testbed world's generated problems (:mod:`imm.data.world`), an ID family and
  three OOD families;
- ``jsonl``: local files, ``dataset.train_file`` and ``dataset.test_files`` (name -> file);
- ``benchmarks``: GSM8K, MATH and the OOD suite of :mod:`imm.data.benchmarks`, from the hub or local
  files in the same schema, with the few-shot prompts of :mod:`imm.data.prompts`.

Every item is a dict with ``question`` and ``answer`` (gold final answer as text), optionally
``solution`` (a gold worked solution) and ``family`` (testbed), or ``kind`` (how the answer is
graded), ``id``, ``choices`` and ``prompt`` (its few-shot prompt) for benchmark items.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

KINDS = ("testbed", "jsonl", "benchmarks")


@dataclass
class DatasetConfig:
    name: str = "testbed"  # short name used in tags and experiment names
    kind: str = "testbed"  # testbed: generated world problems | jsonl: local files
    seed: int = 0  # world seed (testbed): same seed, same questions
    n_train: int = 500  # training questions per iteration (testbed), or a cap for jsonl (0 = all)
    n_test: int = 400  # test items per test set (0 = all)
    id_sets: List[str] = field(default_factory=list)  # test sets that are in-domain; testbed: ID family
    ood_sets: List[str] = field(default_factory=list)  # out-of-domain test sets; testbed: OOD families
    train_file: Optional[str] = None  # jsonl: training questions
    test_files: Dict[str, str] = field(default_factory=dict)  # jsonl: test set name -> file
    train_set: str = ""  # benchmarks: the benchmark whose train split the loop samples (e.g. gsm8k)
    test_sets: List[str] = field(default_factory=list)  # benchmarks: evaluation suite (imm/benchmarks.py names)
    files: Dict[str, str] = field(default_factory=dict)  # benchmarks: local files by benchmark name (else the hub)
    shots: int = 10  # benchmarks: worked examples in the sampling/evaluation prompt (paper: 10)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"dataset.kind={self.kind!r} is not one of {KINDS}")
        if self.kind == "jsonl":
            if not self.train_file:
                raise ValueError("dataset.train_file is required when dataset.kind=jsonl")
            for path in [self.train_file, *self.test_files.values()]:
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"dataset file {path!r} does not exist")
            unknown = set(self.id_sets + self.ood_sets) - set(self.test_files)
            if unknown:
                raise ValueError(f"dataset.id_sets/ood_sets name {sorted(unknown)}, "
                                 f"not in dataset.test_files {sorted(self.test_files)}")
        if self.kind == "benchmarks":
            from imm.data import benchmarks

            for name in [self.train_set, *self.test_sets]:
                if benchmarks.get(name).hub is None and name not in self.files:  # get() names valid ones
                    raise FileNotFoundError(f"benchmark {name!r} has no hub id: give dataset.files.{name}")
            for name, path in self.files.items():
                if not os.path.exists(path):
                    raise FileNotFoundError(f"dataset.files.{name}={path!r} does not exist")
            unknown = set(self.id_sets + self.ood_sets) - set(self.test_sets)
            if unknown:
                raise ValueError(f"dataset.id_sets/ood_sets name {sorted(unknown)}, not in dataset.test_sets")
        if self.n_train < 0 or self.n_test < 0:
            raise ValueError("dataset.n_train and dataset.n_test must be >= 0")


@dataclass
class Data:
    train: list[dict]
    tests: dict[str, list[dict]]  # test set name -> items
    id_sets: list[str]
    ood_sets: list[str]


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for i, row in enumerate(rows):
        if "question" not in row or "answer" not in row:
            raise ValueError(f"{path}:{i + 1}: each row needs 'question' and 'answer'")
        row["answer"] = str(row["answer"])
    return rows


def _cap(items: list[dict], n: int) -> list[dict]:
    return items[:n] if n else items


def load_data(cfg: DatasetConfig) -> Data:
    if cfg.kind == "testbed":
        from imm.data.world import problems

        id_sets = cfg.id_sets or [problems.ID_FAMILY]
        ood_sets = cfg.ood_sets or list(problems.OOD_FAMILIES)
        train = problems.make_split(id_sets[0], "train", cfg.n_train, cfg.seed)
        tests = {name: problems.make_split(name, "test", cfg.n_test, cfg.seed) for name in id_sets + ood_sets}
        return Data(train, tests, id_sets, ood_sets)
    if cfg.kind == "benchmarks":
        return _benchmarks(cfg)
    tests = {name: _cap(read_jsonl(path), cfg.n_test) for name, path in cfg.test_files.items()}
    ood = cfg.ood_sets or [n for n in tests if n not in cfg.id_sets]
    return Data(_cap(read_jsonl(cfg.train_file), cfg.n_train), tests, list(cfg.id_sets), ood)


def _benchmarks(cfg: DatasetConfig) -> Data:
    """Paper-scale data: items carry their own few-shot prompt (the dataset's worked examples)."""
    from imm.data.benchmarks import load_benchmark
    from imm.data.prompts import build_prompt

    def load(name: str, split: str | None, n: int) -> list[dict]:
        items = load_benchmark(name, split, cfg.files.get(name), limit=n)
        for item in items:
            item["prompt"] = build_prompt(item["question"], name, cfg.shots)
        return items

    train = load(cfg.train_set, "train", cfg.n_train)
    tests = {name: load(name, None, cfg.n_test) for name in cfg.test_sets}
    id_sets = cfg.id_sets or [n for n in cfg.test_sets if n == cfg.train_set]
    ood = cfg.ood_sets or [n for n in cfg.test_sets if n not in id_sets]
    return Data(train, tests, id_sets, ood)
