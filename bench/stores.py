"""The bench's stores: the store of many rows replicated from the few videos decoded, which the stages read,
and its clips read back as the pixels the write and h2d stages move."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from bench.context import BenchConfig
from cache import open_store
from cache.writer import ShardResult, StoreWriter, create_store


def read_clips(config: BenchConfig, count: int) -> np.ndarray:
    """`count` clips of the bench's store, its rows cycled: real pixels, however few rows it has."""
    with open_store(config.cache) as store:
        rows = store.rows()
        return store.read(np.resize(rows, count))


def shard_of(start: int, clips: np.ndarray) -> ShardResult:
    """`clips` as a build hands them to the store's writer, with a plain probe: the writer's input, no decoding."""
    k, t = clips.shape[:2]
    probe = {
        "frames": np.full(k, t, np.int32),
        "fps": np.zeros(k, np.float32),
        "width": np.zeros(k, np.int32),
        "height": np.zeros(k, np.int32),
        "codec": np.full(k, "h264"),
    }
    indices = np.tile(np.arange(t, dtype=np.int32), (k, 1))
    return ShardResult(start, clips, indices, np.ones(k, np.int8), [""] * k, probe)


def remove(path: Path) -> None:
    """A store (a Zarr folder, an HDF5 file) or a folder gone, so that the next build or write starts afresh."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def replicate(source: Path, dest: Path, rows: int, per_shard: int = 8) -> Path:
    """A store of `rows` training clips cycling through `source`'s ok clips: enough rows for random reads and
    epochs to be measured, from however few videos; each row keeps its video's path for the seed's pipeline."""
    with open_store(source) as store:
        picks = np.resize(store.rows(), rows)
        paths = store.path[picks]
        spec = replace(store.spec, clips_per_shard=per_shard)
        table = pd.DataFrame({"path": paths, "label": store.label[picks], "split": 0, "group": paths})
        create_store(dest, table, spec)
        with StoreWriter(dest) as writer:
            for start in range(0, rows, per_shard):
                block = picks[start : start + per_shard]
                shard = shard_of(start, store.read(block))
                writer.write_shard(replace(shard, frame_index=store.frame_index[block]))
    return dest
