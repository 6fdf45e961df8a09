"""Training questions and test sets: ``load_data``, the benchmark loaders, few-shot prompts and the testbed world.

By ``dataset.kind``:

- ``testbed``: the testbed world's generated problems (:mod:`imm.data.world`), an ID family and
  three OOD families;
- ``jsonl``: local files, ``dataset.train_file`` and ``dataset.test_files`` (name -> file);
- ``benchmarks``: GSM8K, MATH and the OOD suite of :mod:`imm.data.benchmarks`, from the hub or local
  files in the same schema, with the few-shot prompts of :mod:`imm.data.prompts`.

Every item is a dict with ``question`` and ``answer`` (gold final answer as text), optionally
``solution`` (a gold worked solution) and ``family`` (testbed), or ``kind`` (how the answer is
graded), ``id``, ``choices`` and ``prompt`` (its few-shot prompt) for benchmark items.

Training and test data never share a file: a benchmark's local files are given per split
(``dataset.files.gsm8k.train`` / ``.test``), and ``load_data`` compares the training questions with
every test set (normalised text) and refuses a run whose training set holds test questions
(``dataset.overlap``: error | drop | warn).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from imm.data.benchmarks import BENCHMARKS

log = logging.getLogger(__name__)

KINDS = ("testbed", "jsonl", "benchmarks")
OVERLAP = ("error", "drop", "warn")


@dataclass
class SplitFiles:
    """A benchmark's local files, one per split (None = load that split from the hub)."""
    train: Optional[str] = None  # rows the loop samples from (dataset.train_set only)
    test: Optional[str] = None  # rows of the test set
    validation: Optional[str] = None  # rows a run with dataset.eval_split=validation evaluates on (choices are made there)


def _split_files(name: str, value) -> SplitFiles:
    """Python callers may pass plain dicts; one path for both splits is refused (it trains on the test set)."""
    if isinstance(value, SplitFiles):
        return value
    if isinstance(value, dict):
        return SplitFiles(**value)
    raise ValueError(f"dataset.files.{name}={value!r}: give one file per split, "
                     f"dataset.files.{name}.train=... and/or dataset.files.{name}.test=... / .validation=...")


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
    test_sets: List[str] = field(default_factory=list)  # benchmarks: evaluation suite (imm/data/benchmarks.py names)
    # benchmarks: local files by benchmark and split (else the hub); every benchmark is declared so
    # that `dataset.files.gsm8k.test=path` composes as written
    files: Dict[str, SplitFiles] = field(default_factory=lambda: {name: SplitFiles() for name in BENCHMARKS})
    shots: int = 10  # benchmarks: worked examples in the sampling/evaluation prompt (paper: 10)
    exemplars: str = ""  # benchmarks: the exemplar set every prompt takes its shots from (imm.data.prompts.EXEMPLARS); "" = each benchmark's own
    overlap: str = "error"  # training questions found in a test set: error (refuse) | drop them | warn
    # benchmarks: a folder the testbed world's families are written to as benchmark files when they are
    # missing (imm/data/world/benchmark_files.py, seeded by dataset.seed); null = files are the user's
    world_files: Optional[str] = None
    # which items the test sets hold. test: the reported split | validation: testbed: items carved from
    # the training questions' part of question space, none of them a training question of the run;
    # benchmarks: each test set's dataset.files.<set>.validation. Choose α, SFT strength, the base model
    # on it, never on test
    eval_split: str = "test"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"dataset.kind={self.kind!r} is not one of {KINDS}")
        if self.eval_split not in ("test", "validation"):
            raise ValueError(f"dataset.eval_split={self.eval_split!r} is not test or validation")
        if self.overlap not in OVERLAP:
            raise ValueError(f"dataset.overlap={self.overlap!r} is not one of {OVERLAP}")
        self.files = {name: _split_files(name, v) for name, v in self.files.items()}
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

            if self.world_files:
                from imm.data.world.benchmark_files import ensure

                ensure(self.world_files, self.seed)

            if self.exemplars:
                from imm.data.prompts import EXEMPLARS

                if self.exemplars not in EXEMPLARS:
                    raise ValueError(f"dataset.exemplars={self.exemplars!r} is not one of {sorted(EXEMPLARS)}")
            needs = [(self.train_set, "train")] + [(name, self.eval_split) for name in self.test_sets]
            for name, split in needs:
                given = getattr(self.files.get(name, SplitFiles()), split)
                if split == "validation" and not given:  # a hub's splits are not ours to carve
                    raise FileNotFoundError(f"dataset.eval_split=validation: give dataset.files.{name}.validation")
                if benchmarks.get(name).hub is None and not given:  # get() names valid ones
                    raise FileNotFoundError(f"benchmark {name!r} has no hub id: give dataset.files.{name}.{split}")
            for name, split_files in self.files.items():
                for split in ("train", "test", "validation"):
                    path = getattr(split_files, split)
                    if path and not os.path.exists(path):
                        raise FileNotFoundError(f"dataset.files.{name}.{split}={path!r} does not exist")
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
    overlap: dict[str, int] = field(default_factory=dict)  # test set -> training questions found in it


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
    """The training questions and test sets, checked for training questions that are test questions."""
    return check_overlap(_load(cfg), cfg.overlap)


