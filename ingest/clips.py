"""One video in, one clip out: the work a build's decoding processes do.

Kept apart from `ingest.build` so that worker processes import only what decoding needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from ingest.decoders import DecodedClip, DecodeError, Probe, available, error_line, make_decoder
from ingest.frames import resize_clip

FALLBACK = "pyav"
FELL_BACK = f"fell back to {FALLBACK}: "  # an ok row's error: the GPU decoder's reason, kept in the store


@dataclass(frozen=True)
class RowJob:
    row: int
    path: str
    decoder: str
    threads: int
    frames: int
    size: int
    resize: str


@dataclass
class RowOutcome:
    row: int
    clip: np.ndarray | None
    indices: np.ndarray | None
    probe: Probe
    error: str = ""

    @property
    def fell_back(self) -> bool:
        """The GPU decoder failed on this video and PyAV decoded it."""
        return self.clip is not None and self.error.startswith(FELL_BACK)


def decode_row(job: RowJob) -> RowOutcome:
    """Decode, sample and resize one video; any failure becomes the row's reason, never an exception."""
    try:
        decoded = make_decoder(job.decoder, job.threads).decode(job.path, job.frames)
        clip = resize_clip(decoded.frames, job.size, job.resize).numpy()
        return RowOutcome(job.row, clip, decoded.indices.astype(np.int32), decoded.probe)
    except Exception as error:
        return failed_row(job.row, error)


def failed_row(row: int, error: Exception, source: str = "") -> RowOutcome:
    """A row that did not decode, its reason on one line: a DecodeError's message, else the exception's type too."""
    reason = error_line(error) if isinstance(error, DecodeError) else f"{type(error).__name__}: {error_line(error)}"
    return RowOutcome(row, None, None, Probe(), f"{source}{reason}"[:200])


def gpu_rows(jobs: list[RowJob], in_flight: int) -> Iterator[RowOutcome]:
    """Outcomes of `jobs` (one GPU decoder, named in the jobs), `in_flight` videos at a time, PyAV retrying
    the videos the GPU decoder fails on. Nothing of the GPU path raises past this."""
    from ingest.gpu_decoders import gpu_results

    outcomes = (_gpu_outcome(job, result) for job, result in gpu_results(jobs, in_flight))
    return with_fallback(outcomes, jobs)


def _gpu_outcome(job: RowJob, result: DecodedClip | DecodeError) -> RowOutcome:
    if isinstance(result, DecodeError):
        return failed_row(job.row, result, source=f"{job.decoder}: ")
    return RowOutcome(job.row, result.frames, result.indices.astype(np.int32), result.probe)


def with_fallback(outcomes: Iterable[RowOutcome], jobs: list[RowJob]) -> Iterator[RowOutcome]:
    """Each failed outcome of a GPU decoder decoded again by PyAV, whose careful path handles damaged files.

    A row PyAV saves keeps the GPU decoder's reason after `FELL_BACK`, so that a build (and its store) counts
    the fallbacks: a GPU build whose every row fell back must not look like a GPU build. A row PyAV fails
    on too gives both reasons.
    """
    by_row = {job.row: job for job in jobs}
    can_fall_back = available(FALLBACK)
    for outcome in outcomes:
        if outcome.clip is None and can_fall_back:
            retry = decode_row(replace(by_row[outcome.row], decoder=FALLBACK, threads=1))
            saved = retry.clip is not None
            reason = f"{FELL_BACK}{outcome.error}" if saved else f"{outcome.error}; {FALLBACK}: {retry.error}"
            outcome = replace(retry, error=reason[:200])
        yield outcome
