"""The `faces` stage: dlib's detection as a build does it, `build-cache --resize face` beside `--resize squash`, and
how well the stored crops sit on the face, on the bench's videos and on 1080p videos whose faces are small
(DFDC's). The crops are measured in the same run as the speed, so that speed is never bought with accuracy
unseen."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bench.context import BenchConfig, Context
from bench.ingest import INGEST_NOTE, build_store, linked_root, videos_of
from bench.timing import Rate, Row, taking_turns
from cache import open_store
from ingest.decoders import make_decoder
from ingest.faces import FACE_DEFAULTS, detect, full_size_faces, track

CENTRED = 0.1  # a crop is on the face where its centre lies within this share of its side of the face's centre...
SIZED = 0.08  # ...and a video's crops are the right size where their median side is within this of margin x the face's
SHIFT = (3, 5)  # px: the reference's own spread is its median face side on the same frames moved this far


@dataclass(frozen=True)
class Agreement:
    """How one video's stored crops agree with the faces of a reference (a per-frame detection at full size, or
    a test's known faces), over the frames where the reference shows the face."""

    frames: int
    centred: int  # crops whose centre lies within CENTRED of their side of the face's centre
    holding: int  # crops that hold the whole face box (the part of it inside the frame)
    side_ratio: float  # median crop side over margin x the face's median longer side; 1 is right

    @property
    def sized(self) -> bool:
        return abs(self.side_ratio - 1) <= SIZED


def reference_faces(frames: np.ndarray) -> np.ndarray | None:
    """The face dlib finds in each whole frame at its own size, tracked as a build tracks its own: (T, 4), NaN
    where it was not found; None without any face."""
    return track([full_size_faces(frame) for frame in frames])


def median_side(faces: np.ndarray) -> float:
    return float(np.nanmedian(np.maximum(faces[:, 2] - faces[:, 0], faces[:, 3] - faces[:, 1])))


def agreement(windows: np.ndarray, faces: np.ndarray, height: int, width: int, margin: float) -> Agreement:
    """Crop windows (T, 4) x0, y0, x1, y1 against faces (T, 4) in the same source pixels, NaN where none."""
    seen = ~np.isnan(faces[:, 0])
    crop, face = windows[seen].astype(np.float64), faces[seen]
    side = crop[:, 2] - crop[:, 0]
    offset = (crop[:, :2] + crop[:, 2:]) / 2 - (face[:, :2] + face[:, 2:]) / 2
    visible = np.clip(face, 0, [width, height, width, height])
    holding = (crop[:, :2] <= visible[:, :2]).all(axis=1) & (crop[:, 2:] >= visible[:, 2:]).all(axis=1)
    longer = np.maximum(face[:, 2] - face[:, 0], face[:, 3] - face[:, 1])
    return Agreement(
        frames=int(seen.sum()),
        centred=int((np.hypot(*offset.T) <= CENTRED * side).sum()),
        holding=int(holding.sum()),
        side_ratio=float(np.median(side) / (margin * np.median(longer))) if seen.any() else float("nan"),
    )


def faces(config: BenchConfig, context: Context) -> list[Row]:
    """Detection per frame on one video, then the face build beside the squash build (the seed's) on the same
    videos, taking turns, and the last face build's crops against dlib on each whole frame: for the bench's
    videos, and for `config.hd_faces`'s where it is given.

    The bench's videos' ratio is near its target (0.8), so its builds take every repeat; the 1080p builds, twice
    as slow and clear of theirs (0.6), take fewer rounds on half as many links."""
    torch.set_num_threads(1)
    rows = _rows(config, links=4, rounds=config.repeat)
    if config.hd_faces is not None:
        hd = replace(config, videos=sorted(config.hd_faces.rglob("*.mp4")), work=config.work / "hd-faces")
        rows += _rows(hd, links=2, rounds=config.rounds)
    return rows


def _rows(config: BenchConfig, links: int, rounds: int) -> list[Row]:
    """`detect` on the first video's sampled frames (a search until a face shows, then the face followed), the
    builds of all, and the crops of the last (a face build) against the reference."""
    frames = make_decoder("pyav", threads=1).decode(str(config.videos[0]), config.frames).frames
    height, width = frames.shape[1:3]
    rate = Rate.measure(lambda: len(detect(frames)), config.repeat, "frames/s")
    found = sum(len(boxes) > 0 for boxes in detect(frames))
    note = f"{1000 / rate.median:.1f} ms per frame; a face in {found} of {len(frames)} sampled frames"
    measures = f"dlib HOG face detection as a build does, {width}x{height} frames, 1 thread"
    size = f"{width}x{height}"
    root = linked_root(config, links * len(config.videos))
    return [Row("faces", measures, rate, note=note), _builds(config, root, size, rounds), _accuracy(config, root, size)]


def _builds(config: BenchConfig, root: Path, size: str, rounds: int) -> Row:
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


def _accuracy(config: BenchConfig, root: Path, size: str) -> Row:
    """The last face build's crops of each distinct video against dlib on each of its sampled frames whole, at
    full size (what a build cannot afford per frame): the share of frames on the face, per video. Beside it,
    how often the reference agrees with itself on the same frames moved by SHIFT px: dlib's boxes come in 20%
    steps whose choice a few pixels change, which bounds how often any crop can be within SIZED of it."""
    results, steady = [], 0
    with open_store(config.work / "ingest.zarr") as store:
        first_rows = {(root / path).resolve(): row for row, path in reversed(list(enumerate(store.path)))}
        for source, row in sorted(first_rows.items()):
            decoded = make_decoder("pyav", threads=1).decode(str(source), store.spec.frames)
            reference = reference_faces(decoded.frames)
            if reference is None or store.face_detected[row] == 0:
                continue
            height, width = decoded.frames.shape[1:3]
            results.append(agreement(store.face_box[row], reference, height, width, FACE_DEFAULTS.margin))
            moved = reference_faces(np.ascontiguousarray(decoded.frames[:, SHIFT[1] :, SHIFT[0] :]))
            steady += moved is not None and abs(median_side(moved) / median_side(reference) - 1) <= SIZED
    frames = sum(r.frames for r in results)
    shares = [100 * r.centred / r.frames for r in results if r.frames] or [0.0]
    ratios = [r.side_ratio for r in results]
    videos = len(results)
    return Row(
        "faces",
        f"crops on the face: the face build's crops against dlib on each whole sampled frame at full size, "
        f"{videos} video{'s' * (videos != 1)} at {size}",
        Rate(statistics.median(shares), min(shares), max(shares), "% of frames centred"),
        note=(
            f"{sum(r.centred for r in results)} of {frames} frames centred within {CENTRED} of the crop's side, "
            f"{sum(r.holding for r in results)} hold the whole face; {sum(r.sized for r in results)} of {videos} "
            f"videos' median crop side within {SIZED:.0%} of {FACE_DEFAULTS.margin} x the face's (ratios "
            f"{min(ratios, default=0):.2f}-{max(ratios, default=0):.2f}), where dlib's own median on the frames "
            f"moved by {SHIFT[0]},{SHIFT[1]} px is within {SIZED:.0%} of its own in {steady} of {videos}; "
            "median and range over the videos"
        ),
    )
