"""The node's local shard cache, where shards of stores in a bucket are read from, its settings and their options.

The settings (`ShardCacheConfig`) go from a command's options to every store it opens and, with a dataset, to
its DataLoader workers; the environment only gives their defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import heapq
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cache.schema import StoreError

CACHE_DIR_ENV = "CLIPCACHE_CACHE_DIR"
CACHE_LIMIT_ENV = "CLIPCACHE_CACHE_LIMIT"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "clipcache" / "shards"
DEFAULT_CACHE_LIMIT = 50 * 2**30
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
LOCK = ".lock"
INDEX = ".index"
SLACK = 1000  # stale lines of the index, or stale heap items, beyond its entries before it is written anew


def parse_size(text: str) -> int:
    """Bytes of `50G`, `800M`, `1T` or a plain number, for `--cache-limit`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"not a size: {text!r} (e.g. 50G, 800M)")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def add_cache_options(parser: argparse.ArgumentParser) -> None:
    """`--cache-dir` and `--cache-limit`, for every command that reads a store (they matter for s3:// stores)."""
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help=f"local folder for the shards of s3:// stores (default ${CACHE_DIR_ENV} or {DEFAULT_CACHE_DIR})",
    )
    parser.add_argument(
        "--cache-limit",
        help=f"most bytes the shard cache keeps, least recently read out first (default ${CACHE_LIMIT_ENV} or 50G)",
    )


@dataclass(frozen=True)
class ShardCacheConfig:
    """Where a node keeps the shards of stores in a bucket, and how many bytes at most. Handed down from a command's
    options to the stores it opens, and with a dataset to its DataLoader workers: nothing else decides it."""

    folder: Path = DEFAULT_CACHE_DIR
    limit: int = DEFAULT_CACHE_LIMIT

    @classmethod
    def from_environment(cls) -> ShardCacheConfig:
        """The user's defaults: `$CLIPCACHE_CACHE_DIR` and `$CLIPCACHE_CACHE_LIMIT` where set, else ours."""
        folder = os.environ.get(CACHE_DIR_ENV)
        return cls(
            Path(folder).expanduser().resolve() if folder else DEFAULT_CACHE_DIR,
            _limit(os.environ.get(CACHE_LIMIT_ENV), f"${CACHE_LIMIT_ENV}"),
        )


def cache_config(args: argparse.Namespace) -> ShardCacheConfig:
    """The shard cache that `--cache-dir` and `--cache-limit` ask for, the environment's defaults where not given."""
    default = ShardCacheConfig.from_environment()
    folder = default.folder if args.cache_dir is None else Path(args.cache_dir).expanduser().resolve()
    limit = default.limit if args.cache_limit is None else _limit(args.cache_limit, "--cache-limit")
    return ShardCacheConfig(folder, limit)


def _limit(text: str | None, where: str) -> int:
    if not text:
        return DEFAULT_CACHE_LIMIT
    try:
        return parse_size(text)
    except ValueError as error:
        raise StoreError(f"{where}: {error}") from None


