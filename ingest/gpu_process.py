"""GPU decoding in a process of its own, so that a GPU decoder that crashes it (a segfault in the driver, an abort,
the OOM killer) costs the videos it had in flight, never the build."""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
from collections.abc import Callable, Generator, Iterator
from dataclasses import replace
from multiprocessing.connection import Connection

import numpy as np

from ingest.children import follow_parent
from ingest.clips import FALLBACK, RowJob, RowOutcome, after_gpu_crash, gpu_rows, too_long
from ingest.decoders import stand_in
from ingest.gpu_decoders import STAND_INS, GpuDecoder

SPAWN = multiprocessing.get_context("spawn")  # CUDA does not survive a fork: a fresh interpreter initialises it
DIED = "the GPU decoder's process died ({how}) with this video among the {count} it may have been decoding"
GAVE_UP = "GPU decoding stopped: its process died twice in a row before it decoded a video"
BEGUN = "begun"  # the process's answer to a list of jobs: its start is over, their decoding begins
Decode = Callable[[list[RowJob]], Iterator[RowOutcome]]


class GpuProcess:
    """Decodes rows with a GPU decoder (`ingest.clips.gpu_rows`, the same code as ever) in a spawned process.

    The process leaves each clip in a slot of memory it shares with this one, as the CPU workers do, and sends
    back only the rest of the outcome; this process hands the slot back once it has copied the clip out.

    If it dies, the videos it may have been decoding, the first `2 * in_flight` it had not sent back (no GPU decoder
    runs further ahead, and both yield their videos in order), fall back to PyAV on the CPU workers (`cpu`), the
    reason kept as the GPU's failure; a new process decodes the rest, so that one bad video does not cost the GPU
    for the rest of the build, only a restart (seconds). Two processes in a row that die before sending back a
    video mean the GPU path itself is broken here (a driver, a GPU out of memory): the rest decode on the CPU.

    A process that sends back no video for `timeout` seconds (0: no limit) has a video past the time limit: the
    decoders send theirs back in order, so the next one has been decoding at least that long (a read that blocks
    for ever, a hung decode engine). It is killed (SIGKILL), and that is a death like any other. Its start (a fresh
    interpreter importing torch) is not counted: the clock starts when it takes a list of jobs.
    """

    def __init__(self, decoder: str, in_flight: int, clip_shape: tuple[int, ...], cpu: Decode, timeout: float) -> None:
        self.decoder, self.in_flight, self._cpu, self.timeout = decoder, in_flight, cpu, timeout
        slots = 2 * in_flight
        self._memory = SPAWN.RawArray("B", slots * int(np.prod(clip_shape)))
        self._slots = np.frombuffer(self._memory, np.uint8).reshape(slots, *clip_shape)
        self._process, self._conn = self._start()
        self._busy = False  # it holds videos it has not sent back

    def _start(self) -> tuple[multiprocessing.Process, Connection]:
        """Start the process now: it imports torch and initialises CUDA while the caller finds its videos."""
        ours, theirs = SPAWN.Pipe()
        args = (theirs, self._memory, self._slots.shape, self.decoder, self.in_flight, STAND_INS.get(self.decoder))
        process = SPAWN.Process(target=_serve, args=args, name=f"{self.decoder} decoder", daemon=True)
        process.start()
        theirs.close()  # its end only: once the process dies, reading ours ends (EOFError)
        return process, ours

    def close(self) -> None:
        """End the process: asked to, once it has sent back every video it was given; else (the caller stopped, on
        Ctrl-C or an error) killed, rather than waited for while it decodes the rest."""
        if self._busy:
            self._process.kill()
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()

    def rows(self, jobs: list[RowJob]) -> Iterator[RowOutcome]:
        """Outcomes of `jobs`, in the order the GPU decoder finishes them; see the class."""
        left, empty_deaths = list(jobs), 0
        while left:
            done, how = yield from self._decode(left)
            if how is None:
                return
            left = [job for job in left if job.row not in done]
            lost, left = left[: 2 * self.in_flight], left[2 * self.in_flight :]
            empty_deaths = 0 if done else empty_deaths + 1
            if left and empty_deaths < 2:
                self._process, self._conn = self._start()  # it starts while the CPU decodes the lost videos
            yield from self._on_cpu(lost, DIED.format(how=how, count=len(lost)))
            if empty_deaths == 2:
                yield from self._on_cpu(left, GAVE_UP)
                return

    def _decode(self, jobs: list[RowJob]) -> Generator[RowOutcome, None, tuple[set[int], str | None]]:
        """Outcomes from the process: the rows it sent back, and how it died (None: it did not)."""
        done: set[int] = set()
        self._busy = True
        try:
            self._conn.send(jobs)
            self._conn.recv()  # BEGUN
            while len(done) < len(jobs):
                if not self._conn.poll(self.timeout or None):
                    return done, self._end()
                outcome = self._receive()
                done.add(outcome.row)
                yield outcome
        except (EOFError, OSError):
            return done, self._death()
        self._busy = False
        return done, None

    def _receive(self) -> RowOutcome:
        outcome, slot = self._conn.recv()
        if slot is not None:
            outcome.clip = self._slots[slot].copy()
            with contextlib.suppress(OSError):  # a process that died is found at the next receive
                self._conn.send(slot)
        return outcome

    def _end(self) -> str:
        """Kill the process, which has sent back no video within the time limit; why, as its death's cause."""
        self._process.kill()
        self._process.join()
        self._conn.close()
        return f"killed: {too_long(self.timeout)}"

    def _death(self) -> str:
        """How the process ended: the signal that killed it, or its exit status."""
        self._process.join(timeout=30)
        self._conn.close()
        code = self._process.exitcode
        if code is None:
            self._process.kill()
            return "it stopped answering"
        return signal.Signals(-code).name if code < 0 else f"exit status {code}"

    def _on_cpu(self, jobs: list[RowJob], reason: str) -> Iterator[RowOutcome]:
        by_row = {job.row: job for job in jobs}
        cpu_jobs = [replace(job, decoder=FALLBACK) for job in jobs]
        for outcome in self._cpu(cpu_jobs) if jobs else ():
            yield after_gpu_crash(outcome, by_row[outcome.row], reason)


def _serve(
    conn: Connection,
    memory,
    shape: tuple[int, ...],
    decoder: str,
    in_flight: int,
    make: Callable[[], GpuDecoder] | None,
) -> None:
    """The GPU process: decode each list of jobs it is sent with `gpu_rows`, each clip left in a free slot."""
    follow_parent()
    if make is not None:
        stand_in(decoder, make)
    slots = np.frombuffer(memory, np.uint8).reshape(shape)
    free = list(range(len(slots)))
    while (jobs := conn.recv()) is not None:
        if isinstance(jobs, int):  # a slot handed back after the last outcome of a list
            free.append(jobs)
            continue
        conn.send(BEGUN)
        for outcome in gpu_rows(jobs, in_flight):
            slot = None
            if outcome.clip is not None:
                slot = free.pop() if free else conn.recv()  # wait for the parent to hand one back
                slots[slot], outcome.clip = outcome.clip, None
            conn.send((outcome, slot))
