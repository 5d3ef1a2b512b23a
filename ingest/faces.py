"""Face-centred crops of a clip's sampled frames: detect, follow one face, smooth, crop square.

The field crops the face before training (FaceForensics++: dlib's frontal face detector, box enlarged 1.3
times), because in a whole Celeb-DF frame the face, and the blending seams that give a fake away, shrink
to a few dozen pixels at 224x224. Here it happens on the sampled frames of the decode pass itself:
dlib's HOG detector on a small grey copy of each frame, one face track per video (the largest face that
persists, linked frame to frame by how near its boxes lie for their size), gaps filled from the nearest
detections, centre and size smoothed so the crop does not jitter, and a square of `margin` times the box's
longer side, which `ingest.frames.resize_windows` cuts and resizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
import torch
import torch.nn.functional as F

NO_FACE_CHOICES = ("squash", "fail")
NO_FACE = "no face in any sampled frame"  # the reason a row fails with under `--no-face fail`
# Sampled frames lie about a second apart in Celeb-DF, where a face can move further than its own width, so
# boxes are linked by how near they are for their size rather than by their overlap.
LINK_DISTANCE = 1.5  # centres at most this many face sides apart (the mean of both) are one face...
LINK_SIZE_RATIO = 2.0  # ...if neither box is this much larger than the other
SMOOTH_RADIUS = 2  # frames on each side in the local linear fit of the box's centre and size
# dlib's HOG detector (an 80 px window) finds frontal faces down to about 50 px; a face scaled to this size
# is still found in every frame of the tests' moving faces.
FOUND_SIDE = 80


@dataclass(frozen=True)
class FaceSettings:
    margin: float = 1.3  # crop side over the face box's longer side
    working_side: int = 640  # frames are scaled down to this longer side for detection
    no_face: str = "squash"  # a video without a face: stored squashed, or failed


FACE_DEFAULTS = FaceSettings()


@dataclass(frozen=True)
class FaceCrops:
    """Square crop windows in source pixels, one per frame: (T, 4) int as x0, y0, x1, y1 (may reach past the
    frame, where the crop is padded), and how many frames had a detection of the tracked face."""

    boxes: np.ndarray
    detected: int


@cache
def _detector():
    import dlib

    return dlib.get_frontal_face_detector()


def detect(frames: np.ndarray | torch.Tensor, working_side: int) -> list[np.ndarray]:
    """Face boxes (k, 4) float x0, y0, x1, y1 in source pixels, for each RGB frame of (T, H, W, 3).

    Once a frame shows a face, the frames after it are looked at smaller, where that face is still
    FOUND_SIDE pixels across: HOG's cost follows the pixels, and Celeb-DF's faces are large, so most frames
    cost a fraction of the first. A frame with no face at that size is looked at again at the working size.
    """
    greys, scale = working_copy(frames, working_side)
    shrink = 1.0
    found = []
    for grey in greys:
        boxes = _find(grey, shrink)
        if not len(boxes) and shrink < 1:
            boxes = _find(grey, 1.0)
        if len(boxes) and shrink == 1:
            shrink = min(1.0, FOUND_SIDE / max(_side(box) for box in boxes))
        found.append(boxes / scale)
    return found


def _find(grey: np.ndarray, shrink: float) -> np.ndarray:
    """dlib's frontal faces in `grey` looked at `shrink` times smaller, in `grey`'s pixels."""
    height, width = grey.shape
    size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
    small = grey if size == (width, height) else cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    boxes = [(r.left(), r.top(), r.right() + 1, r.bottom() + 1) for r in _detector()(small, 0)]
    ratio = np.array([width / size[0], height / size[1]] * 2)
    return np.array(boxes, dtype=np.float64).reshape(-1, 4) * ratio


def working_copy(frames: np.ndarray | torch.Tensor, working_side: int) -> tuple[np.ndarray, float]:
    """Grey uint8 frames (T, h, w) on the host, the longer side at most `working_side`, and their scale.

    Frames in GPU memory are shrunk there, so that only the small grey copy crosses to the host.
    """
    height, width = frames.shape[1:3]
    scale = min(1.0, working_side / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if isinstance(frames, torch.Tensor) and frames.device.type != "cpu":
        rgb = frames.permute(0, 3, 1, 2).float()
        if scale < 1:
            rgb = F.interpolate(rgb, size=size, mode="bilinear", antialias=True, align_corners=False)
        weights = torch.tensor([0.299, 0.587, 0.114], device=rgb.device).view(1, 3, 1, 1)
        grey = (rgb * weights).sum(dim=1).round_().clamp_(0, 255).to(torch.uint8)
        return grey.cpu().numpy(), scale
    greys = [cv2.cvtColor(np.asarray(frame), cv2.COLOR_RGB2GRAY) for frame in frames]
    if scale < 1:
        greys = [cv2.resize(grey, size[::-1], interpolation=cv2.INTER_AREA) for grey in greys]
    return np.stack(greys), scale


def link_distance(a: np.ndarray, b: np.ndarray) -> float:
    """How far apart two boxes' centres are, in face sides; infinite for boxes of too different a size."""
    side_a, side_b = _side(a), _side(b)
    if max(side_a, side_b) > LINK_SIZE_RATIO * min(side_a, side_b):
        return np.inf
    centres = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    return float(np.hypot(*centres) / ((side_a + side_b) / 2))