class ShardCache:
    """A node's local copies of shard objects, under `folder/BUCKET/KEY`; at most `limit` bytes, the least recently
    read out first. Several processes share it (a DataLoader's workers, a node's ranks): a copy is renamed into
    place whole, a reader touches a copy each time it reads it (so what a process is reading is the newest), and
    each process keeps the copies' sizes and ages in an index (`CacheIndex`) that it updates under a file lock as
    copies come and go: putting a shard in costs the same beside ten shards or a hundred thousand, where walking
    the folder on every fetch cost a stat of every copy."""

    def __init__(self, folder: Path, limit: int):
        self.folder = Path(folder)
        self.limit = limit
        self._index = CacheIndex(self.folder)
        self._fetches: dict[Path, threading.Lock] = {}
        self._fetches_lock = threading.Lock()

    @classmethod
    def of(cls, config: ShardCacheConfig) -> ShardCache:
        return cls(config.folder, config.limit)

    def fetch(self, path: Path, get: Callable[[], bytes]) -> Path:
        """`path`, put here first from `get()` where it is not here yet; reader threads wanting one shard at once
        make one `get`, the others wait for it."""
        if self.cached(path):
            return path
        with self._fetching(path):
            if not self.cached(path):
                self.add(path, get())
        return path

    def cached(self, path: Path) -> bool:
        """Whether `path` is here, marking it just read."""
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        return True

    def add(self, path: Path, data) -> None:
        """Put `data` at `path` whole, then evict down to the limit (never `path` itself)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
        name = path.relative_to(self.folder).as_posix()
        try:
            with open(partial, "wb") as f:
                f.write(memoryview(data))
            written = partial.stat()
            with self._locked():
                # Indexed before the rename: a kill between leaves an entry without its file, which eviction
                # drops, where the other order would leave a file that no index counts.
                self._index.added(name, written.st_size, written.st_mtime_ns)
                os.replace(partial, path)
                self._evict(keep=name)
        finally:
            partial.unlink(missing_ok=True)

    def size(self) -> int:
        """The bytes of every copy on disk, walking the folder (a check, not the read path)."""
        return sum(stat.st_size for _, stat in _copies(self.folder))

    def _evict(self, keep: str) -> None:
        while self._index.total > self.limit:
            name = self._index.oldest(keep)
            if name is None:
                return
            (self.folder / name).unlink(missing_ok=True)
            self._index.removed(name)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This process alone, among those sharing the folder, changes it and its index, which it first brings up
        to date."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._index.sync()
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _fetching(self, path: Path) -> Iterator[None]:
        """One thread of this process at a time fetches `path`."""
        with self._fetches_lock:
            lock = self._fetches.setdefault(path, threading.Lock())
        with lock:
            yield
        with self._fetches_lock:
            self._fetches.pop(path, None)


class CacheIndex:
    """A shard cache's copies, their sizes and when each was last known read, as this process knows them.

    The folder's journal `.index` holds a line per copy added (`["+", name, bytes, mtime_ns]`) or removed
    (`["-", name]`); each process reads what the others appended since it last looked, then appends its own
    changes, both under the cache's file lock only, so it sees every change before making its own. A read marks
    the copy's mtime, not the journal: the oldest entry is checked against its file before it goes, and put back
    with the newer time where it was read since. The first process to find no journal (a new folder, or one of
    an older clipcache) or one that does not parse writes it from a walk of the folder; a journal grown SLACK
    lines past its entries is written anew, and the others, finding another file there, read it from the start.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / INDEX
        self.total = 0
        self._entries: dict[str, tuple[int, int]] = {}  # name -> (bytes, mtime_ns as last known)
        self._ages: list[tuple[int, str]] = []  # a heap of (mtime_ns, name); items an entry outdated are skipped
        self._fd: int | None = None
        self._read_to = 0
        self._lines = 0

    def sync(self) -> None:
        """Take in what other processes changed since this one last read the journal."""
        if self._fd is not None and os.fstat(self._fd).st_nlink == 0:  # written anew by another: read it whole
            self._close()
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            except FileNotFoundError:
                self._rewrite(_walked(self.folder))
                return
        data = _read_from(self._fd, self._read_to)
        if data and not self._take(data):
            self._rewrite(_walked(self.folder))

    def added(self, name: str, size: int, mtime_ns: int) -> None:
        self._append([["+", name, size, mtime_ns]])

    def removed(self, name: str) -> None:
        self._append([["-", name]])

    def oldest(self, keep: str) -> str | None:
        """The least recently read entry other than `keep`, checked against its file; None where `keep` is all
        there is. Entries whose file is gone are dropped on the way."""
        kept = []
        try:
            while self._ages:
                mtime, name = heapq.heappop(self._ages)
                entry = self._entries.get(name)
                if entry is None or entry[1] != mtime:
                    continue
                if name == keep:
                    kept.append((mtime, name))
                    continue
                try:
                    now = os.stat(self.folder / name).st_mtime_ns
                except FileNotFoundError:
                    self.removed(name)
                    continue
                if now == mtime:
                    return name
                self._entries[name] = (entry[0], now)
                heapq.heappush(self._ages, (now, name))
            return None
        finally:
            for item in kept:
                heapq.heappush(self._ages, item)

    def _append(self, records: list[list]) -> None:
        data = "".join(json.dumps(record) + "\n" for record in records).encode()
        os.write(self._fd, data)
        self._take(data)
        if self._lines > len(self._entries) + SLACK:
            self._rewrite(dict(self._entries))
        elif len(self._ages) > len(self._entries) + SLACK:
            self._ages = [(mtime, name) for name, (_, mtime) in self._entries.items()]
            heapq.heapify(self._ages)

    def _take(self, data: bytes) -> bool:
        """Apply the journal's lines `data`, read at `_read_to`; False where they do not parse."""
        if not data.endswith(b"\n"):
            return False
        try:
            for line in data.splitlines():
                self._apply(json.loads(line))
        except (ValueError, TypeError, IndexError):
            return False
        self._read_to += len(data)
        return True

    def _apply(self, record: list) -> None:
        self._lines += 1
        name = record[1]
        if name in self._entries:
            self.total -= self._entries.pop(name)[0]
        if record[0] == "+":
            size, mtime = int(record[2]), int(record[3])
            self._entries[name] = (size, mtime)
            self.total += size
            heapq.heappush(self._ages, (mtime, name))

    def _rewrite(self, entries: dict[str, tuple[int, int]]) -> None:
        """The journal written anew as `entries`, and read back as this process's index."""
        lines = "".join(json.dumps(["+", name, size, mtime]) + "\n" for name, (size, mtime) in entries.items())
        partial = self.path.with_name(f"{INDEX}.{uuid.uuid4().hex}.partial")
        try:
            partial.write_text(lines)
            os.replace(partial, self.path)
        finally:
            partial.unlink(missing_ok=True)
        self._close()
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
        if not self._take(_read_from(self._fd, 0)) and entries:
            raise OSError(f"{self.path}: the index just written does not read back")

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._read_to = self._lines = self.total = 0
        self._entries, self._ages = {}, []


def _copies(folder: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every copy under `folder` by its name there, with its stat (not the lock, the index or partial files)."""
    for parent, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".partial") or name in (LOCK, INDEX):
                continue
            path = Path(parent) / name
            with contextlib.suppress(FileNotFoundError):
                yield path.relative_to(folder).as_posix(), path.stat()


def _walked(folder: Path) -> dict[str, tuple[int, int]]:
    return {name: (stat.st_size, stat.st_mtime_ns) for name, stat in _copies(folder)}


def _read_from(fd: int, offset: int) -> bytes:
    chunks = []
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)
