"""The `ingest` stage: `build-cache` end to end, how it scales over workers and cores, and with each GPU decoder;
its builds are shared with the faces stage."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from bench.context import BenchConfig, Context
from bench.decode import gpu_in_flights
from bench.stores import remove
from bench.timing import MB, Rate, Row, taking_turns
from cache import open_store
from ingest.build import BuildConfig, build_cache
from ingest.decoders import GPU_DECODERS, available, decoder_threads
from ingest.demux import probe_video
from ingest.layouts import find_videos
from ingest.pool import threads_per_worker

INGEST_NOTE = "includes discovery, process start-up and the store's creation"


def ingest(config: BenchConfig, context: Context) -> list[Row]:
    """`build-cache` end to end on the bench's videos and on the demo set, with the scaling ratio of its workers,
    then with each GPU decoder."""
    # A real set has thousands of videos, over which a build's fixed costs (discovery, forks, store creation,
    # summary: about 0.2 s) vanish; six would be mostly fixed costs, so the build reads four links to each (24
    # videos: 8 s a build on one core, of which the fixed costs are 3%).
    rows = _ingest_scaling(config, linked_root(config, 4 * len(config.videos)), _ingest_limit(config, context))
    if config.demo_set is not None:
        rows += _ingest_scaling(config, config.demo_set, None)
    return rows + gpu_ingest(config)


def _ingest_scaling(config: BenchConfig, root: Path, one_process: Rate | None) -> list[Row]:
    """One worker held to one core, one worker free to use every core (decoder threads where its frames are large
    enough for them to pay), and a worker per core.

    How `build-cache` scales with cores is the last's rate over the one-core rate times the workers: a single
    worker's decoder threads already use more than one core, so its own rate is no measure of one core.
    The builds take turns, round after round, so that other work on the machine disturbs each alike.
    """
    cores = len(os.sched_getaffinity(0))
    builds: dict[str, Callable[[], float]] = {"one core": lambda: _one_core(lambda: build_store(config, root, 1))}
    if cores > 1:
        builds["one worker"] = lambda: build_store(config, root, 1)
    if config.workers > 1:
        builds["workers"] = lambda: build_store(config, root, config.workers)
    rates = taking_turns(builds, config.rounds, "videos/s")
    videos = videos_of(root)
    rows = [
        Row(
            "ingest end to end",
            f"build-cache, 1 worker on 1 core, pyav, {videos}",
            rates["one core"],
            limit=one_process,
            limit_name="sum of decode, resize and write, 1 process" if one_process else "",
            note=f"this process pinned to one CPU; {INGEST_NOTE}",
        )
    ]
    if "one worker" in rates:
        rows.append(
            Row(
                "ingest end to end",
                f"build-cache, 1 worker, {default_threads(root)}, pyav, {videos}",
                rates["one worker"],
                note=INGEST_NOTE,
            )
        )
    if "workers" in rates:
        workers = rates["workers"]
        versus = f"; {workers.median / rates['one worker'].median:.2f}x 1 worker" if "one worker" in rates else ""
        rows.append(
            Row(
                "ingest end to end",
                f"build-cache, {config.workers} workers, pyav, {videos}",
                workers,
                limit=rates["one core"].scaled(config.workers, "videos/s"),
                limit_name=f"{config.workers} x the rate of 1 worker on 1 core",
                note=f"{INGEST_NOTE}{versus}",
            )
        )
    return rows


def build_store(config: BenchConfig, root: Path, workers: int, decoder: str = "pyav", resize: str = "squash") -> float:
    out = config.work / "ingest.zarr"
    remove(out)
    build_cache(BuildConfig(root, out, workers=workers, decoder=decoder, resize=resize), log=lambda _: None)
    with open_store(out) as store:
        return len(store)


def gpu_ingest(config: BenchConfig) -> list[Row]:
    """`build-cache` with each GPU decoder at 1, 7 and 16 videos in flight; rows PyAV decoded are not counted."""
    rows = []
    root = linked_root(config, 2 * max(gpu_in_flights(config)))
    for name in (name for name in GPU_DECODERS if available(name)):
        for in_flight in gpu_in_flights(config):
            notes: list[str] = []

            def build(name: str = name, in_flight: int = in_flight, notes: list[str] = notes) -> float:
                out = config.work / "ingest-gpu.zarr"
                remove(out)
                summary = build_cache(BuildConfig(root, out, workers=in_flight, decoder=name), log=lambda _: None)
                notes[:] = [f"{len(summary.fallbacks)} of {summary.ok} ok rows fell back to PyAV, not counted"]
                return summary.ok - len(summary.fallbacks)

            rate = Rate.measure(build, max(1, config.repeat // 2), "videos/s", warmup=0)
            measures = f"build-cache, {in_flight} videos in flight, {name}"
            rows.append(Row("ingest end to end", measures, rate, note="; ".join(notes)))
    return rows


def linked_root(config: BenchConfig, count: int) -> Path:
    """A Celeb-DF-shaped folder of `count` links to the bench's videos, real and fake in turn: enough videos to
    keep 16 in flight, or to spread a build's fixed costs as a real data set does, however few the bench has."""
    root = config.work / f"linked-{count}"
    for i in range(count if not root.exists() else 0):
        source = config.videos[i % len(config.videos)].resolve()
        name = f"Celeb-real/id{i}_0000" if i % 2 else f"Celeb-synthesis/id{i}_id{i + 1}_0000"
        link = root / f"{name}{source.suffix}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source)
    return root


def _one_core(work: Callable[[], float]) -> float:
    """`work` with this thread (and the threads it starts) on one CPU, and torch on one thread."""
    cpus, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, {min(cpus)})
    torch.set_num_threads(1)
    try:
        return work()
    finally:
        os.sched_setaffinity(0, cpus)
        torch.set_num_threads(threads)


def default_threads(root: Path) -> str:
    """The decoder threads a build of one worker uses by default on the frames of `root`'s first video."""
    probe = probe_video(str(root / find_videos(root)["path"].iloc[0]))
    threads = decoder_threads(threads_per_worker(1), probe.width * probe.height)
    return f"{threads} decoder thread{'s' * (threads > 1)} (the default at {probe.width}x{probe.height})"


def videos_of(root: Path) -> str:
    return f"{len(find_videos(root))} videos of {root.name}"


def _ingest_limit(config: BenchConfig, context: Context) -> Rate | None:
    needed = ("decode/pyav", "resize", "write/zarr")
    if not all(name in context.rates for name in needed):
        return None
    clip_mb = config.frames * config.size * config.size * 3 / MB
    seconds = (
        1 / context.rates["decode/pyav"].median
        + config.frames / context.rates["resize"].median
        + clip_mb / context.rates["write/zarr"].median
    )
    return Rate.of_seconds(seconds, "videos/s")
