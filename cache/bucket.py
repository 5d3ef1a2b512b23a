"""Stores in a bucket (`s3://BUCKET/PREFIX/NAME.zarr`): the same Zarr v3 store, its shards whole objects.

A store's files are written once and whole, which is what object storage does well: a writer PUTs each
finished shard's bytes as one object (metadata and `status` last), and a reader GETs whole shards into a local
shard cache, then reads them with the same `preadv` code as a local store. Zarr itself reaches the metadata and
the small per-row arrays through obstore, as zarr-python's `ObjectStore`.

Credentials and endpoints come as the AWS tools take them: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` (MinIO, R2, a local server) or `AWS_PROFILE` (read by
boto3). Requests that fail for the network are retried a few times; after that a shard's read or write raises
`BucketUnreachable`, an OSError that `ingest build-cache` and `train/run.py` end on as they do on a full disk.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import obstore
import zarr
from obstore.exceptions import AlreadyExistsError, BaseError, PreconditionError
from obstore.store import S3Store

from cache.lock import LockOwner, StoreLocked
from cache.schema import StoreError

SCHEME = "s3://"
CACHE_DIR_ENV = "CLIPCACHE_CACHE_DIR"
CACHE_LIMIT_ENV = "CLIPCACHE_CACHE_LIMIT"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "clipcache" / "shards"
DEFAULT_CACHE_LIMIT = 50 * 2**30
RETRIES = 3
FAILURES = (BaseError, OSError)  # obstore raises its own errors, and the builtin ones (FileNotFoundError) for some
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class BucketUnreachable(OSError):
    """The object store stopped answering part way (after retries): what is finished is kept."""


def is_remote(location: str | Path) -> bool:
    return str(location).startswith(SCHEME)


def store_location(text: str | Path) -> str | Path:
    """A store's location as given: an `s3://` URL stays a string (a Path would fold its `//`), else a Path."""
    return str(text) if is_remote(text) else Path(text)


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


class Bucket:
    """One store's objects: `s3://BUCKET/KEY` and everything under it, with the node's shard cache for reads."""

    def __init__(self, url: str, cache: ShardCache | None = None):
        bucket, _, key = url.removeprefix(SCHEME).partition("/")
        if not bucket or not key.strip("/"):
            raise StoreError(f"{url}: a store in a bucket is s3://BUCKET/PATH/NAME.zarr")
        if not key.rstrip("/").endswith(".zarr"):
            raise StoreError(f"{url}: a store in a bucket is a Zarr store (NAME.zarr); HDF5 needs a filesystem")
        self.url, self.name, self.key = url.rstrip("/"), bucket, key.strip("/")
        self.endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.cache = cache or ShardCache.from_env()
        self.store = S3Store(bucket, prefix=self.key, **_connection(self.endpoint))

    def zarr_store(self, writable: bool) -> zarr.storage.ObjectStore:
        return zarr.storage.ObjectStore(self.store, read_only=not writable)

    def check(self) -> bool:
        """Whether the store exists; StoreError naming the cause where the bucket cannot be read at all."""
        try:
            obstore.get(self.store, "zarr.json").bytes()  # a GET, not a HEAD: a HEAD's 404 has no body saying which
        except FileNotFoundError as error:
            if "NoSuchBucket" in str(error):
                raise StoreError(f"{self.url}: no such bucket {self.name!r}") from None
            return False
        except FAILURES as error:
            raise StoreError(f"{self.url}: {_cause(error, self.endpoint)}") from None
        return True

    def path(self, key: str) -> Path:
        """A local copy of object `key` (fetched whole into the shard cache where it is not there yet);
        FileNotFoundError where the object does not exist."""
        local = self.cache.folder / self.name / self.key / key
        if self.cache.cached(local):
            return local
        with _fetching(local):  # reader threads wanting one shard at once: one GET, the others wait for it
            if self.cache.cached(local):
                return local
            try:
                data = obstore.get(self.store, key).bytes()
            except FileNotFoundError:
                raise
            except FAILURES as error:
                raise self._unreachable(error) from None
            self.cache.add(local, data)
        return local

    def put(self, key: str, pieces: list) -> None:
        """Object `key` made of `pieces`, in one PUT: there, whole, or not changed at all."""
        try:
            obstore.put(self.store, key, b"".join(pieces))
        except FAILURES as error:
            raise self._unreachable(error) from None

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self.store, key)
        except FileNotFoundError:
            pass
        except FAILURES as error:
            raise self._unreachable(error) from None

    def size(self) -> int:
        """Bytes of every object of the store."""
        try:
            return sum(meta["size"] for page in obstore.list(self.store) for meta in page)
        except FAILURES as error:
            raise self._unreachable(error) from None

    def upload(self, folder: Path) -> None:
        """Every file under `folder` as an object, the group's own `zarr.json` last: a store made locally appears
        in the bucket whole (a store without its root metadata is no store)."""
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        for key in sorted(files, key=lambda key: key == "zarr.json"):
            self.put(key, [(folder / key).read_bytes()])

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Zarr's own requests (metadata, small arrays) as this store's: an obstore error raised through zarr
        ends as `BucketUnreachable`, as the store's own GETs and PUTs do."""
        try:
            yield
        except BaseError as error:
            raise self._unreachable(error) from None

    def _unreachable(self, error: Exception) -> BucketUnreachable:
        return BucketUnreachable(f"{self.url}: {_cause(error, self.endpoint)}")


