"""The `decode` stage: decoding and sampling 16 frames with each CPU decoder beside the seed's OpenCV seeks and
the decode floor, how far that scales over the cores, and each GPU decoder beside the NVDEC engines' limit."""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from bench.baselines import decode_floor, seed_read_frames
from bench.context import BenchConfig, Context
from bench.timing import Rate, Row, skipped
from ingest.clips import FELL_BACK, RowJob, RowOutcome, gpu_rows
from ingest.decoders import CPU_DECODERS, GPU_DECODERS, available, make_decoder, unavailable
from ingest.demux import probe_video

# Decode engines per GPU (NVIDIA's specifications) and one engine's H.264 1080p rate (Video Codec SDK
# application note, Turing-class engine at 1860 MHz, which Hopper's match clock for clock).
NVDEC_ENGINES = {"H100": 7, "H200": 7}
NVDEC_1080P_FPS = 771
SEED = "seed: OpenCV seek per frame"


def decode(config: BenchConfig, context: Context) -> list[Row]:
    paths = [str(p) for p in config.videos]
    n = len(paths)
    torch.set_num_threads(1)
    # The seed's seeks take 15 s a run on a CPU's 6 videos: fewer runs, no warm-up (nothing of it is kept warm).
    seed = Rate.measure(
        lambda: [seed_read_frames(p, config.frames) for p in paths] and n, config.rounds, "videos/s", warmup=0
    )
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
