"""`ingest make-demo`: a small dataset of real video files in Celeb-DF v2's, FaceForensics++'s or DFDC's layout
(`DEMO_LAYOUTS`): the same rendered videos under each data set's own names, folders and index files.

Every identity shows the one frontal face photograph scikit-image ships (its astronaut), her head cut
out in a soft ellipse and told apart by a colour tint (skin and hair tone), a size and a mirroring; the
head circles across a blotchy wall that pans, under sensor noise. dlib's frontal face detector finds the
face in the default 320x180 frames (and larger ones), so `build-cache --resize face` has faces to crop.
Real videos keep the photograph as it is. Fakes paste the face in another identity's tint, part blocky
as a generator's upscaled output, into the inner face (eyes, nose, mouth) inside a hard, darkened seam,
with large colour blocks that carry no grey level; the colour, blocks and seam's outline change from frame
to frame. These spatial and temporal artefacts lie inside the face crop, and are large enough to survive
a squash of the whole frame to 64 px, where a CNN learns them from a few dozen videos.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import av
import cv2
import numpy as np
from skimage import data

from ingest.discover import TEST_LIST
from ingest.layouts.common import FFPP_METHODS


@dataclass(frozen=True)
class DemoSpec:
    """A demo set's size and frames. FaceForensics++ reads only `identities` (its originals, two to a pair: every
    pair gives two fakes per method); Celeb-DF and DFDC give each identity `reals_per_identity` real and
    `fakes_per_identity` fake videos, and put the first `test_identities` in the test set."""

    identities: int = 16
    reals_per_identity: int = 2
    fakes_per_identity: int = 4
    youtube: int = 4  # Celeb-DF's YouTube-real videos, of identities of their own
    frames: int = 48
    width: int = 320
    height: int = 180
    fps: int = 25
    codec: str = "libx264"
    test_identities: int = 1
    seed: int = 0
    head: tuple[float, float] = (0.78, 0.88)  # range of the head's height over the frame's shorter side


def write_video(
    path: Path,
    frames: Iterable[np.ndarray],
    width: int,
    height: int,
    fps: int = 25,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> None:
    """Encode RGB uint8 frames with PyAV (FFmpeg): the codec's default GOP and B-frames unless `options`
    (encoder options such as x264-params) say otherwise."""
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.options = options or {}
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


HEAD = (24, 190, 150, 304)  # rows and columns of scikit-image's astronaut photograph from her hair to her chin
INNER_FACE = (0.47, 0.6, 0.28, 0.30)  # eyes, nose and mouth: centre x, y and semi-axes over the head's width, height
BLOCKY = 0.3  # share of upscaled blocks in the swapped face: at 0.5 dlib misses it in ~10% of frames, at 1 in all
COLOUR_CELL = 4  # colour blocks span this many blocks of the swapped face: they survive a squash to 64 px
COLOUR_SIGMA = 60.0  # grey levels: weaker colour blocks (30-50) leave 8 epochs of simple_cnn at 64 px unsure
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # grey as OpenCV weighs RGB
PAN = 0.25  # the wall pans by this share of the frame's width over a video


@dataclass(frozen=True)
class Identity:
    """One demo person: every identity is the same photograph, told apart by these."""

    tint: np.ndarray  # per-channel gain on the photograph: skin and hair tone
    size: float  # head height over the frame's shorter side
    mirror: bool


@dataclass(frozen=True)
class Swap:
    """What a fake pastes into its head: the other identity's face, and where its inner face lies."""

    face: np.ndarray  # (h, w, 3) float32, part blocky
    inner: np.ndarray  # (h, w) squared distance from the inner face's centre, 1 on its outline
    block: int  # side of the blocks in pixels


def draw_identity(rng: np.random.Generator, head: tuple[float, float] = DemoSpec.head) -> Identity:
    """The default sizes put dlib's face box at 70-80 px in 180-row frames (about half the head's height); its
    frontal detector finds it from about 73."""
    return Identity(rng.uniform(0.65, 1.3, 3).astype(np.float32), float(rng.uniform(*head)), bool(rng.integers(2)))


@cache
def _photo() -> np.ndarray:
    top, bottom, left, right = HEAD
    return data.astronaut()[top:bottom, left:right].astype(np.float32)


def head_image(height: int, tint: np.ndarray) -> np.ndarray:
    """The photograph's head scaled to `height` rows, tinted; (height, width, 3) float32."""
    photo = _photo()
    width = round(height * photo.shape[1] / photo.shape[0])
    return cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA) * tint


