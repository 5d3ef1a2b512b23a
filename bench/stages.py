"""The stages, each timed through the project's own functions beside its baseline and its limit."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from bench.baselines import SeedVideoDataset, decode_floor, seed_read_frames, seed_resize
from bench.config import BenchConfig, Context
from bench.scan import scan
from bench.timing import Rate, Row, skipped
from cache import ClipDataset, open_store
from cache.features import FeatureDataset
from cache.schema import StoreSpec
from cache.writer import ShardResult, StoreWriter, create_store
from ingest.build import BuildConfig, build_cache
from ingest.clips import FELL_BACK, RowJob, RowOutcome, gpu_rows
from ingest.decoders import CPU_DECODERS, GPU_DECODERS, available, make_decoder, unavailable
from ingest.demux import probe_video
from ingest.faces import FaceSettings, detect
from ingest.frames import resize_clip
from ingest.layouts import find_videos
from train.augment import ClipTransform
from train.data import BatchFeed, TimedBatches
from train.features import FeatureConfig, compute_features, model_for_features
from train.loop import TrainConfig, as_float
from train.models import MODEL_NAMES, TIMM_BACKBONES, ModelConfig, build_model

# Decode engines per GPU (NVIDIA's specifications) and one engine's H.264 1080p rate (Video Codec SDK
# application note, Turing-class engine at 1860 MHz, which Hopper's match clock for clock).
NVDEC_ENGINES = {"H100": 7, "H200": 7}
NVDEC_1080P_FPS = 771
SEED = "seed: OpenCV seek per frame"
FEED_BATCH = 32  # the trainer's feed is timed at a GPU's batch, not the seed's 4
TRAINER_THREADS = TrainConfig.workers  # the trainer's default reader threads
STAGES = ("decode", "resize", "write", "ingest", "faces", "read", "feed", "h2d", "train", "features", "scan")
WITHOUT_VIDEOS = ("scan",)  # stages that make their own input: they need no --data or --demo
MB = 2**20


def decode(config: BenchConfig, context: Context) -> list[Row]:
    paths = [str(p) for p in config.videos]
    n = len(paths)
    torch.set_num_threads(1)
    seed = Rate.measure(lambda: [seed_read_frames(p, config.frames) for p in paths] and n, config.repeat, "videos/s")
    floor = Rate.measure(lambda: [decode_floor(p, config.frames) for p in paths] and n, config.repeat, "videos/s")
    rows = []
    for name in CPU_DECODERS:
        if not available(name):
            rows.append(skipped("decode + sample", name, f"{name} is not installed"))
            continue
        decoder = make_decoder(name, threads=1)
        ours = Rate.measure(
            lambda decoder=decoder: [decoder.decode(p, config.frames) for p in paths] and n, config.repeat, "videos/s"
        )
        context.rates[f"decode/{name}"] = ours
        rows.append(
            Row(
                "decode + sample 16 frames",
                f"{name}, 1 process, 1 thread, {n} videos",
                ours,
                seed,
                SEED,
                floor,
                "decode floor: every frame to the last sampled, 1 thread, no RGB",
                note=f"{ours.median * config.frames:,.0f} frames/s",
            )
        )
    return rows + _decode_scaling(config, paths, context) + gpu_decode(config, paths, seed)


def _decode_scaling(config: BenchConfig, paths: list[str], context: Context) -> list[Row]:
    """PyAV in a process per core at once, against that many times one process: how far this machine's cores
    scale on decoding alone, the ceiling for `build-cache`'s workers (shared caches, memory and any SMT siblings
    keep it under 1)."""
    cores = len(os.sched_getaffinity(0))
    if cores < 2 or "decode/pyav" not in context.rates:
        return []
    with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("fork")) as pool:
        list(pool.map(int, range(cores)))  # the processes exist before the clock starts

        def together() -> float:
            return sum(pool.map(_decode_all, [(paths, config.frames)] * cores))

        rate = Rate.measure(together, config.repeat, "videos/s")
    one = context.rates["decode/pyav"]
    return [
        Row(
            "decode + sample 16 frames",
            f"pyav, {cores} processes at once, 1 thread each, {len(paths)} videos each",
            rate,
            limit=one.scaled(cores, one.unit),
            limit_name=f"{cores} x pyav in 1 process (the row above)",
            note="how far the cores scale on decoding alone: the ceiling of build-cache's workers/one-core ratio",
        )
    ]


def _decode_all(job: tuple[list[str], int]) -> int:
    paths, frames = job
    torch.set_num_threads(1)
    decoder = make_decoder("pyav", threads=1)
    for path in paths:
        decoder.decode(path, frames)
    return len(paths)


def gpu_decode(config: BenchConfig, paths: list[str], seed: Rate) -> list[Row]:
    """Each GPU decoder with 1, 7 (an H100's engines) and 16 videos in flight, beside the engines' limit.

    The limit is the per-engine rate measured here (one decoder decoding every frame of the first video)
    times the engines, falling back to NVIDIA's published figure where nvdec does not start.
    """
    stage = "decode + sample 16 frames + resize, GPU"
    if not torch.cuda.is_available():
        return [skipped(stage, "nvdec, dali", "no GPU on this machine")]
    engine_fps = nvdec_engine_fps(paths[0]) if available("nvdec") else None
    limit, limit_name = nvdec_limit(paths, engine_fps)
    rows = []
    for name in GPU_DECODERS:
        why = unavailable(name)
        if why is not None:
            rows.append(skipped(stage, name, why))
            continue
        for in_flight in gpu_in_flights(config):
            jobs = [
                RowJob(i, p, name, 1, config.frames, config.size, "squash")
                for i, p in enumerate(paths * -(-2 * in_flight // len(paths)))
            ]
            outcomes: list[RowOutcome] = []

            def work(jobs=jobs, in_flight=in_flight, outcomes=outcomes) -> float:
                outcomes[:] = list(gpu_rows(jobs, in_flight))
                return sum(outcome.clip is not None and not outcome.fell_back for outcome in outcomes)

            rate = Rate.measure(work, config.repeat, "videos/s")
            note = f"{rate.median * config.frames:,.0f} sampled frames/s; {fallback_note(outcomes)}"
            measures = f"{name}, {in_flight} videos in flight, {len(jobs)} videos"
            rows.append(Row(stage, measures, rate, seed, SEED, limit, limit_name, note))
    return rows


def gpu_ingest(config: BenchConfig) -> list[Row]:
    """`build-cache` with each GPU decoder at 1, 7 and 16 videos in flight; rows PyAV decoded are not counted."""
    rows = []
    root = _linked_root(config, 2 * max(gpu_in_flights(config)))
    for name in (name for name in GPU_DECODERS if available(name)):
        for in_flight in gpu_in_flights(config):
            notes: list[str] = []

            def build(name: str = name, in_flight: int = in_flight, notes: list[str] = notes) -> float:
                out = config.work / "ingest-gpu.zarr"
                _remove(out)
                summary = build_cache(BuildConfig(root, out, workers=in_flight, decoder=name), log=lambda _: None)
                notes[:] = [f"{len(summary.fallbacks)} of {summary.ok} ok rows fell back to PyAV, not counted"]
                return summary.ok - len(summary.fallbacks)

            rate = Rate.measure(build, max(1, config.repeat // 2), "videos/s", warmup=0)
            measures = f"build-cache, {in_flight} videos in flight, {name}"
            rows.append(Row("ingest end to end", measures, rate, note="; ".join(notes)))
    return rows


def _linked_root(config: BenchConfig, count: int) -> Path:
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


def fallback_note(outcomes: list[RowOutcome]) -> str:
    """How many rows of a GPU measurement PyAV decoded, or nobody did: neither counts in a GPU rate."""
    fell_back = [outcome.error[len(FELL_BACK) :] for outcome in outcomes if outcome.fell_back]
    failed = [outcome.error for outcome in outcomes if outcome.clip is None]
    note = f"{len(fell_back)} of {len(outcomes)} rows fell back to PyAV, not counted"
    note += f" (e.g. {fell_back[0]})" if fell_back else ""
    return note + (f"; {len(failed)} failed, e.g. {failed[0]}" if failed else "")


def gpu_in_flights(config: BenchConfig) -> tuple[int, ...]:
    """Videos in flight: one (one engine), an H100's seven engines, and more than the engines; one setting quick."""
    return (max(8, config.workers),) if config.quick else (1, 7, 16)


def nvdec_engine_fps(path: str) -> float | None:
    """Frames per second one SimpleDecoder decodes every frame of `path` at (one engine busy); None if it fails."""
    try:
        import PyNvVideoCodec as nvc

        reader = nvc.SimpleDecoder(path, gpu_id=torch.cuda.current_device(), use_device_memory=True)
        reader.get_batch_frames(8)  # warm-up: the decoder session and the first GOP
        reader.seek_to_index(0)
        started, frames, total = time.perf_counter(), 0, len(reader)
        while frames < total and (batch := reader.get_batch_frames(64)):
            frames += len(batch)
        torch.cuda.synchronize()
        return frames / (time.perf_counter() - started)
    except Exception as error:
        print(f"bench: nvdec's per-engine rate not measured: {type(error).__name__}: {error}"[:300])
        return None


def nvdec_limit(paths: list[str], engine_fps: float | None = None) -> tuple[Rate | None, str]:
    """What the GPU's decode engines could do decoding every frame of these videos: the per-engine rate
    measured here, else NVIDIA's H.264 1080p figure scaled by pixels."""
    gpu = torch.cuda.get_device_name()
    engines = next((count for model, count in NVDEC_ENGINES.items() if model in gpu), None)
    if engines is None:
        return None, ""
    probes = [probe_video(p) for p in paths]
    if engine_fps:
        frames = sum(p.frames for p in probes) / len(probes)
        name = f"NVDEC: {engines} engines x {engine_fps:,.0f} frames/s each (measured here, every frame)"
        return Rate.of_seconds(frames / (engines * engine_fps), "videos/s"), name
    frames_1080p = sum(p.frames * p.width * p.height for p in probes) / len(probes) / (1920 * 1080)
    return (
        Rate.of_seconds(frames_1080p / (engines * NVDEC_1080P_FPS), "videos/s"),
        f"NVDEC: {engines} engines x {NVDEC_1080P_FPS} H.264 1080p frames/s each, every frame, scaled by pixels",
    )


def resize(config: BenchConfig, context: Context) -> list[Row]:
    torch.set_num_threads(1)
    frames = make_decoder("pyav", threads=1).decode(str(config.videos[0]), config.frames).frames
    count = len(frames)
    ours = Rate.measure(lambda: resize_clip(frames, config.size) is not None and count, config.repeat, "frames/s")
    seed = Rate.measure(lambda: seed_resize(frames, config.size) is not None and count, config.repeat, "frames/s")
    context.rates["resize"] = ours
    h, w = frames.shape[1:3]
    return [Row("resize", f"{w}x{h} -> {config.size}, torch, 1 thread", ours, seed, "OpenCV resize frame by frame")]


def _clips(config: BenchConfig, count: int) -> np.ndarray:
    with open_store(config.cache) as store:
        rows = store.rows()
        return store.read(np.resize(rows, count))


def write(config: BenchConfig, context: Context) -> list[Row]:
    clips = _clips(config, 16 if config.quick else 64)
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
            _remove(path)
            create_store(path, _table(len(clips)), spec)
        created[suffix] = (time.perf_counter() - started) / runs

    def plain(folder: Path) -> None:
        for start in range(0, len(clips), per_shard):
            with open(folder / str(start), "wb") as f:
                f.write(clips[start : start + per_shard])  # the array's own buffer, as the stores write it

    def store(path: Path) -> None:
        with StoreWriter(path) as writer:
            for start in range(0, len(clips), per_shard):
                writer.write_shard(_shard(start, clips[start : start + per_shard]))

    rates = _interleaved({"plain": plain, "zarr": store, "h5": store}, targets, total, "MB/s")
    for paths in targets.values():
        for path in paths:
            _remove(path)
    rows = []
    for suffix in ("zarr", "h5"):
        context.rates[f"write/{suffix}"] = rates[suffix]
        note = f"every shard of a new store, created beforehand ({created[suffix] * 1000:.0f} ms each), as a build does"
        measures = f"{suffix}, {len(clips)} clips"
        rows.append(
            Row("store write", measures, rates[suffix], limit=rates["plain"], limit_name="plain file writes", note=note)
        )
    return rows


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


def _shard(start: int, clips: np.ndarray) -> ShardResult:
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


def _fresh(folder: Path) -> Path:
    _remove(folder)
    folder.mkdir(parents=True)
    return folder


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def ingest(config: BenchConfig, context: Context) -> list[Row]:
    """`build-cache` end to end on the bench's videos and on the demo set, with the scaling ratio of its workers,
    then with each GPU decoder."""
    # A real set has thousands of videos, over which a build's fixed costs (discovery, forks, store creation,
    # summary: about 0.2 s) vanish; six would be mostly fixed costs, so the build reads eight links to each.
    rows = _ingest_scaling(config, _linked_root(config, 8 * len(config.videos)), _ingest_limit(config, context))
    if config.demo_set is not None:
        rows += _ingest_scaling(config, config.demo_set, None)
    return rows + gpu_ingest(config)


INGEST_NOTE = "includes discovery, process start-up and the store's creation"


def _ingest_scaling(config: BenchConfig, root: Path, one_process: Rate | None) -> list[Row]:
    """One worker held to one core, one worker free to use every core (decoder threads), and a worker per core.

    How `build-cache` scales with cores is the last's rate over the one-core rate times the workers: a single
    worker's decoder threads already use more than one core, so its own rate is no measure of one core.
    The builds take turns, repeat after repeat, so that other work on the machine disturbs each alike.
    """
    cores = len(os.sched_getaffinity(0))
    builds: dict[str, Callable[[], float]] = {"one core": lambda: _one_core(lambda: _build(config, root, 1))}
    if cores > 1:
        builds["one worker"] = lambda: _build(config, root, 1)
    if config.workers > 1:
        builds["workers"] = lambda: _build(config, root, config.workers)
    rates = _taking_turns(builds, config.repeat, "videos/s")
    videos = _videos(root)
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
                f"build-cache, 1 worker, {cores} decoder threads, pyav, {videos}",
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


def _build(config: BenchConfig, root: Path, workers: int, decoder: str = "pyav", resize: str = "squash") -> float:
    out = config.work / "ingest.zarr"
    _remove(out)
    build_cache(BuildConfig(root, out, workers=workers, decoder=decoder, resize=resize), log=lambda _: None)
    with open_store(out) as store:
        return len(store)


def faces(config: BenchConfig, context: Context) -> list[Row]:
    """dlib's face detection per frame, at the frames' own size and at the working size a build detects at; then
    `build-cache --resize face` beside `--resize squash` (the seed's) on the same videos, taking turns."""
    torch.set_num_threads(1)
    frames = make_decoder("pyav", threads=1).decode(str(config.videos[0]), config.frames).frames
    height, width = frames.shape[1:3]
    rows = []
    longer = max(height, width)
    for side in sorted({longer, min(longer, FaceSettings().working_side)}, reverse=True):
        rate = Rate.measure(lambda side=side: len(detect(frames, side)), config.repeat, "frames/s")
        found = sum(len(boxes) > 0 for boxes in detect(frames, side))
        measures = f"dlib HOG face detection, {width}x{height} frames at longer side {side}"
        note = f"{1000 / rate.median:.1f} ms per frame; a face in {found} of {len(frames)} sampled frames"
        rows.append(Row("faces", f"{measures}, 1 thread", rate, note=note))
    root = _linked_root(config, 4 * len(config.videos))
    modes = ("squash", "face")
    builds = {mode: lambda mode=mode: _build(config, root, config.workers, resize=mode) for mode in modes}
    rates = _taking_turns(builds, config.repeat, "videos/s")
    with open_store(config.work / "ingest.zarr") as store:  # the last build is a face build
        found = f"{len(store.rows()) - len(store.without_face())} of {len(store.rows())} clips with a face"
    rows.append(
        Row(
            "faces",
            f"build-cache --resize face, {config.workers} workers, pyav, {_videos(root)}",
            rates["face"],
            rates["squash"],
            "build-cache --resize squash (the seed's), same videos",
            note=f"{found}; {INGEST_NOTE}",
        )
    )
    return rows


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


def _taking_turns(works: dict[str, Callable[[], float]], repeat: int, unit: str) -> dict[str, Rate]:
    """Each work's rate over `repeat` rounds in which every work runs once, in turn."""
    rates: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeat):
        for name, work in works.items():
            started = time.perf_counter()
            items = work()
            rates[name].append(items / (time.perf_counter() - started))
    return {name: Rate(statistics.median(r), min(r), max(r), unit) for name, r in rates.items()}


