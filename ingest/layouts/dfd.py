"""DeepFakeDetection (Google's DFD), part of the FaceForensics++ download.

    original_sequences/actors/<c>/videos/AA__scene.mp4                       real, actor AA
    manipulated_sequences/DeepFakeDetection/<c>/videos/AA_BB__scene__ID.mp4   fake, actors AA and BB

No official split: all test (an unseen set), or with --grouped-split train/val/test by the actor(s) in the name.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path, PurePosixPath

from cache.schema import FAKE, REAL, SPLIT_CODES
from ingest.discover import NO_SPLIT
from ingest.layouts.common import GROUPED_TEST_FRACTION, Found, LayoutOptions, Tree, row, rows_table
from ingest.layouts.ffpp import FAKE_FOLDER, compressed

NAME = "dfd"
HELP = "DeepFakeDetection: original_sequences/actors and manipulated_sequences/DeepFakeDetection, <c>/videos"
OPTIONS = ("compression", "grouped_split")
REAL_FOLDER = "original_sequences/actors"
FAKE_METHOD = f"{FAKE_FOLDER}/DeepFakeDetection"


def matches(root: Path) -> bool:
    return (root / REAL_FOLDER).is_dir() or (root / FAKE_METHOD).is_dir()


def actors(path: str) -> str:
    """`01__exit_phone_room` -> `01`; `01_02__exit_phone_room__YVGY8LOK` -> `01_02`."""
    return PurePosixPath(path).stem.split("__")[0]


def read(tree: Tree, options: LayoutOptions) -> Found:
    left_out: Counter = Counter()
    split = NO_SPLIT if options.grouped_split else SPLIT_CODES["test"]
    rows = []
    for base, label in ((REAL_FOLDER, REAL), (FAKE_METHOD, FAKE)):
        rows += [row(p, label, actors(p), split) for p in compressed(tree, base, options.compression, left_out)]
    if options.grouped_split:
        return Found(rows_table(rows), "grouped", left_out=left_out, test_fraction=GROUPED_TEST_FRACTION)
    return Found(rows_table(rows), "all-test", left_out=left_out)
