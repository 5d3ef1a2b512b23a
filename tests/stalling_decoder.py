"""A stand-in decoder that never returns from the videos it is told to: it blocks in a read that no data will ever
answer, as a read from a hung network mount does. Else `AbortingDecoder`: PyAV, one video at a time, aborting on
those it is told to. Registered as a GPU decoder it runs in the GPU decoding process, as a CPU decoder in the
forked workers."""

from __future__ import annotations

import os
from pathlib import Path

from aborting_decoder import AbortingDecoder

from ingest.decoding import DecodedClip


class StallingDecoder(AbortingDecoder):
    name = "stalling"

    def __init__(self, stalled: str, *fatal: str) -> None:
        super().__init__(*fatal)  # file names to abort on
        self.stalled = stalled  # the file name to block on

    def decode(self, path: str, count: int) -> DecodedClip:
        if Path(path).name == self.stalled:
            read, _ = os.pipe()  # its write end stays open, unwritten: the read waits for ever
            os.read(read, 1)
        return super().decode(path, count)
