"""The `shard-cache` stage: what the node's shard cache costs a read of a store in a bucket once it holds many
shards (laid out as the bucket's keys, a folder chain each): a shard read again, and a fetched shard put into the
full cache, one older shard out, beside writing, renaming and removing the same files with no bookkeeping.

Shards are small here, so the rows measure the cache's bookkeeping, not the copying of a shard's bytes.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from bench.context import BenchConfig, Context
from bench.timing import Rate, Row
from cache.bucket import Bucket
from cache.shard_cache import ShardCache, ShardCacheConfig
from cache.shards import replace_file

STAGE = "shard cache"
SHARDS = 20_000
SHARD_BYTES = 4096
ADDS = 10  # shards put into the cache in a timed repeat


def shard_cache(config: BenchConfig, context: Context) -> list[Row]:
    count = SHARDS // 10 if config.quick else SHARDS
    folder = config.work / "shard-cache"
    keys = [_key(i) for i in range(count)]
    for key in keys:
        replace_file(folder / "bench" / "s.zarr" / key, [bytes(SHARD_BYTES)])
    bucket = Bucket("s3://bench/s.zarr", ShardCacheConfig(folder, count * SHARD_BYTES))
    cache = bucket.cache
    hits = Rate.measure(lambda: _read_again(bucket, keys), config.repeat, "shards/s")
    numbers = itertools.count(count)
    added = Rate.measure(lambda: _add(cache, folder, numbers), config.repeat, "shards/s")
    bare = Rate.measure(lambda: _write_rename_remove(config.work / "bare-files", numbers), config.repeat, "shards/s")
    what = f"a cache of {count:,} shards of {SHARD_BYTES // 1024} KiB"
    return [
        Row(
            STAGE,
            f"a fetched shard put into the full cache, the least recently read out; {what}",
            added,
            limit=bare,
            limit_name="writing, renaming and removing the same files, no bookkeeping",
        ),
        Row(STAGE, f"a cached shard read again (a fetch that finds it); {what}", hits),
    ]


def _key(number: int) -> str:
    return f"clips/c/{number}/0/0/0/0"


def _add(cache: ShardCache, folder: Path, numbers: itertools.count) -> float:
    for number in itertools.islice(numbers, ADDS):
        cache.add(folder / "bench" / "s.zarr" / _key(number), bytes(SHARD_BYTES))
    return ADDS


def _write_rename_remove(folder: Path, numbers: itertools.count) -> float:
    for number in itertools.islice(numbers, ADDS):
        replace_file(folder / _key(number), [bytes(SHARD_BYTES)])
        (folder / _key(number - 1)).unlink(missing_ok=True)
    return ADDS


def _read_again(bucket: Bucket, keys: list[str]) -> float:
    for key in keys:
        bucket.path(key)
    return len(keys)
