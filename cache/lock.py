"""One writer process (or one launch of ranks) per store at a time.

A build takes `STORE.lock`, beside the store, before it creates or resumes the store, so two builds started
at once cannot both create it. The lock is the kernel's (`flock`), so it dies with its holder: a build killed
with SIGKILL leaves the file, with its owner written in it, but not the lock, and the next build takes it
over and says whose it was. A forked child (a decode worker) closes its copy of the lock, so that workers
orphaned by a killed build, still finishing a video, do not keep the lock of a process that is gone.

A store in a bucket has its lock in the bucket beside it (`BucketLock`): an object, not a kernel lock, which
another build can take over from a live holder it took for dead; the holder then stops writing (`LockLost`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import obstore
from obstore.exceptions import AlreadyExistsError, BaseError, PreconditionError
from obstore.store import S3Store

from cache.bucket import FAILURES, Bucket, cause, connection_options
from cache.schema import StoreError

_HELD: set[int] = set()  # this process's lock descriptors, which a forked child closes


def _close_held_in_child() -> None:
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


class StoreLocked(Exception):
    """Another live process holds the store's lock."""


class LockLost(OSError):
    """Another build took the store's lock over while this one wrote the store: it must write nothing more. An
    OSError, as a full disk is: the build stops part way, its finished shards kept."""


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

    def check(self) -> None:
        """Nothing to check: the kernel takes no lock from a live holder (a bucket's lock can be taken over)."""

    def verify(self) -> None:
        """As `check`: there is nothing to look at."""
        self.check()

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


class BucketLock:
    """`STORE.lock` beside a store in a bucket, as `StoreLock` is beside a local one.

    An object store has no lock that dies with its holder, so the lock is an object made with a conditional PUT
    (`If-None-Match: *`: of two builds creating it at once, exactly one succeeds) naming its owner, which rewrites it
    every HEARTBEAT seconds while it builds. A lock is taken over, with a PUT conditional on its ETag (of two
    takers one wins), where its owner is a process of this host that no longer runs, or where it went STALE
    seconds without a heartbeat (a build killed on another machine, or one paused that long).

    A holder whose lock was taken over learns it from its heartbeat (the conditional rewrite refused) or from
    `verify`, a HEAD of the lock before each shard it writes; from then on `check`, called before each of its
    PUTs, raises LockLost, and `release` leaves the new holder's lock in place.
    """

    HEARTBEAT = 30.0
    STALE = 120.0

    def __init__(self, url: str):
        self.bucket = Bucket(url)
        self.path = f"{self.bucket.url}.lock"
        self.taken_over: LockOwner | None = None
        self._root = S3Store(self.bucket.name, **connection_options(self.bucket.endpoint))
        self._key = f"{self.bucket.key}.lock"
        self._e_tag: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._writing = threading.Lock()  # a heartbeat's rewrite and a look at the lock, one at a time
        self.lost: str | None = None  # why the lock is no longer this process's, once it knows

    def acquire(self) -> None:
        """Take the lock or raise StoreLocked naming its holder; never waits."""
        mine = json.dumps(asdict(LockOwner.me())).encode()
        try:
            try:
                self._e_tag = obstore.put(self._root, self._key, mine, mode="create")["e_tag"]
            except AlreadyExistsError:
                self._take_over(mine)
        except FAILURES as error:
            raise StoreError(f"{self.bucket.url}: {cause(error, self.bucket.endpoint)}") from None
        self._beat = threading.Thread(target=self._heartbeat, args=(mine,), daemon=True)
        self._beat.start()

    def _take_over(self, mine: bytes) -> None:
        held = obstore.get(self._root, self._key)
        owner = LockOwner.parse(bytes(held.bytes()).decode(errors="replace"))
        age = (datetime.now(timezone.utc) - held.meta["last_modified"]).total_seconds()
        if not (_dead_here(owner) or age > self.STALE):
            raise StoreLocked(f"{self.bucket.url} is being written by {owner or 'another process'}")
        try:
            self._e_tag = obstore.put(self._root, self._key, mine, mode={"e_tag": held.meta["e_tag"]})["e_tag"]
        except PreconditionError:
            raise StoreLocked(f"{self.bucket.url} is being written by another process that just took it") from None
        self.taken_over = owner

    def check(self) -> None:
        """Raise LockLost where this process knows its lock was taken over (no request)."""
        if self.lost is not None:
            raise LockLost(self.lost)

    def verify(self) -> None:
        """Raise LockLost where the lock is no longer this process's: as its heartbeat found, or as the lock object
        says now. Nothing where this process does not hold it (another rank's lock)."""
        if self._beat is not None:
            with self._writing:
                self._look()
        self.check()

    def _look(self) -> bool:
        """Note the loss where the lock object is gone or is not the one this process last wrote; False where the
        bucket did not answer (the next write says so)."""
        if self.lost is not None:
            return True
        try:
            seen = obstore.head(self._root, self._key)["e_tag"]
        except FileNotFoundError:
            seen = None
        except BaseError:
            return False
        if seen != self._e_tag:
            self._taken()
        return True

    def _taken(self) -> None:
        """Note the loss, naming the lock's new owner where it can be read."""
        try:
            owner = LockOwner.parse(bytes(obstore.get(self._root, self._key).bytes()).decode(errors="replace"))
        except FileNotFoundError:
            self.lost = f"{self.bucket.url}: its lock {self.path} was removed by another process"
            return
        except FAILURES:
            owner = None
        self.lost = f"{self.bucket.url}: its lock was taken over by {owner or 'another process'}"

    def _heartbeat(self, mine: bytes) -> None:
        while not self._stop.wait(self.HEARTBEAT) and self.lost is None:
            with self._writing:
                try:
                    self._e_tag = obstore.put(self._root, self._key, mine, mode={"e_tag": self._e_tag})["e_tag"]
                except (PreconditionError, FileNotFoundError):  # rewritten or removed by another
                    self._taken()
                except BaseError:
                    pass  # unanswered: tried again at the next beat

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, unless it is another's now."""
        if self._beat is None:
            return
        self._stop.set()
        self._beat.join()
        with self._writing:
            answered = self._look()
        self._beat = None
        if answered and self.lost is None:
            with contextlib.suppress(BaseError):
                obstore.delete(self._root, self._key)


def _dead_here(owner: LockOwner | None) -> bool:
    """Whether `owner` was a process of this host that no longer runs."""
    if owner is None or owner.host != socket.gethostname():
        return False
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
