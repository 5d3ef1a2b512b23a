"""`ingest make-demo`: a small Celeb-DF-shaped dataset of real video files.

Each identity has a face-like ellipse of its own tone on a moving background. Real videos keep the
face's tone and soft outline; fakes paste another identity's tone inside a hard, darkened blending seam,
with blocky texture, and the colour and outline flicker from frame to frame: the spatial and temporal
artefacts a CNN can learn from a few dozen videos.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from ingest.discover import TEST_LIST


@dataclass(frozen=True)
class DemoSpec:
    identities: int = 16
    reals_per_identity: int = 2
    fakes_per_identity: int = 4
    youtube: int = 4
    frames: int = 48
    width: int = 256
    height: int = 144
    fps: int = 25
    codec: str = "libx264"
    test_identities: int = 1
    seed: int = 0


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


def render(spec: DemoSpec, rng: np.random.Generator, tone: np.ndarray, fake_tone: np.ndarray | None):
    """Frames of one video: `fake_tone` None for a real video."""
    h, w = spec.height, spec.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    background = rng.uniform(30, 200, 3).astype(np.float32)
    slope = rng.uniform(-0.5, 0.5, 3).astype(np.float32)
    cx0, cy0 = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
    ax, ay = w * rng.uniform(0.12, 0.16), h * rng.uniform(0.25, 0.32)
    phase = rng.uniform(0, 2 * np.pi)
    gradient = background + 0.3 * xx[..., None] * slope  # the background pans: add 0.6 * t * slope per frame
    noise = 3 * rng.standard_normal((4, h, w, 3), dtype=np.float32)  # sensor noise, drawn once: drawing is slow
    for t in range(spec.frames):
        angle = phase + 2 * np.pi * t / max(spec.frames, 1)
        cx, cy = cx0 + 0.06 * w * np.sin(angle), cy0 + 0.04 * h * np.cos(angle)
        frame = gradient + 0.6 * t * slope
        d = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2
        if fake_tone is None:
            mask, face = np.clip((1.2 - d) / 0.4, 0, 1), tone
        else:
            radius = 1 + rng.normal(0, 0.12)
            mask = (d < radius).astype(np.float32)
            blocks = rng.normal(0, 30, (h // 16 + 1, w // 16 + 1, 1)).repeat(16, 0).repeat(16, 1)[:h, :w]
            face = fake_tone + rng.normal(0, 22, 3) + blocks
            seam = np.abs(d - radius) < 0.15
        frame = frame * (1 - mask[..., None]) + face * mask[..., None]
        if fake_tone is not None:
            frame[seam] *= 0.45
        for ex in (-0.4, 0.4):
            eye = ((xx - cx - ex * ax) / (0.15 * ax)) ** 2 + ((yy - cy + 0.3 * ay) / (0.1 * ay)) ** 2 < 1
            frame[eye] = 25
        frame += noise[t % len(noise)]
        yield np.clip(frame, 0, 255).astype(np.uint8)


def make_demo(out: Path, spec: DemoSpec = DemoSpec()) -> list[Path]:
    """Write the dataset in Celeb-DF v2's layout with its official test list; returns the video paths."""
    rng = np.random.default_rng(spec.seed)
    tones = rng.uniform(60, 230, (spec.identities, 3)).astype(np.float32)
    videos: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for i in range(spec.identities):
        for j in range(spec.reals_per_identity):
            videos.append((f"Celeb-real/id{i}_{j:04d}.mp4", tones[i], None))
        for j in range(spec.fakes_per_identity):
            other = (i + 1 + j % max(spec.identities - 1, 1)) % spec.identities
            videos.append((f"Celeb-synthesis/id{i}_id{other}_{j:04d}.mp4", tones[i], tones[other]))
    for j in range(spec.youtube):
        videos.append((f"YouTube-real/{j:05d}.mp4", rng.uniform(60, 230, 3).astype(np.float32), None))
    written = []
    test_lines = []
    for relative, tone, fake_tone in videos:
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, render(spec, rng, tone, fake_tone), spec.width, spec.height, spec.fps, spec.codec)
        written.append(path)
        identity = relative.split("/")[1].split("_")[0]
        if identity in {f"id{i}" for i in range(spec.test_identities)} or relative == "YouTube-real/00000.mp4":
            test_lines.append(f"{0 if fake_tone is not None else 1} {relative}")
    (out / TEST_LIST).write_text("\n".join(test_lines) + "\n")
    return written
