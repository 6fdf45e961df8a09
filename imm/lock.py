"""A lock file that works on shared filesystems (NFS, Lustre) and does not outlive a dead holder.

``flock`` is often missing on cluster filesystems, or not shared between nodes, and a node that
dies holding one can block a key for good. This lock relies only on what NFS makes atomic:

- taking it is an exclusive create (``O_CREAT | O_EXCL``) of ``<name>.lock``, which holds the
  owner (host, pid, a random token);
- while held, a thread touches the file every ``heartbeat_s`` (its mtime moves);
- a waiter takes the lock over when the file's heartbeat has not moved for ``stale_s`` seconds
  of the *waiter's own* clock (no comparison of clocks across nodes), or at once when the owner
  is a process of this host that no longer exists.

Taking over renames the stale file to a unique name first (one waiter wins the rename) and checks
that what it renamed is the file it judged stale. The store's outputs stay correct even if two
holders ever overlapped: a stage is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

log = logging.getLogger(__name__)


class LockTimeout(TimeoutError):
    pass


def _alive_here(owner: dict) -> bool:
    """False only when the owner is a process of this host that is gone (then no wait is needed)."""
    if owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(owner.get("pid", 0)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def _read_owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}  # being written, or just removed


class HeartbeatLock:
    """``with HeartbeatLock(path, stale_s=120):`` — an exclusive-create lock with a heartbeat."""

    def __init__(self, path: str | Path, stale_s: float = 120.0, heartbeat_s: float | None = None,
                 poll_s: float = 0.5):
        self.path, self.stale_s, self.poll_s = Path(path), float(stale_s), poll_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else max(0.05, self.stale_s / 4)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ino: int | None = None

    # ------------------------------------------------------------ taking and giving back

    def acquire(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple | None = None  # (inode, mtime_ns) of the holder's file, and when it last moved
        since = time.monotonic()
        while True:
            if self._try_create():
                return
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                continue  # released between our create and our stat: try again at once
            sig = (st.st_ino, st.st_mtime_ns)
            if sig != seen:
                seen, since = sig, time.monotonic()
            owner = _read_owner(self.path)
            if time.monotonic() - since >= self.stale_s or (owner and not _alive_here(owner)):
                self._take_over(st.st_ino, owner, time.monotonic() - since)
                seen = None
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeout(f"{self.path} is held by {owner or 'another process'}")
            time.sleep(self.poll_s)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if _read_owner(self.path).get("token") == self.token:
            self.path.unlink(missing_ok=True)
        else:
            log.warning("lock %s was taken over while held (heartbeat late by more than %.0f s)",
                        self.path, self.stale_s)

    def __enter__(self) -> "HeartbeatLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------ internals

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token, "since": time.time()}
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(owner))
            f.flush()
            os.fsync(f.fileno())
        self._ino = os.stat(self.path).st_ino
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lock-heartbeat {self.path.name}", daemon=True)
        self._thread.start()
        return True

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return  # taken over and removed: release() says so

    def _take_over(self, stale_ino: int, owner: dict, quiet_s: float) -> None:
        aside = self.path.with_name(f"{self.path.name}.stale-{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another waiter took it over first
        if os.stat(aside).st_ino != stale_ino:  # a fresh lock was created between our stat and rename
            try:
                os.link(aside, self.path)  # put it back, unless someone created yet another one
            except FileExistsError:
                pass
        else:
            log.warning("took over lock %s from %s (no heartbeat for %.0f s)", self.path, owner or "?", quiet_s)
        aside.unlink(missing_ok=True)