def _load(cfg: DatasetConfig) -> Data:
    if cfg.kind == "testbed":
        from imm.data.world import problems

        id_sets = cfg.id_sets or [problems.ID_FAMILY]
        ood_sets = cfg.ood_sets or list(problems.OOD_FAMILIES)
        train = problems.make_split(id_sets[0], "train", cfg.n_train, cfg.seed)
        tests = {name: _eval_items(problems, name, cfg, train) for name in id_sets + ood_sets}
        return Data(train, tests, id_sets, ood_sets)
    if cfg.kind == "benchmarks":
        return _benchmarks(cfg)
    tests = {name: _cap(read_jsonl(path), cfg.n_test) for name, path in cfg.test_files.items()}
    ood = cfg.ood_sets or [n for n in tests if n not in cfg.id_sets]
    return Data(_cap(read_jsonl(cfg.train_file), cfg.n_train), tests, list(cfg.id_sets), ood)


def _eval_items(problems, name: str, cfg: DatasetConfig, train: list[dict]) -> list[dict]:
    """A testbed set's evaluation items: its test split, or its validation split less any of the run's
    training questions (drawn with room to spare, so the count stays ``n_test``)."""
    if cfg.eval_split == "test":
        return problems.make_split(name, "test", cfg.n_test, cfg.seed)
    taken = {normalise(item["question"]) for item in train}
    drawn = problems.make_split(name, "validation", cfg.n_test + len(taken), cfg.seed)
    return [item for item in drawn if normalise(item["question"]) not in taken][:cfg.n_test]


def _benchmarks(cfg: DatasetConfig) -> Data:
    """Paper-scale data: items carry their own few-shot prompt (the dataset's worked examples)."""
    from imm.data.benchmarks import load_benchmark
    from imm.data.prompts import build_prompt

    def load(name: str, split: str | None, n: int) -> list[dict]:
        path = getattr(cfg.files.get(name, SplitFiles()), split or "test")
        items = load_benchmark(name, split, path, limit=n)
        for item in items:
            item["prompt"] = build_prompt(item["question"], cfg.exemplars or name, cfg.shots)
        return items

    train = load(cfg.train_set, "train", cfg.n_train)
    split = None if cfg.eval_split == "test" else "validation"  # None: the benchmark's own test split
    tests = {name: load(name, split, cfg.n_test) for name in cfg.test_sets}
    id_sets = cfg.id_sets or [n for n in cfg.test_sets if n == cfg.train_set]
    ood = cfg.ood_sets or [n for n in cfg.test_sets if n not in id_sets]
    return Data(train, tests, id_sets, ood)


def normalise(question: str) -> str:
    """Question text compared for overlap: case, punctuation and spacing do not tell two apart."""
    return " ".join(re.sub(r"[^\w]+", " ", question.lower()).split())


def check_overlap(data: Data, policy: str = "error") -> Data:
    """Counts training questions that appear in each test set; ``policy`` says what happens then.

    error (the default) refuses: a leaked test question inflates exactly the accuracies a run is
    for, and silently. drop removes those questions from the training set; warn keeps them and
    logs loudly. The counts stay in ``data.overlap`` either way (the loop logs them to MLflow)."""
    train = {normalise(item["question"]) for item in data.train}
    data.overlap = {name: sum(normalise(item["question"]) in train for item in items)
                    for name, items in data.tests.items()}
    found = {name: n for name, n in data.overlap.items() if n}
    if not found:
        return data
    message = (f"training questions appear in test sets: {found} "
               f"({sum(found.values())} test items); dataset.overlap={policy}")
    if policy == "error":
        raise ValueError(message + ": give the training split and the test split separate files "
                                   "(dataset.files.<name>.train / .test), or set dataset.overlap=drop")
    if policy == "drop":
        leaked = {normalise(item["question"]) for items in data.tests.values() for item in items}
        before = len(data.train)
        data.train = [item for item in data.train if normalise(item["question"]) not in leaked]
        log.warning("%s: dropped %d training questions", message, before - len(data.train))
    else:
        log.warning("!!! %s: these test scores are not clean !!!", message)
    return data
