"""Training questions and test sets: the testbed world, or local JSONL files.

Every item is a dict with ``question`` and ``answer`` (gold final answer as text), optionally
``solution`` (a gold worked solution) and ``family``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

KINDS = ("testbed", "jsonl")


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
        from imm.world import problems

        id_sets = cfg.id_sets or [problems.ID_FAMILY]
        ood_sets = cfg.ood_sets or list(problems.OOD_FAMILIES)
        train = problems.make_split(id_sets[0], "train", cfg.n_train, cfg.seed)
        tests = {name: problems.make_split(name, "test", cfg.n_test, cfg.seed) for name in id_sets + ood_sets}
        return Data(train, tests, id_sets, ood_sets)
    tests = {name: _cap(read_jsonl(path), cfg.n_test) for name, path in cfg.test_files.items()}
    ood = cfg.ood_sets or [n for n in tests if n not in cfg.id_sets]
    return Data(_cap(read_jsonl(cfg.train_file), cfg.n_train), tests, list(cfg.id_sets), ood)
