"""One video in, one clip out: the work a build's decoding processes do.

Kept apart from `ingest.build` so that worker processes import only what decoding needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingest.decoders import DecodeError, Probe, error_line, make_decoder
from ingest.frames import resize_clip


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
