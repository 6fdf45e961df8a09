"""Long-lived grading worker processes, killed (never asked) when a check overruns.

``shared_pool(workers).run(jobs, timeout)`` checks (answer, item) pairs in ``workers`` separate
Python processes and returns (correct, timed out) per pair. Why it is built this way:

- Workers are started once per process, with ``subprocess`` (fork + exec, safe from a threaded
  process), and reused by every call. Forking a pool from the loop's process for each call, while
  torch threads run, once left a child waiting forever on a lock some thread held at fork time.
- Each worker has its own pair of pipes and no lock is shared with it, so a worker killed at any
  moment cannot leave the parent waiting on anything but that worker's pipe.
- A worker's alarm (``checks.check_limited``) stops a check that is slow in Python code; a check
  stuck in C code never sees the alarm, so the parent waits at most 2 x timeout + 1 s for a
  result, then SIGKILLs that worker and starts a replacement. Only then is a worker replaced.
- Workers reset SIGTERM and SIGINT to their default actions: an entrypoint's handler (or an
  inherited "ignore") must not turn their ending into tracebacks or keep them alive.
- A worker exits when its input pipe closes, so workers never outlive the process that uses them.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path

log = logging.getLogger(__name__)

START_TIMEOUT = 120.0  # s for a new worker to import math-verify, on a loaded machine
WORKER_CODE = "from imm.grading.worker import serve; serve()"
ITEM_KEYS = ("answer", "kind", "choices")  # what a check reads of an item (not its prompt)


class Worker:
    """One grading process and the parent's view of it: starting, idle, or busy with job ``job``."""

    def __init__(self):
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the imm package's folder, for the child's imports
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER_CODE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, bufsize=0)
        self.ready, self.job, self.buf = False, None, b""
        self.deadline: float | None = time.monotonic() + START_TIMEOUT

    def fileno(self) -> int:
        return self.proc.stdout.fileno()

    def send(self, message) -> None:
        data = memoryview(json.dumps(message).encode() + b"\n")
        while data:
            data = data[os.write(self.proc.stdin.fileno(), data):]

    def read(self) -> list | None:
        """The complete messages the worker has written, None once it has exited."""
        chunk = os.read(self.fileno(), 1 << 16)
        if not chunk:
            return None
        *lines, self.buf = (self.buf + chunk).split(b"\n")
        return [json.loads(line) for line in lines]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: a worker stuck in C code ignores anything milder
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()

    def close(self, wait_s: float = 2.0) -> None:
        """End the worker by closing its input; kill it if it does not exit within ``wait_s``."""
        try:
            self.proc.stdin.close()
            self.proc.wait(wait_s)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class GradingPool:
    def __init__(self, size: int):
        self.workers = [Worker() for _ in range(size)]
        self.replaced = 0  # workers killed for overrunning (or found dead) and started anew
        self.lock = threading.Lock()  # one call at a time; the lock lives in this process only

    def run(self, jobs: list[tuple[str, dict]], timeout: float) -> list[tuple[bool, bool]]:
        """(correct, timed out) for each (answer, item) job, each check limited to ``timeout`` s."""
        with self.lock:
            return self._run(jobs, timeout)

    def _run(self, jobs: list[tuple[str, dict]], timeout: float) -> list[tuple[bool, bool]]:
        results: list[tuple[bool, bool]] = [(False, True)] * len(jobs)  # overwritten when a result comes
        todo = deque(range(len(jobs)))
        while todo or any(w.job is not None for w in self.workers):
            for k, w in enumerate(self.workers):
                if w.ready and w.job is None and todo:
                    pred, item = jobs[todo[0]]
                    try:
                        w.send([pred, {key: item[key] for key in ITEM_KEYS if key in item}, timeout])
                    except OSError:  # it died while idle (a signal from outside): start another
                        self.replace(k)
                        continue
                    w.job, w.deadline = todo.popleft(), time.monotonic() + 2 * timeout + 1
            waiting = [w for w in self.workers if w.deadline is not None]
            for w in wait(waiting, timeout=max(0.0, min(w.deadline for w in waiting) - time.monotonic())):
                messages = w.read()
                if messages is None:
                    if not w.ready:
                        raise RuntimeError("a grading worker exited while starting (its error is above)")
                    log.warning("grading: a worker died on a check; it counts as timed out")
                    self.replace(self.workers.index(w))
                for m in messages or []:
                    if m == "ready":
                        w.ready, w.deadline = True, None
                    else:
                        results[w.job] = (bool(m[0]), bool(m[1]))
                        w.job, w.deadline = None, None
            now = time.monotonic()
            for k, w in enumerate(self.workers):
                if w.deadline is not None and now > w.deadline:
                    if not w.ready:
                        raise RuntimeError(f"a grading worker did not start within {START_TIMEOUT:.0f} s")
                    self.replace(k)  # its job keeps the (False, timed out) result
        return results

    def replace(self, k: int) -> None:
        self.workers[k].kill()
        self.workers[k] = Worker()
        self.replaced += 1

    def resize(self, size: int) -> None:
        while len(self.workers) > size:
            self.workers.pop().close()
        self.workers += [Worker() for _ in range(size - len(self.workers))]

    def close(self) -> None:
        for w in self.workers:
            w.close()
        self.workers = []


_POOL: GradingPool | None = None
_POOL_PID = 0
_POOL_LOCK = threading.Lock()


def shared_pool(size: int) -> GradingPool:
    """This process's pool of ``size`` workers, started on first use and kept until exit."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_PID != os.getpid():  # a forked child must not share its parent's pipes
            if _POOL is None:
                atexit.register(close_shared_pool)
            _POOL, _POOL_PID = GradingPool(size), os.getpid()
        elif len(_POOL.workers) != size:
            with _POOL.lock:
                _POOL.resize(size)
        return _POOL


def close_shared_pool() -> None:
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None and _POOL_PID == os.getpid():
            _POOL.close()
        _POOL = None
