"""Decoding many videos at once: the worker pool behind `ingest build-cache` and prediction."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import torch

from ingest.clips import RowJob, RowOutcome, decode_row, gpu_rows
from ingest.decoders import GPU_DECODERS, Probe


def threads_per_worker(workers: int) -> int:
    """Decoder threads for each of `workers` processes, so that together they use every core once."""
    return max(1, len(os.sched_getaffinity(0)) // max(workers, 1))


def decode_rows(jobs: list[RowJob], workers: int) -> Iterator[RowOutcome]:
    """Outcomes as they finish (in any order): in this process for one worker, else in a pool, a few jobs ahead.

    A GPU decoder runs in this process (CUDA does not survive a fork) with `workers` videos in flight.
    A worker that dies (a decoder crash, the OOM killer) breaks the pool; the videos it may have been
    decoding are then retried one at a time, so only the one that kills its process again fails.
    """
    if jobs and jobs[0].decoder in GPU_DECODERS:
        yield from gpu_rows(jobs, workers)
        return
    if workers <= 1 or len(jobs) <= 1:
        yield from map(decode_row, jobs)
        return
    queue = deque(jobs)
    while queue:
        suspects: list[RowJob] = []
        with _pool(workers, jobs[0].threads) as pool:
            running: dict[Future, RowJob] = {}
            while queue or running:
                while queue and len(running) < 2 * workers:
                    job = queue.popleft()
                    running[pool.submit(decode_row, job)] = job
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    job = running.pop(future)
                    if isinstance(future.exception(), BrokenProcessPool):
                        suspects.append(job)
                    else:
                        yield future.result()
                if suspects:
                    suspects += running.values()
                    break
        for job in sorted(suspects, key=lambda job: job.row):
            yield _decode_alone(job)


def _pool(workers: int, threads: int) -> ProcessPoolExecutor:
    """Workers fork from a server that has imported the decoding code once, not each on its own."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["ingest.clips"])
    return ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads, initargs=(threads,))


def _decode_alone(job: RowJob) -> RowOutcome:
    with _pool(1, job.threads) as pool:
        try:
            return pool.submit(decode_row, job).result()
        except BrokenProcessPool:
            return RowOutcome(job.row, None, None, Probe(), "the decoding process died on this video")
