"""Decoding many videos at once: the worker pool behind `ingest build-cache` and prediction."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import torch

from ingest.clips import RowJob, RowOutcome, decode_row
from ingest.decoders import GPU_DECODERS, Probe

PR_SET_PDEATHSIG = 1


def threads_per_worker(workers: int) -> int:
    """Decoder threads for each of `workers` processes, so that together they use every core once."""
    return max(1, len(os.sched_getaffinity(0)) // max(workers, 1))


class DecodePool:
    """Where rows decode: `workers` processes forked from this one, or this process alone.

    Create it first and the workers start while the caller finds its videos and creates its store.
    Workers are forked, not started by a fork server: this process has already imported torch and PyAV,
    so a forked worker decodes its first row within about 0.1 s, where a fork server takes 2.5 s or more
    to start and import them again (measured on 2 cores) — longer than a whole build of 100 small videos.

    A GPU decoder runs in this process (CUDA does not survive a fork) with `workers` videos in flight,
    and one worker is this process: neither starts any process.
    """

    def __init__(self, decoder: str, workers: int) -> None:
        self.decoder, self.workers = decoder, workers
        self._executor = _start(workers) if self.forks else None

    @property
    def forks(self) -> bool:
        return self.workers > 1 and self.decoder not in GPU_DECODERS

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        """Cancel what has not started and wait for the workers to end."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def rows(self, jobs: list[RowJob]) -> Iterator[RowOutcome]:
        """Outcomes as they finish (in any order), a few jobs ahead of the caller.

        A worker that dies (a decoder crash, the OOM killer) breaks the pool; the videos it may have been
        decoding are then retried one at a time, so only the one that kills its process again fails.
        """
        if self.decoder in GPU_DECODERS:
            from ingest.gpu_decoders import gpu_rows

            yield from gpu_rows(jobs, self.workers)
            return
        if self._executor is None:
            yield from map(decode_row, jobs)
            return
        queue = deque(jobs)
        while queue:
            suspects = yield from self._until_broken(queue)
            if not suspects:
                continue
            self._executor.shutdown(wait=True, cancel_futures=True)
            for job in sorted(suspects, key=lambda job: job.row):
                yield _decode_alone(job)
            self._executor = _start(self.workers)

    def _until_broken(self, queue: deque[RowJob]) -> Iterator[RowOutcome]:
        """Decode the queue's jobs, `2 * workers` in flight; the jobs that were running when the pool broke."""
        running: dict[Future, RowJob] = {}
        suspects: list[RowJob] = []
        while (queue or running) and not suspects:
            while queue and len(running) < 2 * self.workers:
                job = queue.popleft()
                running[self._executor.submit(decode_row, job)] = job
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                if isinstance(future.exception(), BrokenProcessPool):
                    suspects.append(job)
                else:
                    yield future.result()
        return suspects + list(running.values()) if suspects else []


def decode_rows(jobs: list[RowJob], workers: int) -> Iterator[RowOutcome]:
    """Outcomes as they finish (in any order): see `DecodePool`; a single job decodes in this process."""
    decoder = jobs[0].decoder if jobs else ""
    with DecodePool(decoder, workers if len(jobs) > 1 else 1) as pool:
        yield from pool.rows(jobs)


def _start(workers: int) -> ProcessPoolExecutor:
    """Fork the workers now, not at the first job: the pool starts them all at its first submission."""
    executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker)
    for _ in range(workers):
        executor.submit(int)
    return executor


def _worker() -> None:
    """A worker resizes in one torch thread: its decoder threads share out the cores, and an OpenMP thread pool
    that this process started before the fork would not exist in the worker. It leaves Ctrl-C to the process
    that started it, and ends with it: nothing outlives a killed build."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _decode_alone(job: RowJob) -> RowOutcome:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"), initializer=_worker) as pool:
        try:
            return pool.submit(decode_row, job).result()
        except BrokenProcessPool:
            return RowOutcome(job.row, None, None, Probe(), "the decoding process died on this video")
