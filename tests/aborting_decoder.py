"""A stand-in GPU decoder for a machine without a GPU: PyAV, run in the GPU decoding process, which it kills with
`os.abort()` on the videos it is told to, as a crashing GPU driver would."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ingest.decoders import PyAVDecoder
from ingest.decoding import DecodedClip, DecodeError
from ingest.frames import make_clip
from ingest.gpu_decoders import Job, Result


class AbortingDecoder:
    name = "aborting"

    def __init__(self, *fatal: str) -> None:
        self.fatal = fatal  # file names to abort on; "*": every video

    def decode(self, path: str, count: int) -> DecodedClip:
        if "*" in self.fatal or Path(path).name in self.fatal:
            os.abort()
        return PyAVDecoder(threads=1).decode(path, count)

    def clips(self, jobs: list[Job], in_flight: int) -> Iterator[tuple[Job, Result]]:
        """One video at a time, in order, each clip made as the CPU workers make theirs."""
        for job in jobs:
            try:
                decoded = self.decode(job.path, job.frames)
            except DecodeError as error:
                yield job, error
                continue
            clip, face = make_clip(decoded.frames, decoded.indices, job.size, job.resize, job.face)
            yield job, DecodedClip(clip.numpy(), decoded.indices, decoded.probe, face)
