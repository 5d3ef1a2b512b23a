"""The `resize` stage: resizing one video's sampled frames with torch beside OpenCV frame by frame."""

from __future__ import annotations

import torch

from bench.baselines import seed_resize
from bench.context import BenchConfig, Context
from bench.timing import Rate, Row
from ingest.decoders import make_decoder
from ingest.frames import resize_clip


def resize(config: BenchConfig, context: Context) -> list[Row]:
    torch.set_num_threads(1)
    frames = make_decoder("pyav", threads=1).decode(str(config.videos[0]), config.frames).frames
    count = len(frames)
    ours = Rate.measure(lambda: resize_clip(frames, config.size) is not None and count, config.repeat, "frames/s")
    seed = Rate.measure(lambda: seed_resize(frames, config.size) is not None and count, config.repeat, "frames/s")
    context.rates["resize"] = ours
    h, w = frames.shape[1:3]
    return [Row("resize", f"{w}x{h} -> {config.size}, torch, 1 thread", ours, seed, "OpenCV resize frame by frame")]
