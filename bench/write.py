"""The `write` stage: writing every shard of a new Zarr and HDF5 store beside plain file writes of the same
bytes."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from bench.context import BenchConfig, Context
from bench.stores import read_clips, remove, shard_of
from bench.timing import MB, Rate, Row
from cache.schema import StoreSpec
from cache.writer import StoreWriter, create_store


def write(config: BenchConfig, context: Context) -> list[Row]:
    clips = read_clips(config, 16 if config.quick else 64)
    per_shard = 8
    total = clips.nbytes / MB
    spec = StoreSpec(frames=clips.shape[1], size=clips.shape[2], clips_per_shard=per_shard)
    runs = 1 + config.repeat  # a warm-up and the repeats, each writing where nothing was written before
    targets = {"plain": [_fresh(config.work / f"plain-{i}") for i in range(runs)]}
    created = {}
    for suffix in ("zarr", "h5"):
        targets[suffix] = [config.work / f"write-{i}.{suffix}" for i in range(runs)]
        started = time.perf_counter()
        for path in targets[suffix]:
            remove(path)
            create_store(path, _table(len(clips)), spec)
        created[suffix] = (time.perf_counter() - started) / runs

    def plain(folder: Path) -> None:
        for start in range(0, len(clips), per_shard):
            with open(folder / str(start), "wb") as f:
                f.write(clips[start : start + per_shard])  # the array's own buffer, as the stores write it

    def store(path: Path) -> None:
        with StoreWriter(path) as writer:
            for start in range(0, len(clips), per_shard):
                writer.write_shard(shard_of(start, clips[start : start + per_shard]))

    rates = _interleaved({"plain": plain, "zarr": store, "h5": store}, targets, total, "MB/s")
    for paths in targets.values():
        for path in paths:
            remove(path)
    rows = []
    for suffix in ("zarr", "h5"):
        context.rates[f"write/{suffix}"] = rates[suffix]
        note = f"every shard of a new store, created beforehand ({created[suffix] * 1000:.0f} ms each), as a build does"
        measures = f"{suffix}, {len(clips)} clips"
        rows.append(
            Row("store write", measures, rates[suffix], limit=rates["plain"], limit_name="plain file writes", note=note)
        )
    return rows + [_creation(config, suffix, spec) for suffix in ("zarr", "h5")]


CELEB_DF_ROWS = 6529  # Celeb-DF v2's videos: 590 real, 5,639 fake, 300 YouTube-real


def _creation(config: BenchConfig, suffix: str, spec: StoreSpec) -> Row:
    """Creating the store of a Celeb-DF-sized build, all rows pending: what a build does before it decodes."""
    path, table = config.work / f"create.{suffix}", _table(CELEB_DF_ROWS)

    def create() -> float:
        remove(path)
        create_store(path, table, spec)
        return 1

    rate = Rate.measure(create, config.repeat, "stores/s")
    files = sum(1 for file in path.rglob("*") if file.is_file()) if path.is_dir() else 1
    remove(path)
    measures = f"create a store, {suffix}, {CELEB_DF_ROWS:,} rows in shards of {spec.clips_per_shard}"
    note = f"{1 / rate.median:.2f} s each; {files:,} file{'s' * (files != 1)} written"
    return Row("store creation", measures, rate, note=note)


def _interleaved(
    works: dict[str, Callable[[Path], None]], targets: dict[str, list[Path]], items: float, unit: str
) -> dict[str, Rate]:
    """Time each `works[name](target)` in turn within every round, a warm-up round first, so that all of them
    meet the same state of the page cache and its writeback: timed one after another, the first to run writes
    into an idle cache and those after it are throttled by its dirty pages."""
    rates: dict[str, list[float]] = {name: [] for name in works}
    for round_ in range(len(next(iter(targets.values())))):
        for name, work in works.items():
            started = time.perf_counter()
            work(targets[name][round_])
            if round_:
                rates[name].append(items / (time.perf_counter() - started))
    return {name: Rate(statistics.median(r), min(r), max(r), unit) for name, r in rates.items()}


def _table(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"path": [f"v{i}.mp4" for i in range(n)], "label": [i % 2 for i in range(n)], "split": 0, "group": "g"}
    )


def _fresh(folder: Path) -> Path:
    remove(folder)
    folder.mkdir(parents=True)
    return folder
