"""A content-addressed store for stage outputs, shared by every job that points at it.

A stage's output lives in ``<root>/<stage>/<key>/`` where the key hashes the stage name, its
version, its inputs' keys and its own config slice. A job that finds the key reuses the output;
two jobs that reach one key at once compute it once (a file lock; the other waits, then reuses).
Outputs are written under a temporary name and renamed, so a killed job never leaves a half
output behind under a real key. With sharing off, keys are salted per job (nothing is shared
between jobs, but a job still resumes from its own outputs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

log = logging.getLogger(__name__)

# Bump a stage's version when its code changes what it writes, so old outputs are not reused.
VERSIONS = {"evaluate": 1, "synthesize": 1, "trainset": 1, "importance": 1, "sft": 1, "merge": 2}


@dataclass
class StageConfig:
    root: str = "???"  # folder of the store; jobs that share it share stage outputs
    share: bool = True  # false: salt keys per job, so no output is shared between jobs


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass
class StageStore:
    root: Path
    salt: str = ""  # non-empty when sharing is off
    executed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    def key(self, stage: str, **inputs: Any) -> str:
        return digest({"stage": stage, "version": VERSIONS[stage], "salt": self.salt, **inputs})

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def done(self, stage: str, key: str) -> bool:
        return self.path(stage, key).is_dir()

    def get_or_compute(self, stage: str, key: str, compute: Callable[[Path], Any]) -> tuple[Path, Any]:
        """The output folder of (stage, key), computing it with ``compute(tmp_dir)`` if absent.

        Returns (folder, what compute returned), or (folder, None) when the output was reused."""
        final = self.path(stage, key)
        if final.is_dir():
            self.reused.append(stage)
            return final, None
        final.parent.mkdir(parents=True, exist_ok=True)
        (self.root / ".locks").mkdir(exist_ok=True)
        with FileLock(self.root / ".locks" / f"{stage}-{key}.lock"):
            if final.is_dir():  # another job finished it while we waited
                self.reused.append(stage)
                return final, None
            for stale in final.parent.glob(f"{key}.tmp-*"):  # left by a killed job; we hold the lock
                shutil.rmtree(stale, ignore_errors=True)
            tmp = final.with_name(f"{key}.tmp-{os.getpid()}")
            tmp.mkdir()
            result = compute(tmp)
            os.rename(tmp, final)
        self.executed.append(stage)
        log.debug("stage %s/%s computed", stage, key)
        return final, result


def finished_outputs(root: Path) -> list[Path]:
    """Every finished stage output in a store (not locks, not a killed job's temporary folders)."""
    return [p for p in Path(root).glob("*/*") if p.is_dir() and ".tmp-" not in p.name and p.parent.name != ".locks"]


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
