"""A content-addressed store for stage outputs, shared by every job that points at it.

A stage's output lives in ``<root>/<stage>/<key>/`` where the key hashes the stage name, its
version, its inputs' keys and its own config slice. A job that finds the key reuses the output;
two jobs that reach one key at once compute it once (a lock file; the other waits, then reuses).

The store is meant to live on a cluster's shared filesystem: the lock is an exclusive-create file
with a heartbeat (imm/lock.py), never ``flock``, and a holder that died is taken over after
``lock_stale_s``. Outputs are written under a temporary name, synced to disk (files, then
folders) and renamed, so a killed job or node never leaves a half output behind under a real key.
A stage names the files it writes: a finished folder lacking one (copied in part, cleaned by
hand) is recomputed rather than read. With sharing off, keys are salted per job (nothing is shared
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

from imm.lock import HeartbeatLock

log = logging.getLogger(__name__)

# Bump a stage's version when its code changes what it writes, so old outputs are not reused.
VERSIONS = {"evaluate": 3, "synthesize": 2, "trainset": 2, "importance": 1, "sft": 1, "merge": 2, "divergence": 1}


@dataclass
class StageConfig:
    root: str = "???"  # folder of the store; jobs that share it share stage outputs
    share: bool = True  # false: salt keys per job, so no output is shared between jobs
    lock_stale_s: float = 120.0  # a stage lock whose heartbeat stops this long is taken over (dead job/node)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass
class StageStore:
    root: Path
    salt: str = ""  # non-empty when sharing is off
    lock_stale_s: float = 120.0
    executed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)

    def key(self, stage: str, **inputs: Any) -> str:
        return digest({"stage": stage, "version": VERSIONS[stage], "salt": self.salt, **inputs})

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get_or_compute(self, stage: str, key: str, compute: Callable[[Path], Any],
                       files: tuple[str, ...] = ()) -> tuple[Path, Any]:
        """The output folder of (stage, key), computing it with ``compute(tmp_dir)`` if absent.

        ``files``: what ``compute`` writes (relative paths); a folder lacking one is not a finished
        output. Returns (folder, what compute returned), or (folder, None) when the output was reused."""
        final = self.path(stage, key)
        if _complete(final, files):
            self.reused.append(stage)
            return final, None
        final.parent.mkdir(parents=True, exist_ok=True)
        (self.root / ".locks").mkdir(exist_ok=True)
        with HeartbeatLock(self.root / ".locks" / f"{stage}-{key}.lock", stale_s=self.lock_stale_s):
            if _complete(final, files):  # another job finished it while we waited
                self.reused.append(stage)
                return final, None
            if final.is_dir():
                log.warning("stage folder %s lacks %s: computing it again", final,
                            ", ".join(f for f in files if not (final / f).exists()))
                _remove(final, final.with_name(f"{key}.incomplete-{os.getpid()}"))
            for stale in final.parent.glob(f"{key}.tmp-*"):  # left by a killed job; we hold the lock
                shutil.rmtree(stale, ignore_errors=True)
            tmp = final.with_name(f"{key}.tmp-{os.getpid()}")
            tmp.mkdir()
            result = compute(tmp)
            missing = [f for f in files if not (tmp / f).exists()]
            if missing:
                raise RuntimeError(f"stage {stage} did not write {', '.join(missing)} in {tmp}")
            sync_tree(tmp)
            os.rename(tmp, final)
            _fsync_dir(final.parent)  # the rename itself reaches the disk
        self.executed.append(stage)
        log.debug("stage %s/%s computed", stage, key)
        return final, result


def _complete(folder: Path, files: tuple[str, ...]) -> bool:
    return folder.is_dir() and all((folder / f).exists() for f in files)


def _remove(folder: Path, aside: Path) -> None:
    os.rename(folder, aside)  # out of the key's place at once; the slow delete follows
    shutil.rmtree(aside, ignore_errors=True)


def sync_tree(root: Path) -> None:
    """fsync every file, then every folder bottom-up, so a rename publishes data already on disk."""
    for folder, _, names in os.walk(root, topdown=False):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the files themselves are synced
        pass
    finally:
        os.close(fd)


def finished_outputs(root: Path) -> list[Path]:
    """Every finished stage output in a store (not locks, not a killed job's temporary folders)."""
    return [p for p in Path(root).glob("*/*")
            if p.is_dir() and ".tmp-" not in p.name and ".incomplete-" not in p.name and p.parent.name != ".locks"]


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
