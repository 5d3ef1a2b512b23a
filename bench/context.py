"""What every stage is handed: the bench's settings and inputs, and the rates stages leave for one another."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from bench.timing import Rate


@dataclass
class BenchConfig:
    videos: list[Path]
    data_root: Path
    cache: Path
    work: Path
    repeat: int = 5
    quick: bool = False
    workers: int = field(default_factory=lambda: len(os.sched_getaffinity(0)))
    frames: int = 16
    size: int = 224
    demo_set: Path | None = None  # many small videos, built beside `data_root` by the ingest stage
    hd_faces: Path | None = None  # 1080p videos with small faces, for the faces stage

    @property
    def rounds(self) -> int:
        """Timed runs of what takes seconds a run (whole builds, the seed's OpenCV seeks): half the repeats, at
        least two, which keeps a full bench on 2 cores under 15 minutes."""
        return max(2, -(-self.repeat // 2))


@dataclass
class Context:
    """Rates one stage leaves for another's limit."""

    rates: dict[str, Rate] = field(default_factory=dict)
