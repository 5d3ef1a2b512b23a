"""The `remote` stage: an epoch of a store in a bucket, read whole shard by shard into the local shard cache, beside
reading the same shard files from local disk; then the second epoch, from the cache, beside the local store.

The bucket is moto's S3 server on 127.0.0.1 in this process (`moto[server]`, the dev extra): the rows measure
what the client and the cache cost, not a cloud's network, whose bandwidth decides the first epoch there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.context import BenchConfig, Context
from bench.read import _store_copy
from bench.timing import MB, Rate, Row, skipped
from cache.bucket import Bucket
from cache.shard_cache import ShardCache
from cache.store import ClipStore, open_store

if TYPE_CHECKING:
    from moto.server import ThreadedMotoServer

STAGE = "store in a bucket"
NOTE = "moto's S3 server on 127.0.0.1: the client's and the cache's cost, not a cloud's network"


def remote(config: BenchConfig, context: Context) -> list[Row]:
    try:
        from moto.server import ThreadedMotoServer  # noqa: F401
    except ImportError:
        return [skipped(STAGE, "an epoch from a bucket", "moto[server] is not installed (pip install -e '.[dev]')")]
    local = _store_copy(config, "zarr")
    with local_s3_server() as (_, endpoint):
        url = _upload(local, endpoint)
        with open_store(url) as remote_store, open_store(local) as local_store:
            rows = local_store.rows()
            shards = _shard_files(local_store)
            nbytes = sum(file.stat().st_size for file in shards)
            caches = config.work / "remote-caches"
            cold = Rate.measure(lambda: _cold_epoch(remote_store, rows, caches / "cold", nbytes), config.repeat, "MB/s")
            disk = Rate.measure(lambda: _read_files(shards), config.repeat, "MB/s")
            clip_mb = int(np.prod(local_store.spec.clip_shape())) / MB
            remote_store.files.cache = ShardCache(caches / "warm", 2**40)
            remote_store.read(rows)  # the first epoch fills the cache
            warm = Rate.measure(lambda: _epoch(remote_store, rows), config.repeat, "clips/s")
            here = Rate.measure(lambda: _epoch(local_store, rows), config.repeat, "clips/s")
        shutil.rmtree(caches, ignore_errors=True)
    what = f"{len(rows)} clips in {len(shards)} shards, {nbytes / MB:.0f} MiB"
    return [
        Row(
            STAGE,
            f"first epoch: every shard GET whole into an empty shard cache, then read; {what}",
            cold,
            limit=disk,
            limit_name="reading the same shard files from local disk",
            note=NOTE,
        ),
        Row(
            STAGE,
            f"second epoch: the same clips from the shard cache, store order; {what}",
            warm,
            limit=here,
            limit_name="the same clips from the local store",
            note=f"{warm.median * clip_mb:,.0f} MB/s; no request reaches the server",
        ),
    ]


def _cold_epoch(store: ClipStore, rows: np.ndarray, cache: Path, nbytes: int) -> float:
    """One epoch into an empty shard cache; MB of shards fetched."""
    shutil.rmtree(cache, ignore_errors=True)
    store.files.cache = ShardCache(cache, 2**40)
    store.read(rows)
    return nbytes / MB


def _epoch(store: ClipStore, rows: np.ndarray) -> float:
    store.read(rows)
    return len(rows)


def _read_files(files: list[Path]) -> float:
    total = 0
    for file in files:
        total += len(file.read_bytes())
    return total / MB


def _shard_files(store: ClipStore) -> list[Path]:
    return [path for path in sorted((store.location / "clips" / "c").rglob("*")) if path.is_file()]


def _upload(local: Path, endpoint: str) -> str:
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    url = f"s3://bench/{local.name}"
    Bucket(url).upload(local)
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_s3_server(port: int | None = None) -> Iterator[tuple[ThreadedMotoServer, str]]:
    """moto's S3 server on a free port of 127.0.0.1 and its endpoint, with the AWS_* variables pointing every client
    at it (in this process and those it starts) for the block. The tests' server too. moto keeps the buckets in this
    process's memory: a server started again on the same `port` serves what the last one held."""
    from moto.server import ThreadedMotoServer

    port = port or free_port()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request on the bench's stderr
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    saved = {name: os.environ.get(name) for name in [*env, "AWS_ENDPOINT_URL"]}
    os.environ.update({**env, "AWS_ENDPOINT_URL": endpoint})
    try:
        yield server, endpoint
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()
