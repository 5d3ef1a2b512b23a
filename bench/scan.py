"""The `scan` stage: finding a large data set's videos, labels and splits (`ingest scan`, no decoding) on a tree
shaped as DFDC's training set, beside a plain `os.walk` that only lists the same tree."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.config import BenchConfig, Context
from bench.timing import Rate, Row
from ingest.scan import scan as scan_root

PARTS = 50
VIDEOS = 119_000  # DFDC's training set: 119,154 videos in 50 parts
FAKES_PER_REAL = 5  # about DFDC's share of fakes


def dfdc_tree(root: Path, parts: int = PARTS, videos: int = VIDEOS) -> Path:
    """`parts` dfdc_train_part_N folders of empty .mp4 files with their metadata.json, written once."""
    done = root / ".complete"
    if done.exists():
        return root
    per_part = videos // parts
    for part in range(parts):
        folder = root / f"dfdc_train_part_{part}"
        folder.mkdir(parents=True, exist_ok=True)
        metadata = {}
        for i in range(per_part):
            name = f"p{part:02d}v{i:05d}.mp4"
            original = f"p{part:02d}v{i - i % (FAKES_PER_REAL + 1):05d}.mp4"
            is_real = name == original
            metadata[name] = {"label": "REAL" if is_real else "FAKE", "split": "train"}
            if not is_real:
                metadata[name]["original"] = original
            with open(folder / name, "wb"):
                pass
        (folder / "metadata.json").write_text(json.dumps(metadata))
    done.touch()
    return root


def walk_count(root: Path) -> int:
    """The baseline: every file name under `root`, as `os.walk` lists them, and nothing more."""
    return sum(name.endswith(".mp4") for _, _, files in os.walk(root) for name in files)


def scan(config: BenchConfig, context: Context) -> list[Row]:
    root = dfdc_tree(config.work / "dfdc-shaped", PARTS, VIDEOS)
    count = walk_count(root)
    ours = Rate.measure(lambda: len(scan_root(root)[1].table), config.repeat, "videos/s")
    walk = Rate.measure(lambda: walk_count(root), config.repeat, "videos/s")
    return [
        Row(
            "scan",
            f"ingest scan, dfdc layout: {count:,} empty videos in {PARTS} parts with metadata.json",
            ours,
            walk,
            "os.walk listing the same tree",
            note="finds the layout, reads every metadata.json, labels, groups and checks each video against them",
        )
    ]