_FETCHES: dict[Path, threading.Lock] = {}
_FETCHES_LOCK = threading.Lock()


@contextlib.contextmanager
def _fetching(local: Path) -> Iterator[None]:
    """One thread of this process at a time fetches `local`."""
    with _FETCHES_LOCK:
        lock = _FETCHES.setdefault(local, threading.Lock())
    with lock:
        yield
    with _FETCHES_LOCK:
        _FETCHES.pop(local, None)


@contextlib.contextmanager
def staging(url: str) -> Iterator[Path]:
    """A local folder in which to make what is then uploaded to `url`, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="clipcache-"))
    try:
        yield folder / Path(url).name
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _connection(endpoint: str | None) -> dict:
    """S3Store's options: the environment's endpoint (plain http allowed for a local server), a profile's
    credentials through boto3, and a few quick retries."""
    options: dict = {
        "retry_config": {
            "max_retries": RETRIES,
            "retry_timeout": timedelta(seconds=60),
            "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=2), "base": 2},
        }
    }
    if endpoint:
        options["endpoint"] = endpoint
        options["client_options"] = {"allow_http": endpoint.startswith("http://")}
    if os.environ.get("AWS_PROFILE") and not os.environ.get("AWS_ACCESS_KEY_ID"):
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider

        session = boto3.Session()
        options["credential_provider"] = Boto3CredentialProvider(session)
        if session.region_name and not os.environ.get("AWS_REGION"):
            options["region"] = session.region_name
    return options


def _cause(error: Exception, endpoint: str | None) -> str:
    """The one thing a person needs from an obstore error: which service answer, or that none came."""
    text = str(error)
    for code in ("NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken"):
        if code in text:
            return {
                "NoSuchBucket": "no such bucket",
                "InvalidAccessKeyId": "the bucket does not know AWS_ACCESS_KEY_ID (wrong credentials)",
                "SignatureDoesNotMatch": "AWS_SECRET_ACCESS_KEY does not match the key id (wrong credentials)",
                "AccessDenied": "access denied (the credentials may not read or write this bucket)",
                "ExpiredToken": "the credentials have expired",
            }[code]
    if "error sending request" in text or "HTTP error" in text or "timed out" in text.lower():
        return f"cannot reach {endpoint or 'the S3 endpoint'} (after {RETRIES} retries)"
    return text.splitlines()[0][:200]


class BucketLock:
    """`STORE.lock` beside a store in a bucket, as `cache.lock.StoreLock` is beside a local one.

    An object store has no lock that dies with its holder, so the lock is an object made with a conditional PUT
    (`If-None-Match: *`: of two builds creating it at once, exactly one succeeds) naming its owner, which rewrites it
    every HEARTBEAT seconds while it builds. A lock is taken over, with a PUT conditional on its ETag (of two
    takers one wins), where its owner is a process of this host that no longer runs, or where it went STALE
    seconds without a heartbeat (a build killed on another machine).
    """

    HEARTBEAT = 30.0
    STALE = 120.0

    def __init__(self, url: str):
        self.bucket = Bucket(url)
        self.path = f"{self.bucket.url}.lock"
        self.taken_over: LockOwner | None = None
        self._root = S3Store(self.bucket.name, **_connection(self.bucket.endpoint))
        self._key = f"{self.bucket.key}.lock"
        self._e_tag: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock or raise StoreLocked naming its holder; never waits."""
        mine = json.dumps(asdict(LockOwner.me())).encode()
        try:
            try:
                self._e_tag = obstore.put(self._root, self._key, mine, mode="create")["e_tag"]
            except AlreadyExistsError:
                self._take_over(mine)
        except FAILURES as error:
            raise StoreError(f"{self.bucket.url}: {_cause(error, self.bucket.endpoint)}") from None
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

    def _heartbeat(self, mine: bytes) -> None:
        while not self._stop.wait(self.HEARTBEAT):
            with contextlib.suppress(BaseError):
                self._e_tag = obstore.put(self._root, self._key, mine, mode={"e_tag": self._e_tag})["e_tag"]

    def release(self) -> None:
        if self._beat is None:
            return
        self._stop.set()
        self._beat.join()
        self._beat = None
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
