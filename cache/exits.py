"""How every clipcache command ends when it cannot finish: what is done stays, one line says what and how to go on.

Exit statuses shared by all commands: 0 done, 2 bad input, 3 (`build-cache --strict`) a video failed,
4 no space left on the device, 5 the object store of an s3:// store stopped answering (after retries), 6
(`build-cache` into an s3:// store) another build took the store's lock over part way, 130 after Ctrl-C, 143 after
SIGTERM.

Cluster schedulers send SIGTERM before SIGKILL, so SIGTERM is treated as Ctrl-C is: it raises `Interrupted`
(a KeyboardInterrupt) in the main thread, and a write that must not be cut half way defers it to its end. Every
command's `main` is wrapped in `ends`, which turns each of these endings into its line and exit status: here, in
one place, because every command of the four packages must end the same way.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cache.bucket import BucketUnreachable
from cache.lock import LockLost
from cache.schema import StoreError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
BAD_INPUT = 2
NO_SPACE = 4
UNREACHABLE = 5
LOCK_LOST = 6
SQLITE_FULL = 13  # sqlite3.SQLITE_FULL, named there from Python 3.11


class BadInput(Exception):
    """Bad input from the command line or its files: one line, exit status 2. The packages' own usage errors
    derive from it, so that `ends` knows them without importing a package above cache."""


@dataclass(frozen=True)
class PartWay:
    """Why a command stopped part way with its finished work kept: its exit status, the cause, and what to do
    before running it again."""

    status: int
    cause: str
    when: str  # when to run it again


def part_way(error: BaseException, where: str | Path | None = None) -> PartWay | None:
    """The failures a command ends on as it ends on Ctrl-C, keeping what is finished, each with its exit status;
    None for any other error. The one table of them: another such failure is one more case here."""
    if disk_full(error):
        device = "the device" if where is None else f"the device of {where}"
        return PartWay(NO_SPACE, f"no space left on {device}", "once space is freed")
    if isinstance(error, BucketUnreachable):
        return PartWay(UNREACHABLE, str(error), "once the bucket answers again")
    if isinstance(error, LockLost):
        return PartWay(LOCK_LOST, str(error), "once that build has ended")
    return None


def disk_full(error: BaseException | None) -> bool:
    """A write that failed for want of space: zarr, h5py and plain files raise OSError ENOSPC, SQLite (optuna's
    study) SQLITE_FULL, which SQLAlchemy raises as the cause of an error of its own."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if isinstance(error, sqlite3.Error) and getattr(error, "sqlite_errorcode", None) == SQLITE_FULL:
            return True
        error = error.__cause__
    return False


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


@dataclass
class Ending:
    """What a command says when it stops before its end. Its body fills it in as it learns it (the folder it
    writes, the model it trains), so that the line names what is kept at the moment it stopped."""

    command: str  # the line's first word
    # What is kept and how to go on, or a function saying it when asked; a full disk's "once ..." follows it.
    kept: str | Callable[[], str] = "nothing was written; run the same command again"
    where: str | Path | None = None  # what a full disk's line names
    speaks: bool = True  # False on a launch's other ranks: the line is said once

    def stopped(self, error: BaseException) -> tuple[int, str] | None:
        """`error`'s exit status and line, or None for an error no command expects (its traceback is the report)."""
        if isinstance(error, KeyboardInterrupt):
            return exit_status(error), f"{self.command}: interrupted: {self.kept_line()}"
        if isinstance(error, BadInput | StoreError):
            return BAD_INPUT, f"{self.command}: error: {error}"
        stopped = part_way(error, self.where)
        if stopped is None:
            return None
        return stopped.status, f"{self.command}: error: {stopped.cause}: {self.kept_line()} {stopped.when}"

    def kept_line(self) -> str:
        return self.kept() if callable(self.kept) else self.kept


Body = Callable[[list[str] | None, Ending], int | None]


def ends(command: str) -> Callable[[Body], Callable[[list[str] | None], int]]:
    """Make `body(argv, ending)` a command's `main(argv)`: Ctrl-C and SIGTERM stop it, and every expected way
    of stopping early (`Ending.stopped`) becomes one line on stderr and its exit status."""

    def decorate(body: Body) -> Callable[[list[str] | None], int]:
        @functools.wraps(body)
        def main(argv: list[str] | None = None) -> int:
            ending = Ending(command)
            stop_on_signals()
            try:
                return body(argv, ending) or 0
            except BaseException as error:
                stopped = ending.stopped(error)
                if stopped is None:
                    raise
                status, line = stopped
                if ending.speaks:
                    print(line, file=sys.stderr)
                return status

        return main

    return decorate
