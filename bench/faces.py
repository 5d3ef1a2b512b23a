"""The `faces` stage: dlib's detection as a build does it, and `build-cache --resize face` beside `--resize squash`,
on the bench's videos and on 1080p videos whose faces are small (DFDC's)."""

from __future__ import annotations

from dataclasses import replace

import torch

from bench.context import BenchConfig, Context
from bench.ingest import INGEST_NOTE, build_store, linked_root, videos_of
from bench.timing import Rate, Row, taking_turns
from cache import open_store
from ingest.decoders import make_decoder
from ingest.faces import detect


def faces(config: BenchConfig, context: Context) -> list[Row]:
    """Detection per frame on one video, then the face build beside the squash build (the seed's) on the same
    videos, taking turns: for the bench's videos, and for `config.hd_faces`'s where it is given.

    The bench's videos' ratio is near its target (0.85), so its builds take every repeat; the 1080p builds, twice
    as slow and clear of theirs (0.7), take fewer rounds on half as many links."""
    torch.set_num_threads(1)
    rows = _rows(config, links=4, rounds=config.repeat)
    if config.hd_faces is not None:
        hd = replace(config, videos=sorted(config.hd_faces.rglob("*.mp4")), work=config.work / "hd-faces")
        rows += _rows(hd, links=2, rounds=config.rounds)
    return rows


def _rows(config: BenchConfig, links: int, rounds: int) -> list[Row]:
    """`detect` on the first video's sampled frames (a search until a face shows, then the face followed), and
    the builds of all."""
    frames = make_decoder("pyav", threads=1).decode(str(config.videos[0]), config.frames).frames
    height, width = frames.shape[1:3]
    rate = Rate.measure(lambda: len(detect(frames)), config.repeat, "frames/s")
    found = sum(len(boxes) > 0 for boxes in detect(frames))
    note = f"{1000 / rate.median:.1f} ms per frame; a face in {found} of {len(frames)} sampled frames"
    measures = f"dlib HOG face detection as a build does, {width}x{height} frames, 1 thread"
    return [Row("faces", measures, rate, note=note), _builds(config, f"{width}x{height}", links, rounds)]


def _builds(config: BenchConfig, size: str, links: int, rounds: int) -> Row:
    root = linked_root(config, links * len(config.videos))
    modes = ("squash", "face")
    builds = {mode: lambda mode=mode: build_store(config, root, config.workers, resize=mode) for mode in modes}
    rates = taking_turns(builds, rounds, "videos/s")
    with open_store(config.work / "ingest.zarr") as store:  # the last build is a face build
        found = f"{len(store.rows()) - len(store.without_face())} of {len(store.rows())} clips with a face"
    return Row(
        "faces",
        f"build-cache --resize face, {config.workers} workers, pyav, {videos_of(root)} at {size}",
        rates["face"],
        rates["squash"],
        "build-cache --resize squash (the seed's), same videos",
        note=f"{found}; {INGEST_NOTE}",
    )
