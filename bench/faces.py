"""The `faces` stage: dlib's detection per frame, and `build-cache --resize face` beside `--resize squash`."""

from __future__ import annotations

import torch

from bench.context import BenchConfig, Context
from bench.ingest import INGEST_NOTE, build_store, linked_root, videos_of
from bench.timing import Rate, Row, taking_turns
from cache import open_store
from ingest.decoders import make_decoder
from ingest.faces import FaceSettings, detect


def faces(config: BenchConfig, context: Context) -> list[Row]:
    """dlib's face detection per frame, at the frames' own size and at the working size a build detects at; then
    `build-cache --resize face` beside `--resize squash` (the seed's) on the same videos, taking turns."""
    torch.set_num_threads(1)
    frames = make_decoder("pyav", threads=1).decode(str(config.videos[0]), config.frames).frames
    height, width = frames.shape[1:3]
    rows = []
    longer = max(height, width)
    for side in sorted({longer, min(longer, FaceSettings().working_side)}, reverse=True):
        rate = Rate.measure(lambda side=side: len(detect(frames, side)), config.repeat, "frames/s")
        found = sum(len(boxes) > 0 for boxes in detect(frames, side))
        measures = f"dlib HOG face detection, {width}x{height} frames at longer side {side}"
        note = f"{1000 / rate.median:.1f} ms per frame; a face in {found} of {len(frames)} sampled frames"
        rows.append(Row("faces", f"{measures}, 1 thread", rate, note=note))
    root = linked_root(config, 4 * len(config.videos))
    modes = ("squash", "face")
    builds = {mode: lambda mode=mode: build_store(config, root, config.workers, resize=mode) for mode in modes}
    rates = taking_turns(builds, config.repeat, "videos/s")
    with open_store(config.work / "ingest.zarr") as store:  # the last build is a face build
        found = f"{len(store.rows()) - len(store.without_face())} of {len(store.rows())} clips with a face"
    rows.append(
        Row(
            "faces",
            f"build-cache --resize face, {config.workers} workers, pyav, {videos_of(root)}",
            rates["face"],
            rates["squash"],
            "build-cache --resize squash (the seed's), same videos",
            note=f"{found}; {INGEST_NOTE}",
        )
    )
    return rows
