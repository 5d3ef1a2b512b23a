"""One writer process (or one launch of ranks) per store at a time.

A build takes `STORE.lock`, beside the store, before it creates or resumes the store, so two builds started
at once cannot both create it. The lock is the kernel's (`flock`), so it dies with its holder: a build killed
with SIGKILL leaves the file, with its owner written in it, but not the lock, and the next build takes it
over and says whose it was. A forked child (a decode worker) closes its copy of the lock, so that workers
orphaned by a killed build, still finishing a video, do not keep the lock of a process that is gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

_HELD: set[int] = set()  # this process's lock descriptors, which a forked child closes


def _close_held_in_child() -> None:
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class StoreLocked(Exception):
    """Another live process holds the store's lock."""


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    since: str

    @classmethod
    def me(cls) -> LockOwner:
        return cls(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S"))

    @classmethod
    def parse(cls, text: str) -> LockOwner | None:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError):
            return None

    def __str__(self) -> str:
        return f"process {self.pid} on {self.host} since {self.since}"


class StoreLock:
    """`with StoreLock(store) as lock:` holds the lock; `lock.taken_over` names a dead holder it replaced."""

    def __init__(self, store: str | Path):
        self.store = Path(store)
        self.path = self.store.with_name(f"{self.store.name}.lock")
        self.taken_over: LockOwner | None = None
        self._fd: int | None = None

    def __enter__(self) -> StoreLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise StoreLocked naming its holder; never waits."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = LockOwner.parse(_read(fd))
                os.close(fd)
                raise StoreLocked(f"{self.store} is being written by {owner or 'another process'}") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # a holder released and removed the file between our open and flock: take the new one
        try:
            self.taken_over = LockOwner.parse(_read(fd))
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(asdict(LockOwner.me())).encode(), 0)
        except OSError:  # a full disk: let the lock go, not only when the process ends
            os.close(fd)
            raise
        self._fd = fd
        _HELD.add(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        _HELD.discard(self._fd)
        os.close(self._fd)
        self._fd = None


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace")


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
