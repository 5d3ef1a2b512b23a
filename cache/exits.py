"""How every clipcache command ends when it cannot finish: what is done stays, one line says what and how to go on.

Exit statuses shared by all commands: 0 done, 2 bad input, 3 (`build-cache --strict`) a video failed,
4 no space left on the device, 5 the object store of an s3:// store stopped answering (after retries), 6
(`build-cache` into an s3:// store) another build took the store's lock over part way, 130 after Ctrl-C, 143 after
SIGTERM.

Cluster schedulers send SIGTERM before SIGKILL, so SIGTERM is treated as Ctrl-C is: it raises `Interrupted`
(a KeyboardInterrupt) in the main thread, each command's `main` turns it into its line and exit status, and a
write that must not be cut half way defers it to its end. Here, and not in each package, because every
command of the four packages needs the same.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from cache.bucket import BucketUnreachable
from cache.lock import LockLost

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
NO_SPACE = 4
UNREACHABLE = 5
LOCK_LOST = 6


@dataclass(frozen=True)
class PartWay:
    """Why a command stopped part way with its finished work kept: its exit status, the cause, and what to do
    before running it again."""

    status: int
    cause: str
    when: str  # when to run it again


def part_way(error: BaseException, where) -> PartWay | None:
    """A full disk, a bucket that stopped answering, or a store's lock taken over by another build: the failures a
    command ends on as it ends on Ctrl-C, keeping what is finished; None for any other error."""
    if disk_full(error):
        return PartWay(NO_SPACE, f"no space left on the device of {where}", "once space is freed")
    if isinstance(error, BucketUnreachable):
        return PartWay(UNREACHABLE, str(error), "once the bucket answers again")
    if isinstance(error, LockLost):
        return PartWay(LOCK_LOST, str(error), "once that build has ended")
    return None


def disk_full(error: BaseException) -> bool:
    """A write that failed for want of space (zarr, h5py and plain files all raise OSError ENOSPC)."""
    return isinstance(error, OSError) and error.errno == errno.ENOSPC


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM, raised where the main thread was."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_on_signals() -> None:
    """Make Ctrl-C and SIGTERM raise `Interrupted` in this process (call it first in a command's main)."""

    def stop(signum: int, _frame) -> None:
        raise Interrupted(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)


def exit_status(stop: KeyboardInterrupt) -> int:
    return 128 + (stop.signum if isinstance(stop, Interrupted) else signal.SIGINT)


@contextlib.contextmanager
def deferred_stop() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends (a shard or checkpoint write), then deliver the first."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers run in the main thread only: there, the block is never cut
        return
    caught: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, _: caught.append(signum)) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if caught:
            signal.raise_signal(caught[0])
