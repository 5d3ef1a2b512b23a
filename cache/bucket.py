"""Stores in a bucket (`s3://BUCKET/PREFIX/NAME.zarr`): the same Zarr v3 store, its shards whole objects.

A store's files are written once and whole, which is what object storage does well: a writer PUTs each
finished shard's bytes as one object (metadata and `status` last), and a reader GETs whole shards into a local
shard cache (`cache.shard_cache`), then reads them with the same `preadv` code as a local store. Zarr itself
reaches the metadata and the small per-row arrays through obstore, as zarr-python's `ObjectStore`.

Credentials and endpoints come as the AWS tools take them: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` (MinIO, R2, a local server) or `AWS_PROFILE` (read by
boto3). Requests that fail for the network are retried a few times; after that a shard's read or write raises
`BucketUnreachable`, an OSError that `ingest build-cache` and `train/run.py` end on as they do on a full disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import obstore
import zarr
from obstore.exceptions import BaseError
from obstore.store import S3Store

from cache.schema import StoreError
from cache.shard_cache import ShardCache, ShardCacheConfig

SCHEME = "s3://"
RETRIES = 3
FAILURES = (BaseError, OSError)  # obstore raises its own errors, and the builtin ones (FileNotFoundError) for some


class BucketUnreachable(OSError):
    """The object store stopped answering part way (after retries): what is finished is kept."""


def is_remote(location: str | Path) -> bool:
    return str(location).startswith(SCHEME)


def store_location(text: str | Path) -> str | Path:
    """A store's location as given: an `s3://` URL stays a string (a Path would fold its `//`), else a Path."""
    return str(text) if is_remote(text) else Path(text)


class Bucket:
    """One store's objects: `s3://BUCKET/KEY` and everything under it, with the node's shard cache for reads
    (`cache`; the environment's default without one). `guard`, where given, is called before every write and
    raises where this process may write the store no more (its lock was taken over: `BucketLock.check`)."""

    def __init__(self, url: str, cache: ShardCacheConfig | None = None, guard: Callable[[], None] | None = None):
        bucket, _, key = url.removeprefix(SCHEME).partition("/")
        if not bucket or not key.strip("/"):
            raise StoreError(f"{url}: a store in a bucket is s3://BUCKET/PATH/NAME.zarr")
        if not key.rstrip("/").endswith(".zarr"):
            raise StoreError(f"{url}: a store in a bucket is a Zarr store (NAME.zarr); HDF5 needs a filesystem")
        self.url, self.name, self.key = url.rstrip("/"), bucket, key.strip("/")
        self.endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.cache = ShardCache.of(cache or ShardCacheConfig.from_environment())
        self.store = S3Store(bucket, prefix=self.key, **connection_options(self.endpoint))
        self.guard = guard or (lambda: None)

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
            raise StoreError(f"{self.url}: {cause(error, self.endpoint)}") from None
        return True

    def path(self, key: str) -> Path:
        """A local copy of object `key` (fetched whole into the shard cache where it is not there yet);
        FileNotFoundError where the object does not exist."""
        return self.cache.fetch(self.cache.folder / self.name / self.key / key, lambda: self._get(key))

    def _get(self, key: str) -> bytes:
        try:
            return obstore.get(self.store, key).bytes()
        except FileNotFoundError:
            raise
        except FAILURES as error:
            raise self._unreachable(error) from None

    def put(self, key: str, pieces: list) -> None:
        """Object `key` made of `pieces`, in one PUT: there, whole, or not changed at all."""
        self.guard()
        try:
            obstore.put(self.store, key, b"".join(pieces))
        except FAILURES as error:
            raise self._unreachable(error) from None

    def delete(self, key: str) -> None:
        self.guard()
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
        return BucketUnreachable(f"{self.url}: {cause(error, self.endpoint)}")


@contextlib.contextmanager
def staging(url: str) -> Iterator[Path]:
    """A local folder in which to make what is then uploaded to `url`, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="clipcache-"))
    try:
        yield folder / Path(url).name
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def connection_options(endpoint: str | None) -> dict:
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


def cause(error: Exception, endpoint: str | None) -> str:
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
