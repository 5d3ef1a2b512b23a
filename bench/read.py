"""The `read` stage: random reads of one clip from a Zarr and an HDF5 store beside `os.pread` of the same bytes,
and batches through the trainer's feed with and without its reader threads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from bench.context import BenchConfig, Context
from bench.feed import FEED_BATCH, TRAINER_THREADS, feed_rate
from bench.stores import replicate
from bench.timing import MB, Rate, Row
from cache import open_store
from cache.dataset import ClipDataset
from train.data import BatchFeed


def read(config: BenchConfig, context: Context) -> list[Row]:
    rows = []
    for suffix in ("zarr", "h5"):
        path = _store_copy(config, suffix)
        with open_store(path) as store:
            # Enough batches that a pass through the feed is not mostly its first batch's wait.
            picks = np.random.default_rng(0).choice(store.rows(), 256 if config.quick else 1024)
            clip_mb = int(np.prod(store.spec.clip_shape())) / MB
            places = store.locate(picks)

            def one_by_one(store=store, picks=picks) -> float:
                for row in picks:
                    store.read([row])
                return len(picks)

            ours = Rate.measure(one_by_one, config.repeat, "clips/s")
            limit = _pread_rate(places, int(clip_mb * MB), config.repeat) if places else None
            context.rates[f"read/{suffix}"] = ours
            rows.append(
                Row(
                    "store random read",
                    f"{suffix}, 1 process, one clip per read",
                    ours,
                    limit=limit,
                    limit_name="os.pread of the same bytes",
                    note=f"{ours.median * clip_mb:,.0f} MB/s",
                )
            )
            size = store.spec.size
        dataset = ClipDataset(path)
        order = np.searchsorted(dataset.rows, picks)
        for threads in sorted({0, TRAINER_THREADS}):
            rate = feed_rate(BatchFeed(dataset, FEED_BATCH, order, threads=threads), config.repeat)
            rows.append(
                Row(
                    "store random read",
                    f"{suffix}, trainer's feed, {threads} reader threads, batch {FEED_BATCH} at {size}px",
                    rate,
                    limit=limit,
                    limit_name="os.pread of the same bytes, 1 process",
                    note=f"{rate.median * clip_mb:,.0f} MB/s",
                )
            )
    return rows


def _store_copy(config: BenchConfig, suffix: str) -> Path:
    """The bench store in the format asked: the same rows and bytes."""
    if config.cache.suffix == f".{suffix}":
        return config.cache
    path = config.work / f"read.{suffix}"
    if not path.exists():
        with open_store(config.cache) as store:
            rows = len(store)
        replicate(config.cache, path, rows)
    return path


def _pread_rate(places: list[tuple[Path, int]], nbytes: int, repeat: int) -> Rate:
    buffer = np.empty(nbytes, np.uint8)

    def work() -> float:
        fds: dict[Path, int] = {}
        try:
            for file, offset in places:
                if file not in fds:
                    fds[file] = os.open(file, os.O_RDONLY)
                os.preadv(fds[file], [buffer], offset)
        finally:
            for fd in fds.values():
                os.close(fd)
        return len(places)

    return Rate.measure(work, repeat, "clips/s")
