"""UADFV: real/NNNN.mp4 and fake/NNNN_fake.mp4. No official split: all test (an unseen set), or with
--grouped-split train/val/test by the video's number, which a fake shares with its real."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from cache.schema import FAKE, REAL, SPLIT_CODES
from ingest.discover import NO_SPLIT
from ingest.layouts.common import GROUPED_TEST_FRACTION, Found, LayoutOptions, Tree, row, rows_table, subfolders

NAME = "uadfv"
HELP = "UADFV: real/ and fake/"
OPTIONS = ("grouped_split",)
FOLDERS = {"real": REAL, "fake": FAKE}
NUMBER = re.compile(r"^(\d+)")


def matches(root: Path) -> bool:
    return FOLDERS.keys() <= set(subfolders(root).values())


def number(path: str) -> str:
    stem = PurePosixPath(path).stem
    found = NUMBER.match(stem)
    return found.group(1) if found else stem


def read(tree: Tree, options: LayoutOptions) -> Found:
    split = NO_SPLIT if options.grouped_split else SPLIT_CODES["test"]
    rows = []
    for folder, lower in subfolders(tree.root).items():
        if lower in FOLDERS:
            rows += [row(p, FOLDERS[lower], number(p), split) for p in tree.videos(folder)]
    if options.grouped_split:
        return Found(rows_table(rows), "grouped", test_fraction=GROUPED_TEST_FRACTION)
    return Found(rows_table(rows), "all-test")
