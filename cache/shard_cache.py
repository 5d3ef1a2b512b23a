"""The node's local shard cache, where shards of stores in a bucket are read from, and its command-line options.

Settings reach DataLoader workers and other processes started later through `CACHE_DIR_ENV` and
`CACHE_LIMIT_ENV` (`configure_cache`).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cache.schema import StoreError

CACHE_DIR_ENV = "CLIPCACHE_CACHE_DIR"
CACHE_LIMIT_ENV = "CLIPCACHE_CACHE_LIMIT"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "clipcache" / "shards"
DEFAULT_CACHE_LIMIT = 50 * 2**30
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


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


def configure_cache(folder: str | Path | None = None, limit: str | None = None) -> None:
    """Set the shard cache every store opened from now on uses, in this process and those it starts."""
    if folder is not None:
        os.environ[CACHE_DIR_ENV] = str(Path(folder).expanduser().resolve())
    if limit is not None:
        try:
            parse_size(limit)
        except ValueError as error:
            raise StoreError(f"--cache-limit: {error}") from None
        os.environ[CACHE_LIMIT_ENV] = limit


@dataclass(frozen=True)
class ShardCache:
    """A node's local copies of shard objects, under `folder/BUCKET/KEY`; at most `limit` bytes, the least recently
    read out first. Several processes share it: a copy is renamed into place whole, and one evicts at a time
    (a file lock); a reader touches a copy each time it reads it, so what a process is reading is the newest."""

    folder: Path
    limit: int

    @classmethod
    def from_env(cls) -> ShardCache:
        folder = Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)
        limit = os.environ.get(CACHE_LIMIT_ENV)
        return cls(folder, parse_size(limit) if limit else DEFAULT_CACHE_LIMIT)

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
        try:
            with open(partial, "wb") as f:
                f.write(memoryview(data))
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        self.evict(keep=path)

    def evict(self, keep: Path | None = None) -> None:
        with self._locked():
            files = [(stat.st_mtime_ns, stat.st_size, file) for file, stat in self._files()]
            total = sum(size for _, size, _ in files)
            for _, size, file in sorted(files, key=lambda entry: entry[0]):
                if total <= self.limit:
                    break
                if file != keep:
                    file.unlink(missing_ok=True)
                    total -= size

    def size(self) -> int:
        return sum(stat.st_size for _, stat in self._files())

    def _files(self) -> Iterator[tuple[Path, os.stat_result]]:
        for folder, _, names in os.walk(self.folder):
            for name in names:
                if name.endswith(".partial") or name == ".lock":
                    continue
                path = Path(folder) / name
                with contextlib.suppress(FileNotFoundError):
                    yield path, path.stat()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