def _videos(root: Path) -> str:
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
            rate = _feed_rate(BatchFeed(dataset, FEED_BATCH, order, threads=threads), config.repeat)
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


def _feed_rate(feed: BatchFeed, repeat: int) -> Rate:
    """Clips/s of passes through a feed: its buffers are made by the warm-up pass and reused, as by epochs."""
    return Rate.measure(lambda: sum(len(labels) for _, labels, _ in feed), repeat, "clips/s")


def feed(config: BenchConfig, context: Context) -> list[Row]:
    dataset = ClipDataset(config.cache, "train")
    shuffled = RandomSampler(dataset, generator=torch.Generator().manual_seed(0))
    ours = _feed_rate(BatchFeed(dataset, FEED_BATCH, shuffled, threads=TRAINER_THREADS), config.repeat)
    with open_store(config.cache) as store:
        size = store.spec.size
        root = Path(store.spec.data_root)
        paths = [str(root / store.path[r]) for r in dataset.rows]
    # The seed decodes every clip it serves: an epoch of the videos themselves gives its per-clip rate.
    unique = sorted(set(paths))
    seed_set = SeedVideoDataset(unique, [0] * len(unique), config.frames, config.size)
    seed_loader = DataLoader(seed_set, batch_size=4, shuffle=True, num_workers=config.workers, persistent_workers=True)
    seed = Rate.measure(lambda: sum(len(labels) for _, labels in seed_loader), max(1, config.repeat // 2), "clips/s")
    return [
        Row(
            "feed an epoch",
            f"train split, trainer's feed, {TRAINER_THREADS} reader threads, batch {FEED_BATCH} at {size}px",
            ours,
            seed,
            "seed: OpenCV decode in __getitem__",
            context.rates.get(f"read/{config.cache.suffix.lstrip('.')}"),
            "store random read, 1 process",
        )
    ]


def h2d(config: BenchConfig, context: Context) -> list[Row]:
    """Host-to-device copies: a training batch of clips, then 256 MiB and 1 GiB, where the link's rate shows."""
    if not torch.cuda.is_available():
        return [skipped("host to device", "GB/s, pinned and not", "no GPU on this machine")]
    clips = torch.from_numpy(_clips(config, 4))
    sources = [(f"uint8 batch of 4 clips ({clips.numel() / MB:.0f} MiB)", clips, (False, True))]
    sources.append(("256 MiB", torch.empty(256 * MB, dtype=torch.uint8), (False, True)))
    sources.append(("1 GiB", torch.empty(1024 * MB, dtype=torch.uint8), (True,)))
    rows = []
    for what, tensor, pinnings in sources:
        for pinned in pinnings:
            rate = _copy_rate(tensor.pin_memory() if pinned else tensor, config.repeat)
            rows.append(Row("host to device", f"{what}, {'pinned' if pinned else 'pageable'}", rate))
    return rows


def _copy_rate(source: torch.Tensor, repeat: int) -> Rate:
    gigabytes = source.numel() * source.element_size() / 2**30
    target = torch.empty_like(source, device="cuda")

    def copy() -> float:
        target.copy_(source, non_blocking=True)
        torch.cuda.synchronize()
        return gigabytes

    return Rate.measure(copy, repeat, "GB/s")


def train(config: BenchConfig, context: Context) -> list[Row]:
    """clips/s of a training step fed by the trainer's feed, beside the same step on a batch already there."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    size = 64 if config.quick else config.size
    steps, precisions = _train_settings(config, device)
    dataset = ClipDataset(config.cache, "train")
    transform = ClipTransform(train=True, seed=0, size=size)
    rows = []
    for name in MODEL_NAMES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(ModelConfig(name)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        for precision in precisions:
            fed, waited, resident = _train_rates(
                model,
                optimizer,
                BatchFeed(dataset, 4, device=device, threads=TRAINER_THREADS),
                transform,
                precision,
                steps,
                config,
            )
            context.rates[f"train/{name}/{precision}"] = fed
            rows.append(
                Row(
                    "train step",
                    f"{name}, {precision}, batch 4 x {config.frames} frames at {size}px, {device.type}",
                    fed,
                    limit=resident,
                    limit_name="the same step on a batch already on the device",
                    note=f"data stall: {100 * waited:.1f}% of the step waiting for data",
                )
            )
    return rows


def _train_settings(config: BenchConfig, device: torch.device) -> tuple[int, list[str]]:
    """Steps per timed epoch and precisions: on a GPU, 50 steps of bf16, enough for the data stall to show."""
    if config.quick:
        return 2, ["fp32"]
    return (50, ["bf16"]) if device.type == "cuda" else (6, ["fp32", "bf16"])


def features(config: BenchConfig, context: Context) -> list[Row]:
    """The feature cache: computing it once, then a training step of the head alone beside the full model's."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = 64 if config.quick else config.size
    steps = 20 if config.quick else 100
    rows = []
    for name, backbone in TIMM_BACKBONES.items():
        started = time.perf_counter()
        spec = compute_features(FeatureConfig(config.cache, backbone, frame_size=size), log=lambda _: None)
        dataset = FeatureDataset(config.cache, spec.name, "train")
        rows.append(
            Row(
                "feature cache",
                f"{backbone}, compute once, {len(dataset)} clips at {size}px, {device.type}",
                Rate.of_seconds((time.perf_counter() - started) / len(dataset), "clips/s"),
                note="one run, not repeated: the second finds every clip done",
            )
        )
        head = model_for_features(spec, dropout=0.5).head.to(device)
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-4)
        # Features in memory are read in the training thread, as the trainer reads them.
        fed, waited, _ = _train_rates(
            head, optimizer, BatchFeed(dataset, 4, device=device), as_float, "fp32", steps, config
        )
        rows.append(
            Row(
                "train step from features",
                f"{name}'s head, fp32, batch 4 x {config.frames} frames, {device.type}",
                fed,
                context.rates.get(f"train/{name}/fp32"),
                f"the whole {name}'s step on clips at {size}px (train stage)",
                note=f"data stall: {100 * waited:.1f}% of the step waiting for data",
            )
        )
    return rows


def _train_rates(model, optimizer, feed: BatchFeed, transform, precision: str, steps: int, config: BenchConfig):
    """The step fed by the trainer's feed (rate and data stall), and the same step on one batch kept on the device."""
    device = feed.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    criterion = torch.nn.CrossEntropyLoss()

    def step(clips: torch.Tensor, labels: torch.Tensor) -> None:
        with autocast:
            loss = criterion(model(transform(clips)).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    generator = torch.Generator().manual_seed(0)
    feed.sampler = RandomSampler(feed.dataset, replacement=True, num_samples=4 * steps, generator=generator)
    waits: list[float] = []
    totals: list[float] = []

    def fed() -> float:
        started = time.perf_counter()
        batches = TimedBatches(feed)
        clips_seen = 0
        for clips, labels, _ in batches:
            step(clips, labels)
            clips_seen += len(labels)
        _sync(device)
        waits.append(batches.waited)
        totals.append(time.perf_counter() - started)
        return clips_seen

    model.train()
    fed_rate = Rate.measure(fed, config.repeat, "clips/s")
    clips, labels, _ = (t.clone() for t in next(iter(feed)))

    def resident() -> float:
        for _ in range(steps):
            step(clips, labels)
        _sync(device)
        return steps * len(labels)

    resident_rate = Rate.measure(resident, config.repeat, "clips/s")
    stalls = np.array(waits[1:]) / np.array(totals[1:])  # the first epoch is Rate.measure's warm-up
    return fed_rate, float(np.median(stalls)), resident_rate


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


RUNNERS = {
    "decode": decode,
    "resize": resize,
    "write": write,
    "ingest": ingest,
    "faces": faces,
    "read": read,
    "feed": feed,
    "h2d": h2d,
    "train": train,
    "features": features,
    "scan": scan,
}


def run_stages(config: BenchConfig, stages: list[str]) -> list[Row]:
    context = Context()
    rows: list[Row] = []
    bar = tqdm(stages, unit="stage", desc="bench")
    for name in bar:
        bar.set_postfix(stage=name)
        rows.extend(RUNNERS[name](config, context))
    return rows


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
                shard = _shard(start, store.read(block))
                writer.write_shard(replace(shard, frame_index=store.frame_index[block]))
    return dest


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="clipcache-bench-"))
