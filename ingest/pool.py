"""Decoding many videos at once: the worker pool behind `ingest build-cache` and prediction."""

from __future__ import annotations

import mmap
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.sharedctypes import Synchronized

import numpy as np
import torch

from ingest.children import follow_parent
from ingest.clips import FALLBACK, RowJob, RowOutcome, decode_row
from ingest.decoders import GPU_DECODERS
from ingest.decoding import Probe
from ingest.gpu_process import GpuProcess

CRASHED = "the decoder crashed: its process died on this video"


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

    A GPU decoder runs in a process of its own, spawned (CUDA does not survive a fork), with `workers` videos in
    flight (`GpuProcess`); the videos it may have been decoding when it died fall back to PyAV in forked workers,
    started then. A CPU build never starts a GPU process.
    """

    def __init__(self, decoder: str, workers: int, clip_shape: tuple[int, ...]) -> None:
        self.decoder, self.workers, self.clip_shape = decoder, workers, clip_shape
        self._executor: ProcessPoolExecutor | None = None
        self._gpu: GpuProcess | None = None
        self._fallback: DecodePool | None = None  # a GPU pool's CPU workers, once its process has died
        if self.forks:
            self._slots = _shared(2 * workers, clip_shape)
            self._executor = _start(workers, self._slots)
        else:
            self._gpu = GpuProcess(decoder, workers, clip_shape, self._on_cpu)

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
            self._fallback = DecodePool(FALLBACK, self.workers, self.clip_shape)
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
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = [future for future in finished if isinstance(future.exception(), BrokenProcessPool)]
            for future in finished:
                if future not in broken:
                    _, slot = running.pop(future)
                    yield self._collect(future.result(), slot)
            if broken:
                return [job for job, _ in running.values()]
        return [job for job, _ in running.values()]

    def _collect(self, outcome: RowOutcome, slot: int) -> RowOutcome:
        """The outcome with its clip, copied out of its slot before the slot is used again."""
        if outcome.indices is not None:
            outcome.clip = self._slots[slot].copy()
        return outcome

    def _decode_alone(self, job: RowJob) -> RowOutcome:
        with _start(1, self._slots) as pool:
            try:
                return self._collect(pool.submit(_decode_into, job, 0).result(), 0)
            except BrokenProcessPool:
                return RowOutcome(job.row, None, None, Probe(), CRASHED)


def decode_rows(jobs: list[RowJob], workers: int) -> Iterator[RowOutcome]:
    """Outcomes as they finish (in any order): see `DecodePool`; a single job decodes in this process."""
    if not jobs:
        return
    job = jobs[0]
    with DecodePool(job.decoder, workers if len(jobs) > 1 else 1, (job.frames, job.size, job.size, 3)) as pool:
        yield from pool.rows(jobs)


def _shared(slots: int, clip_shape: tuple[int, ...]) -> np.ndarray:
    """`slots` clips of memory that this process shares with the processes it forks from now on."""
    nbytes = slots * int(np.prod(clip_shape))
    return np.frombuffer(mmap.mmap(-1, nbytes), np.uint8).reshape(slots, *clip_shape)


def _start(workers: int, slots: np.ndarray) -> ProcessPoolExecutor:
    """Fork the workers now, not at the first job: the pool starts them all at its first submission."""
    context = multiprocessing.get_context("fork")
    started = context.Value("i", 0)  # how many workers have started: the next one's index
    executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker, initargs=(slots, started, workers))
    for _ in range(workers):
        executor.submit(int)
    return executor


_slots: np.ndarray | None = None  # in a worker: the clip slots it shares with the process that forked it


def _worker(slots: np.ndarray, started: Synchronized, workers: int) -> None:
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
    """`decode_row` in a worker, its clip left in slot `slot`."""
    outcome = decode_row(job)
    if outcome.clip is not None:
        _slots[slot] = outcome.clip
        outcome.clip = None
    return outcome