def ellipse(shape: tuple[int, int], cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Squared normalised distance from an ellipse's centre (1 on its outline) at each pixel of `shape`."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    return ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2


def head_mask(shape: tuple[int, int]) -> np.ndarray:
    """(h, w, 1) opacity of the head: a soft-edged ellipse that leaves the photograph's own background out."""
    h, w = shape
    return np.clip((1 - ellipse(shape, w / 2, h / 2, w / 2, h / 2)) / 0.25, 0, 1)[..., None]


def panning_wall(spec: DemoSpec, rng: np.random.Generator) -> np.ndarray:
    """A blotchy, shaded wall wider than the frame by the pan: frames are windows of it further and further along."""
    wide = spec.width + round(PAN * spec.width)
    shade = np.linspace(0, 1, wide, dtype=np.float32)[None, :, None] * rng.uniform(-60, 60, 3).astype(np.float32)
    cell = max(spec.height // 8, 1)
    cells = (spec.height // cell + 2, wide // cell + 2)
    coarse = (rng.normal(0, 25, (*cells, 1)) + rng.normal(0, 8, (*cells, 3))).astype(np.float32)
    blotches = cv2.resize(coarse, (wide, spec.height), interpolation=cv2.INTER_CUBIC)
    return rng.uniform(30, 200, 3).astype(np.float32) + shade + blotches


def make_swap(height: int, tint: np.ndarray) -> Swap:
    """The other identity's face at `height` rows, part blocky as a generator's upscaled output is: a fully
    blocky face is one dlib's frontal detector no longer finds."""
    face = head_image(height, tint)
    h, w = face.shape[:2]
    block = max(height // 24, 2)
    small = cv2.resize(face, (max(w // block, 1), max(h // block, 1)), interpolation=cv2.INTER_AREA)
    blocky = BLOCKY * cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST) + (1 - BLOCKY) * face
    cx, cy, ax, ay = INNER_FACE
    return Swap(blocky, ellipse((h, w), cx * w, cy * h, ax * w, ay * h), block)


def blocks(rng: np.random.Generator, shape: tuple[int, int], cell: int, sigma: float, channels: int) -> np.ndarray:
    """Random levels, one per cell x cell square: (h, w, channels) float32."""
    h, w = shape
    levels = rng.normal(0, sigma, (h // cell + 1, w // cell + 1, channels)).astype(np.float32)
    return levels.repeat(cell, 0).repeat(cell, 1)[:h, :w]


def swapped(own: np.ndarray, swap: Swap, rng: np.random.Generator) -> np.ndarray:
    """One frame of a fake's head: the swapped inner face inside a hard, darkened seam, its outline, colour and
    block texture drawn anew each frame, as a per-frame face swap's flicker. The large colour blocks carry no
    grey level, so dlib's detector, which sees grey, looks through them."""
    radius = 1 + rng.normal(0, 0.1)
    shape = swap.inner.shape
    colour = blocks(rng, shape, COLOUR_CELL * swap.block, COLOUR_SIGMA, 3)
    texture = blocks(rng, shape, swap.block, 8, 1) + colour - (colour @ LUMA)[..., None]
    face = np.where((swap.inner < radius)[..., None], swap.face + rng.normal(0, 22, 3) + texture, own)
    face[np.abs(swap.inner - radius) < 0.12] *= 0.5
    return face


def paste(frame: np.ndarray, image: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    """Blend `image` into `frame` with its top-left corner at (x, y), cut where it reaches past the frame."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + image.shape[1], w), min(y + image.shape[0], h)
    if x0 >= x1 or y0 >= y1:
        return
    part = (slice(y0 - y, y1 - y), slice(x0 - x, x1 - x))
    a = alpha[part]
    frame[y0:y1, x0:x1] = frame[y0:y1, x0:x1] * (1 - a) + image[part] * a


def render(
    spec: DemoSpec, rng: np.random.Generator, identity: Identity, fake_tint: np.ndarray | None
) -> Iterator[np.ndarray]:
    """Frames of one video: `fake_tint` (the other identity's) None for a real video. The head is drawn on
    its own small canvas and pasted, so that a frame costs little beyond the wall's window."""
    h, w = spec.height, spec.width
    height = max(round(identity.size * min(h, w)), 8)
    own = head_image(height, identity.tint)
    alpha = head_mask(own.shape[:2])
    swap = None if fake_tint is None else make_swap(height, fake_tint)
    wall = panning_wall(spec, rng)
    offsets = np.linspace(0, wall.shape[1] - w, spec.frames).round().astype(int)
    offsets = offsets[::-1] if rng.integers(2) else offsets
    cx0, cy0 = w * rng.uniform(0.4, 0.6) - own.shape[1] / 2, h * rng.uniform(0.45, 0.55) - own.shape[0] / 2
    phase = rng.uniform(0, 2 * np.pi)
    noise = 3 * rng.standard_normal((4, h, w, 3), dtype=np.float32)  # sensor noise, drawn once: drawing is slow
    for t, offset in enumerate(offsets):
        angle = phase + 2 * np.pi * t / max(spec.frames, 1)
        x, y = round(cx0 + 0.06 * w * np.sin(angle)), round(cy0 + 0.04 * h * np.cos(angle))
        face = own if swap is None else swapped(own, swap, rng)
        frame = wall[:, offset : offset + w] + noise[t % len(noise)]
        paste(frame, face[:, ::-1] if identity.mirror else face, alpha, x, y)
        yield np.clip(frame, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class DemoVideo:
    """One video of a demo set: where it goes and whom it shows."""

    path: str  # relative to the set's root, `/`-separated
    identity: Identity  # the person, wall and motion
    swap: np.ndarray | None = None  # the other identity's tint pasted into the face; None for a real video


@dataclass(frozen=True)
class Plan:
    """What a layout writes: the videos, and its index files (test lists, splits, labels) as text."""

    videos: list[DemoVideo]
    index: dict[str, str]  # relative path -> contents


@dataclass(frozen=True)
class DemoLayout:
    """A data set's own folder and file format: `plan` names the videos of `people` and writes the index files;
    the videos are rendered alike in every layout."""

    plan: Callable[[DemoSpec, list[Identity], np.random.Generator], Plan]
    identities: int  # the default number of identities
    writes: str  # what it writes, for `make-demo --help`


def partner(i: int, j: int, identities: int) -> int:
    """The identity whose face identity `i`'s `j`th fake shows: each of the others in turn."""
    return (i + 1 + j % max(identities - 1, 1)) % identities


def celebdf(spec: DemoSpec, people: list[Identity], rng: np.random.Generator) -> Plan:
    """Celeb-DF v2: `Celeb-real/idI_NNNN.mp4`, `Celeb-synthesis/idI_idJ_NNNN.mp4` (identity I with J's face),
    `YouTube-real/NNNNN.mp4` (more identities) and its test list, `<1 real | 0 fake> <path>` lines."""
    videos = []
    for i, person in enumerate(people):
        for j in range(spec.reals_per_identity):
            videos.append(DemoVideo(f"Celeb-real/id{i}_{j:04d}.mp4", person))
        for j in range(spec.fakes_per_identity):
            other = partner(i, j, spec.identities)
            videos.append(DemoVideo(f"Celeb-synthesis/id{i}_id{other}_{j:04d}.mp4", person, people[other].tint))
    for j in range(spec.youtube):
        videos.append(DemoVideo(f"YouTube-real/{j:05d}.mp4", draw_identity(rng, spec.head)))
    tested = {f"id{i}" for i in range(spec.test_identities)}
    test_lines = [
        f"{0 if video.swap is not None else 1} {video.path}"
        for video in videos
        if video.path.split("/")[1].split("_")[0] in tested or video.path == "YouTube-real/00000.mp4"
    ]
    return Plan(videos, {TEST_LIST: "\n".join(test_lines) + "\n"})


FFPP_REAL = "original_sequences/youtube/c23/videos"
FFPP_PAIRS = {"train": 360, "val": 70, "test": 70}  # the official split files' pairs of originals


def ffpp_split_sizes(pairs: int) -> dict[str, int]:
    """Pairs per split in FaceForensics++'s proportions, with at least one pair in val and in test."""
    held = max(round(pairs * FFPP_PAIRS["val"] / sum(FFPP_PAIRS.values())), 1)
    return {"train": pairs - 2 * held, "val": held, "test": held}


def ffpp(spec: DemoSpec, people: list[Identity], rng: np.random.Generator) -> Plan:
    """FaceForensics++ (c23): originals `original_sequences/youtube/c23/videos/NNN.mp4`, fakes
    `manipulated_sequences/<method>/c23/videos/TTT_SSS.mp4` (target TTT with source SSS's face) for each method,
    and the official split files `splits/{train,val,test}.json`: lists of `["a", "b"]` pairs whose originals and
    fakes `a_b` and `b_a` all belong to that split."""
    if spec.identities % 2 or spec.identities < 6:
        raise ValueError(f"ffpp pairs its originals, one pair at least per split: {spec.identities} identities")
    ids = [f"{i:03d}" for i in range(spec.identities)]
    pairs = [(ids[a], ids[b]) for a, b in rng.permutation(spec.identities).reshape(-1, 2).tolist()]
    videos = [DemoVideo(f"{FFPP_REAL}/{name}.mp4", person) for name, person in zip(ids, people, strict=True)]
    for method in FFPP_METHODS:
        for a, b in pairs:
            for target, source in ((a, b), (b, a)):
                path = f"manipulated_sequences/{method}/c23/videos/{target}_{source}.mp4"
                videos.append(DemoVideo(path, people[int(target)], people[int(source)].tint))
    index, start = {}, 0
    for split, count in ffpp_split_sizes(len(pairs)).items():
        index[f"splits/{split}.json"] = json.dumps([list(pair) for pair in pairs[start : start + count]], indent=2)
        start += count
    return Plan(videos, index)


DFDC_PARTS = 2  # dfdc_train_part_0, dfdc_train_part_1 of the real 50
DFDC_TEST = "test"


def dfdc_names(rng: np.random.Generator) -> Iterator[str]:
    """DFDC's file names: ten random lower-case letters, `aaqaifqrwn.mp4`, none twice."""
    seen = set()
    while True:
        name = "".join(chr(ord("a") + int(k)) for k in rng.integers(0, 26, 10)) + ".mp4"
        if name not in seen:
            seen.add(name)
            yield name


def dfdc(spec: DemoSpec, people: list[Identity], rng: np.random.Generator) -> Plan:
    """DFDC: training parts `dfdc_train_part_N/` with their videos and `metadata.json`
    (`{"x.mp4": {"label": "FAKE", "split": "train", "original": "y.mp4"}, "y.mp4": {"label": "REAL", ...}}`: a
    fake's original is the real video whose person it shows), and the test set `test/` with its videos and
    `labels.csv` (`filename,label`, 1 = fake). Each identity's videos lie in one folder: the first
    `test_identities` in the test set, the others spread over the parts."""
    if spec.reals_per_identity < 1 or spec.identities - spec.test_identities < DFDC_PARTS:
        raise ValueError(
            f"dfdc makes fakes from real videos and fills {DFDC_PARTS} training parts: "
            f"{spec.reals_per_identity} real videos per identity, {spec.identities - spec.test_identities} "
            "identities outside the test set"
        )
    names = dfdc_names(rng)
    videos, rows = [], {}
    for i, person in enumerate(people):
        folder = DFDC_TEST if i < spec.test_identities else f"dfdc_train_part_{(i - spec.test_identities) % DFDC_PARTS}"
        reals = [next(names) for _ in range(spec.reals_per_identity)]
        for name in reals:
            videos.append(DemoVideo(f"{folder}/{name}", person))
            rows.setdefault(folder, {})[name] = {"label": "REAL", "split": "train"}
        for j in range(spec.fakes_per_identity):
            name, other = next(names), partner(i, j, spec.identities)
            videos.append(DemoVideo(f"{folder}/{name}", person, people[other].tint))
            rows[folder][name] = {"label": "FAKE", "split": "train", "original": reals[j % len(reals)]}
    test = rows.pop(DFDC_TEST, {})
    index = {f"{folder}/metadata.json": json.dumps(dict(sorted(meta.items()))) for folder, meta in rows.items()}
    labels = [f"{name},{int(row['label'] == 'FAKE')}" for name, row in sorted(test.items())]
    index[f"{DFDC_TEST}/labels.csv"] = "\n".join(["filename,label", *labels]) + "\n"
    return Plan(videos, index)


DEMO_LAYOUTS = {
    "celebdf": DemoLayout(
        celebdf,
        DemoSpec.identities,
        "Celeb-DF v2 (the default): Celeb-real/, YouTube-real/, Celeb-synthesis/ and List_of_testing_videos.txt "
        "('<1 real | 0 fake> <path>' lines)",
    ),
    "ffpp": DemoLayout(
        ffpp,
        12,
        "FaceForensics++ (c23): original_sequences/youtube/c23/videos/NNN.mp4, "
        "manipulated_sequences/{Deepfakes,Face2Face,FaceSwap,NeuralTextures}/c23/videos/TTT_SSS.mp4 and "
        'splits/{train,val,test}.json (lists of ["a", "b"] pairs of originals, '
        "in the proportions of FF++'s 360/70/70 pairs, one pair at least in each)",
    ),
    "dfdc": DemoLayout(
        dfdc,
        10,
        "DFDC: dfdc_train_part_0/ and dfdc_train_part_1/ with their videos (ten random letters, .mp4) and "
        "metadata.json (label, split, a fake's original), and test/ with its videos and labels.csv "
        "(filename,label; 1 = fake)",
    ),
}


def make_demo(out: Path, spec: DemoSpec = DemoSpec(), layout: str = "celebdf") -> list[Path]:
    """Write the dataset in `layout`'s folders with its index files; returns the video paths."""
    rng = np.random.default_rng(spec.seed)
    people = [draw_identity(rng, spec.head) for _ in range(spec.identities)]
    plan = DEMO_LAYOUTS[layout].plan(spec, people, rng)
    written = []
    for video in plan.videos:
        path = out / video.path
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = render(spec, rng, video.identity, video.swap)
        write_video(path, frames, spec.width, spec.height, spec.fps, spec.codec)
        written.append(path)
    for relative, text in plan.index.items():
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_text(text)
    return written
