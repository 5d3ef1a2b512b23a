"""Decoding many videos at once: the worker pool behind `ingest build-cache` and prediction."""

from __future__ import annotations

import argparse
import mmap
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized

import numpy as np
import torch

from ingest.children import follow_parent
from ingest.clips import FALLBACK, RowJob, RowOutcome, decode_row, timed_out
from ingest.decoders import GPU_DECODERS
from ingest.decoding import Probe
from ingest.gpu_process import GpuProcess

CRASHED = "the decoder crashed: its process died on this video"
# Seconds a video may take to decode before its process is killed (`--video-timeout`; 0: no limit): a read that
# blocks for ever, as on a hung network mount, costs its row, not the whole run. Far above any real video's decode.
VIDEO_TIMEOUT = 600.0


def add_decoding_options(parser: argparse.ArgumentParser, workers: str) -> None:
    """`--workers` (helped by `workers`) and `--video-timeout`, the same for every command that decodes videos."""
    parser.add_argument(
        "--workers", type=int, default=len(os.sched_getaffinity(0)), help=f"{workers} (default: one per CPU core)"
    )
    parser.add_argument(
        "--video-timeout",
        type=float,
        default=VIDEO_TIMEOUT,
        metavar="SECONDS",
        help="a video whose decoding takes longer (a read that blocks for ever, as on a hung network mount) fails "
        f"with that reason, and the process decoding it is killed and replaced (default {VIDEO_TIMEOUT:g}; 0: no "
        "limit)",
    )