def _side(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], box[3] - box[1], 1e-9))


def _area(box: np.ndarray) -> float:
    return float(max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1]))


def track(detections: list[np.ndarray]) -> np.ndarray | None:
    """The main face's box in each frame, (T, 4) with NaN where it was not detected; None without any face.

    Each detection, largest first, joins the nearest track (by its latest box) within LINK_DISTANCE, else
    starts a track. The track kept is the one with the largest summed area: persistent and large.
    """
    tracks: list[dict[int, np.ndarray]] = []
    for t, boxes in enumerate(detections):
        taken: set[int] = set()
        for box in sorted(boxes, key=_area, reverse=True):
            scores = [(link_distance(box, list(tr.values())[-1]), i) for i, tr in enumerate(tracks) if i not in taken]
            best = min(scores, default=(np.inf, -1))
            if best[0] <= LINK_DISTANCE:
                tracks[best[1]][t] = box
                taken.add(best[1])
            else:
                tracks.append({t: box})
                taken.add(len(tracks) - 1)
    if not tracks:
        return None
    main = max(tracks, key=lambda tr: sum(_area(box) for box in tr.values()))
    out = np.full((len(detections), 4), np.nan)
    for t, box in main.items():
        out[t] = box
    return out


def fill_gaps(boxes: np.ndarray) -> np.ndarray:
    """Frames without a detection take their neighbours' boxes: interpolated between, or the nearest at the ends."""
    seen = np.flatnonzero(~np.isnan(boxes[:, 0]))
    frames = np.arange(len(boxes))
    return np.stack([np.interp(frames, seen, boxes[seen, k]) for k in range(4)], axis=1)


def smooth(values: np.ndarray, radius: int = SMOOTH_RADIUS) -> np.ndarray:
    """A local linear fit over 2*radius+1 frames: removes the detector's jitter, keeps steady motion unbent."""
    n = len(values)
    out = np.empty_like(values, dtype=np.float64)
    for t in range(n):
        lo, hi = max(0, t - radius), min(n, t + radius + 1)
        x = np.arange(lo, hi)
        if len(x) < 2:
            out[t] = values[t]
            continue
        slope, intercept = np.polyfit(x, values[lo:hi], 1)
        out[t] = slope * t + intercept
    return out


def crop_windows(boxes: np.ndarray, margin: float, height: int, width: int) -> np.ndarray:
    """Squares of side margin x the longer side, centred on the smoothed boxes, moved inside the frame where
    they fit; (T, 4) int x0, y0, x1, y1."""
    centre_x = smooth((boxes[:, 0] + boxes[:, 2]) / 2)
    centre_y = smooth((boxes[:, 1] + boxes[:, 3]) / 2)
    side = np.maximum(smooth(np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * margin), 2)
    side = np.round(side).astype(np.int64)
    x0 = _inside(np.round(centre_x - side / 2).astype(np.int64), side, width)
    y0 = _inside(np.round(centre_y - side / 2).astype(np.int64), side, height)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)


def _inside(start: np.ndarray, side: np.ndarray, limit: int) -> np.ndarray:
    """Shift each window into [0, limit); one larger than the frame is centred on it (and padded)."""
    fits = side <= limit
    return np.where(fits, np.clip(start, 0, np.maximum(limit - side, 0)), (limit - side) // 2)


def face_crops(frames: np.ndarray | torch.Tensor, settings: FaceSettings) -> FaceCrops | None:
    """The crop window of each frame of (T, H, W, 3) RGB, or None where no frame shows a face."""
    boxes = track(detect(frames, settings.working_side))
    if boxes is None:
        return None
    detected = int((~np.isnan(boxes[:, 0])).sum())
    height, width = frames.shape[1:3]
    return FaceCrops(crop_windows(fill_gaps(boxes), settings.margin, height, width), detected)
