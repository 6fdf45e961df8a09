"""The stage store's lock under contention, with real processes: a race on one key, a holder that is
killed, a holder on "another node" that stops beating, and a folder that lost its files."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from imm.lock import HeartbeatLock, LockTimeout
from imm.store import StageStore

CTX = mp.get_context("spawn")  # a fresh interpreter per racer, as separate jobs would be


def _racer(root: str, start, results) -> None:
    store = StageStore(Path(root), lock_stale_s=5)

    def compute(tmp: Path) -> str:
        with open(Path(root) / "computed.log", "a") as f:  # one line per actual computation
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # long enough that the other racer arrives while this one computes
        (tmp / "out.json").write_text(json.dumps({"by": os.getpid()}))
        return "computed"

    start.wait()
    path, result = store.get_or_compute("evaluate", "k1", compute, files=("out.json",))
    results.put((os.getpid(), str(path), result, json.loads((path / "out.json").read_text())["by"]))


def test_two_processes_racing_on_one_key_compute_it_once(tmp_path):
    start, results = CTX.Barrier(2), CTX.Queue()
    procs = [CTX.Process(target=_racer, args=(str(tmp_path), start, results)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len((tmp_path / "computed.log").read_text().split()) == 1
    assert sorted(r[2] is None for r in got) == [False, True]  # one computed, the other reused
    assert len({r[1] for r in got}) == 1 and len({r[3] for r in got}) == 1  # same folder, same content
    assert not list((tmp_path / ".locks").iterdir())  # released and removed


def _hold_forever(path: str, ready) -> None:
    lock = HeartbeatLock(path, stale_s=2)
    lock.acquire()
    ready.set()
    time.sleep(600)


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    path = tmp_path / "k.lock"
    ready = CTX.Event()
    holder = CTX.Process(target=_hold_forever, args=(str(path), ready))
    holder.start()
    assert ready.wait(60)
    with pytest.raises(LockTimeout):  # alive and beating: never taken over, even after the stale time
        HeartbeatLock(path, stale_s=2, poll_s=0.1).acquire(timeout=5)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    lock = HeartbeatLock(path, stale_s=2, poll_s=0.1)
    lock.acquire(timeout=30)
    assert json.loads(path.read_text())["token"] == lock.token
    lock.release()
    assert not path.exists()


def test_a_silent_lock_of_another_node_is_taken_over_after_the_timeout(tmp_path):
    """A node that died: its pid means nothing here, only the heartbeat that stopped counts."""
    path = tmp_path / "k.lock"
    path.write_text(json.dumps({"host": f"not-{socket.gethostname()}", "pid": 1, "token": "dead"}))
    with pytest.raises(LockTimeout):  # waited less than the stale time: still theirs
        HeartbeatLock(path, stale_s=30, poll_s=0.1).acquire(timeout=1)
    assert json.loads(path.read_text())["token"] == "dead"
    lock = HeartbeatLock(path, stale_s=1, poll_s=0.1)
    lock.acquire(timeout=30)
    assert json.loads(path.read_text())["token"] == lock.token
    lock.release()


def test_a_finished_folder_without_its_files_is_computed_again(tmp_path):
    store = StageStore(tmp_path)
    broken = store.path("evaluate", "k2")
    broken.mkdir(parents=True)  # what a partial copy or a hand cleanup leaves: the folder, no metrics.json
    calls = []

    def compute(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "metrics.json").write_text("{}")

    path, _ = store.get_or_compute("evaluate", "k2", compute, files=("metrics.json",))
    assert path == broken and (path / "metrics.json").exists() and len(calls) == 1
    assert store.executed == ["evaluate"]
    store.get_or_compute("evaluate", "k2", compute, files=("metrics.json",))
    assert len(calls) == 1 and store.reused == ["evaluate"]


def test_a_stage_that_does_not_write_its_files_fails_naming_them(tmp_path):
    store = StageStore(tmp_path)
    with pytest.raises(RuntimeError, match="did not write metrics.json"):
        store.get_or_compute("evaluate", "k3", lambda tmp: None, files=("metrics.json",))
    assert not store.path("evaluate", "k3").exists()