def threads_per_worker(workers: int) -> int:
    """The cores each of `workers` processes may give its decoder's threads, so that together they use every core
    once; the PyAV decoder uses them only for frames large enough (`ingest.decoders.decoder_threads`)."""
    return max(1, len(os.sched_getaffinity(0)) // max(workers, 1))


def worker_cpus(index: int, workers: int, cpus: set[int]) -> set[int]:
    """The CPUs worker `index` of `workers` keeps to: its own share of `cpus`, or one CPU that it shares with
    other workers where there are more workers than CPUs."""
    ordered = sorted(cpus)
    if workers > len(ordered):
        return {ordered[index % len(ordered)]}
    return {int(cpu) for cpu in np.array_split(ordered, workers)[index]}


@dataclass(frozen=True)
class Slots:
    """Memory this process shares with the workers it forks from now on, one slot per job in flight: the job's
    clip, and when and in which worker its decoding began, so that a job past the time limit is found and its
    worker ended."""

    clips: np.ndarray  # (slots, *clip_shape) uint8
    began: np.ndarray  # (slots,) time.monotonic() when a worker began the job (one clock for every process); 0: not yet
    pid: np.ndarray  # (slots,) that worker's process id; 0: not yet

    @classmethod
    def make(cls, count: int, clip_shape: tuple[int, ...]) -> Slots:
        return cls(_shared((count, *clip_shape), np.uint8), _shared((count,), np.float64), _shared((count,), np.int64))

    def __len__(self) -> int:
        return len(self.clips)

    def clear(self, slot: int) -> None:
        """Before a job is given slot `slot`: not begun."""
        self.began[slot], self.pid[slot] = 0, 0

    def begin(self, slot: int) -> None:
        """In a worker: it begins the job of slot `slot` now."""
        self.pid[slot] = os.getpid()
        self.began[slot] = time.monotonic()


class DecodePool:
    """Where rows decode: `workers` processes forked from this one, even for one worker, so that a decoder that
    crashes its process (a segfault in FFmpeg, the OOM killer) costs one failed row, never the build.

    Create it first and the workers start while the caller finds its videos and creates its store.
    Workers are forked, not started by a fork server: this process has already imported torch and PyAV,
    so a forked worker decodes its first row within about 0.1 s, where a fork server takes 2.5 s or more
    to start and import them again (measured on 2 cores) — longer than a whole build of 100 small videos.

    A worker leaves each clip in a slot of memory it shares with this process, and sends back only the rest
    of the outcome: a few hundred bytes, not megabytes to pickle through a pipe, where a worker killed half
    way through sending would leave this process waiting for the rest for ever. (A job that asks for its whole
    middle frame, as `train.explain` does for a few videos, also sends that one frame back; builds never ask.)

    A job that has not ended `timeout` seconds after a worker began it (a read that blocks for ever, as on a hung
    network mount) is a failed row: its worker is killed (SIGKILL), which breaks the pool, so the other jobs it
    was running are decoded again by new workers. 0: no limit.

    A GPU decoder runs in a process of its own, spawned (CUDA does not survive a fork), with `workers` videos in
    flight (`GpuProcess`); the videos it may have been decoding when it died or passed the time limit fall back to
    PyAV in forked workers, started then. A CPU build never starts a GPU process.
    """

    def __init__(self, decoder: str, workers: int, clip_shape: tuple[int, ...], timeout: float = VIDEO_TIMEOUT) -> None:
        self.decoder, self.workers, self.clip_shape, self.timeout = decoder, workers, clip_shape, timeout
        self._executor: ProcessPoolExecutor | None = None
        self._gpu: GpuProcess | None = None
        self._fallback: DecodePool | None = None  # a GPU pool's CPU workers, once its process has died
        if self.forks:
            self._slots = Slots.make(2 * workers, clip_shape)
            self._executor = _start(workers, self._slots)
        else:
            self._gpu = GpuProcess(decoder, workers, clip_shape, self._on_cpu, timeout)

    @property
    def forks(self) -> bool:
        return self.decoder not in GPU_DECODERS

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        """Cancel what has not started and wait for the workers to end."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        for other in (self._gpu, self._fallback):
            if other is not None:
                other.close()
        self._gpu = self._fallback = None

    def rows(self, jobs: list[RowJob]) -> Iterator[RowOutcome]:
        """Outcomes as they finish (in any order), `2 * workers` jobs ahead of the caller; the first jobs start
        now, before the caller asks for an outcome (a GPU process's, at the first outcome asked for).

        A worker that dies (a decoder crash, the OOM killer) breaks the pool; the videos it may have been
        decoding are then retried one at a time, so only the one that kills its process again fails.
        """
        if self._gpu is not None:
            return self._gpu.rows(jobs)
        queue = deque(jobs)
        running: dict[Future, tuple[RowJob, int]] = {}
        self._submit(queue, running)
        return self._outcomes(queue, running)

    def _on_cpu(self, jobs: list[RowJob]) -> Iterator[RowOutcome]:
        """PyAV jobs in forked CPU workers, for the videos a GPU process died with."""
        if self._fallback is None:
            self._fallback = DecodePool(FALLBACK, self.workers, self.clip_shape, self.timeout)
        return self._fallback.rows(jobs)

    def _outcomes(self, queue: deque[RowJob], running: dict[Future, tuple[RowJob, int]]) -> Iterator[RowOutcome]:
        while (suspects := (yield from self._until_broken(queue, running))) is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            for job in sorted(suspects, key=lambda job: job.row):
                yield self._decode_alone(job)
            self._executor = _start(self.workers, self._slots)
            running = {}

    def _submit(self, queue: deque[RowJob], running: dict[Future, tuple[RowJob, int]]) -> bool:
        """Keep `2 * workers` jobs in flight, each with a free slot; False if the pool is broken."""
        free = set(range(len(self._slots))) - {slot for _, slot in running.values()}
        while queue and free:
            slot = free.pop()
            self._slots.clear(slot)
            try:
                future = self._executor.submit(_decode_into, queue[0], slot)
            except BrokenProcessPool:
                return False
            running[future] = (queue.popleft(), slot)
        return True

    def _until_broken(self, queue: deque[RowJob], running: dict[Future, tuple[RowJob, int]]) -> Iterator[RowOutcome]:
        """Decode the queue's jobs: None once all are done, else (the pool broke) the jobs it was running."""
        while self._submit(queue, running):
            if not running:
                return None
            finished, _ = wait(running, timeout=self._time_left(running), return_when=FIRST_COMPLETED)
            if not finished:
                yield from self._end_overdue(queue, running)
                continue
            broken = [future for future in finished if isinstance(future.exception(), BrokenProcessPool)]
            for future in finished:
                if future not in broken:
                    _, slot = running.pop(future)
                    yield self._collect(future.result(), slot)
            if broken:
                return [job for job, _ in running.values()]
        return [job for job, _ in running.values()]

    def _time_left(self, running: dict[Future, tuple[RowJob, int]]) -> float | None:
        """Seconds until the first of the `running` jobs passes the time limit (None: there is none); a job no
        worker has begun yet has all of it ahead."""
        if not self.timeout:
            return None
        began = [self._slots.began[slot] for _, slot in running.values() if self._slots.began[slot]]
        return max(0.0, min(began, default=time.monotonic()) + self.timeout - time.monotonic())

    def _overdue(self, running: dict[Future, tuple[RowJob, int]]) -> list[Future]:
        """The `running` jobs a worker began more than the time limit ago and has not ended."""
        now = time.monotonic()
        return [
            future
            for future, (_, slot) in running.items()
            if not future.done() and 0 < self._slots.began[slot] <= now - self.timeout
        ]

    def _end_overdue(self, queue: deque[RowJob], running: dict[Future, tuple[RowJob, int]]) -> Iterator[RowOutcome]:
        """Kill the workers of the jobs past the time limit, which fail. That breaks the pool: the jobs it was
        running that had not ended go back to the front of the queue, for new workers."""
        overdue = self._overdue(running)
        if not overdue:
            return
        for future in overdue:
            self._end_worker(running[future][1])
        wait(running)  # the pool, broken, settles every job at once
        again = []
        for future, (job, slot) in sorted(running.items(), key=lambda item: item[1][0].row):
            if future.exception() is None:  # it ended in time after all
                yield self._collect(future.result(), slot)
            elif future in overdue:
                yield timed_out(job, self.timeout)
            else:
                again.append(job)
        queue.extendleft(reversed(again))
        running.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._executor = _start(self.workers, self._slots)

    def _end_worker(self, slot: int) -> None:
        """SIGKILL the worker that began the job of slot `slot`."""
        pid = int(self._slots.pid[slot])
        if pid > 0:
            os.kill(pid, signal.SIGKILL)

    def _collect(self, outcome: RowOutcome, slot: int) -> RowOutcome:
        """The outcome with its clip, copied out of its slot before the slot is used again."""
        if outcome.indices is not None:
            outcome.clip = self._slots.clips[slot].copy()
        return outcome

    def _decode_alone(self, job: RowJob) -> RowOutcome:
        """`job` in a worker of its own: a crash of its process, or its passing the time limit, is its row's."""
        self._slots.clear(0)
        with _start(1, self._slots) as pool:
            running = {pool.submit(_decode_into, job, 0): (job, 0)}
            while not wait(running, timeout=self._time_left(running)).done:
                if self._overdue(running):
                    self._end_worker(0)
                    return timed_out(job, self.timeout)
            future = next(iter(running))
            if isinstance(future.exception(), BrokenProcessPool):
                return RowOutcome(job.row, None, None, Probe(), CRASHED)
            return self._collect(future.result(), 0)


def decode_rows(jobs: list[RowJob], workers: int, timeout: float = VIDEO_TIMEOUT) -> Iterator[RowOutcome]:
    """Outcomes as they finish (in any order): see `DecodePool`, whose workers decode even a single job."""
    if not jobs:
        return
    job = jobs[0]
    shape = (job.frames, job.size, job.size, 3)
    with DecodePool(job.decoder, workers if len(jobs) > 1 else 1, shape, timeout) as pool:
        yield from pool.rows(jobs)


def _shared(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Zeros in memory that this process shares with the processes it forks from now on."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype).reshape(shape)


def _start(workers: int, slots: Slots) -> ProcessPoolExecutor:
    """Fork the workers now, not at the first job: the pool starts them all at its first submission."""
    context = multiprocessing.get_context("fork")
    started = context.Value("i", 0)  # how many workers have started: the next one's index
    executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker, initargs=(slots, started, workers))
    for _ in range(workers):
        executor.submit(int)
    return executor


_slots: Slots | None = None  # in a worker: the slots it shares with the process that forked it


def _worker(slots: Slots, started: Synchronized, workers: int) -> None:
    """A worker keeps to its own CPUs: two decoding processes that the scheduler moves between cores reach 0.85-0.92
    of twice one's rate on 2 cores, pinned ones 0.95-0.98 (measured with PyAV, Celeb-DF-shaped video).
    It resizes in one torch thread: its decoder threads share out the cores, and an OpenMP thread pool that this
    process started before the fork would not exist in the worker. It leaves Ctrl-C to the process that started
    it, and ends with it: nothing outlives a killed build.

    SIGTERM ends a worker at once (not through the handler the fork copied): a pool whose worker died sends it
    to the others, since the dead one may have held the lock of the job queue they read, and a worker that
    ignored it waited on that lock for ever."""
    global _slots
    follow_parent()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _slots = slots
    with started.get_lock():
        index = started.value
        started.value += 1
    os.sched_setaffinity(0, worker_cpus(index, workers, os.sched_getaffinity(0)))
    torch.set_num_threads(1)


def _decode_into(job: RowJob, slot: int) -> RowOutcome:
    """`decode_row` in a worker, its clip left in slot `slot`, and when it began there."""
    _slots.begin(slot)
    outcome = decode_row(job)
    if outcome.clip is not None:
        _slots.clips[slot] = outcome.clip
        outcome.clip = None
    return outcome
