"""What every decoder shares, CPU or GPU: the `Decoder` interface, the clip it returns, the stream facts and the
one-line error a video that cannot be decoded becomes.

Both the decoder registry (`ingest.decoders`) and the GPU decoders (`ingest.gpu_decoders`) build on this module,
which imports neither.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ingest.faces import FaceCrops

DECORD_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


class DecodeError(Exception):
    """A video that cannot give the frames asked of it; the message is the row's reason."""


@dataclass(frozen=True)
class Probe:
    frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    codec: str = ""


@dataclass
class DecodedClip:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    indices: np.ndarray  # (T,) source frame numbers
    probe: Probe
    face: FaceCrops | None = None  # the face crops a GPU decoder cut the frames to (`--resize face`)


class Decoder(Protocol):
    name: str

    def decode(self, path: str, count: int) -> DecodedClip: ...


def error_line(error: Exception) -> str:
    """One line, without the file name; decord's `[time] file.cc:line:` prefix dropped."""
    text = getattr(error, "strerror", None) or str(error)
    text = DECORD_PREFIX.sub("", " ".join(text.split())) or type(error).__name__
    return text[:200]
