"""Face-centred crops of a clip's sampled frames: detect, follow one face, smooth, crop square.

The field crops the face before training (FaceForensics++: dlib's frontal face detector, box enlarged 1.3
times), because in a whole Celeb-DF frame the face, and the blending seams that give a fake away, shrink
to a few dozen pixels at 224x224. Here it happens on the sampled frames of the decode pass itself:
dlib's HOG detector on small grey copies of the frames (the whole frame until a face shows, then the part
around the face, shrunk to where it is just large enough), one face track per video (the largest face that
persists, linked frame to frame by how near its boxes lie for their size), gaps filled from the nearest
detections, centre and size smoothed so the crop does not jitter, and a square of `margin` times the box's
longer side, which `ingest.frames.resize_windows` cuts and resizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
# dlib's HOG detector scans an 80 px window over a pyramid of the image shrunk by 5/6 a step: it reports faces
# from about 73 px, and its cost follows the pixels it looks at.
FOUND_SIDE = 80  # a face is looked at this size or larger
SMALLEST_FACE = 80  # a search finds every face whose box is this large in the source frame, at any frame size
SEARCH_SIDE = 3 * FOUND_SIDE  # a search looks first at the frame shrunk to this shorter side, where large faces show
FOLLOW_REACH = 0.5  # a followed face is looked for this many of its sides around where it should be
STRIDE = 2  # the frames looked at first: a face's track between them is often straight enough to pass over...
STILL = 0.05  # ...where it strays from a straight line by less than this share of the face's side


@dataclass(frozen=True)
class FaceSettings:
    margin: float = 1.3  # crop side over the face box's longer side
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


def detect(frames: np.ndarray | torch.Tensor) -> list[np.ndarray]:
    """Face boxes (k, 4) float x0, y0, x1, y1 in source pixels, for each RGB frame of (T, H, W, 3).

    Every other frame (and the last) is looked at first, in order. Until one shows a face, each is searched
    whole, at a size where every face of SMALLEST_FACE px is found. After, the largest face found is followed:
    looked for only around where its last two detections put it, at one scale for the whole track where it
    is about FOUND_SIDE px, which costs little whatever the frame's size and keeps its box from jumping
    between the detector's scales; where it is not there, the whole frame is looked at at that scale. Then
    the frames between: one where the face's track bends so little that its neighbours' mean strays less than
    STILL of a side from it takes that mean, unlooked at; any other is looked at around it. Without a face in
    the first frames, all are searched.
    """
    follower = Follower(frames)
    count = len(frames)
    first = sorted({*range(0, count, STRIDE), count - 1})
    between = [t for t in range(count) if t not in first]
    for t in first:
        follower.look(t)
    for t in between:
        if follower.followed:
            follower.between(t)
        else:
            follower.look(t)
    return [follower.found.get(t, np.empty((0, 4))) for t in range(count)]


@dataclass
class Follower:
    """What the frames of one clip have shown so far: the faces found, and the face followed."""

    frames: np.ndarray | torch.Tensor
    found: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> its face boxes
    followed: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> the followed face's box
    scale: float = 1.0  # the followed face is looked at this many times the frame's size

    def look(self, t: int) -> None:
        """Frame `t` searched whole, or, once a face is followed, looked at around where it should be."""
        frame = self.frames[t]
        seen = sorted(self.followed)[-2:]
        if seen:
            boxes = _around(frame, self._predict(seen, t), self.scale)
            boxes = boxes if len(boxes) else _find(frame, self.scale, _whole(frame))
        else:
            boxes = _search(frame)
            if len(boxes):  # measured again at the scale the face will be followed at
                self.scale = min(1.0, FOUND_SIDE / max(_side(box) for box in boxes))
                boxes = np.stack([_nearest(_around(frame, box, self.scale), box) for box in boxes])
        self._keep(t, boxes)

    def between(self, t: int) -> None:
        """Frame `t`, between two looked at: their mean where the track runs straight, else looked at around it."""
        near = [self.followed[n] for n in (t - 1, t + 1) if n in self.followed]
        if not near:
            return
        box = np.mean(near, axis=0)
        self._keep(t, box[None] if self._straight(t) else _around(self.frames[t], box, self.scale))

    def _straight(self, t: int) -> bool:
        """Whether the followed face's track bends so little around frame `t` (its second difference over the
        looked-at frames nearest) that the mean of its neighbours lies within STILL of its side of it."""
        for points in ((t - 3, t - 1, t + 1), (t - 1, t + 1, t + 3)):
            if all(n in self.followed for n in points):
                before, middle, after = (self.followed[n] for n in points)
                return np.abs(before - 2 * middle + after).max() / 8 <= STILL * _side(middle)
        return False

    def _predict(self, seen: list[int], t: int) -> np.ndarray:
        """The followed face's box in frame `t`, moved on from its last detection as it moved before."""
        last = self.followed[seen[-1]]
        if len(seen) == 1:
            return last
        first = self.followed[seen[0]]
        return last + (last - first) * (t - seen[-1]) / (seen[-1] - seen[0])

    def _keep(self, t: int, boxes: np.ndarray) -> None:
        self.found[t] = boxes
        if len(boxes):
            self.followed[t] = max(boxes, key=_side)


def _whole(frame: np.ndarray | torch.Tensor) -> tuple[int, int, int, int]:
    return (0, 0, frame.shape[1], frame.shape[0])


def _search(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    """Faces in a whole frame: first shrunk to SEARCH_SIDE (cheap, and enough for the large faces most videos
    show), then where none shows there, at the size that finds faces of SMALLEST_FACE px."""
    height, width = frame.shape[:2]
    scales = {min(1.0, SEARCH_SIDE / min(height, width)), min(1.0, FOUND_SIDE / SMALLEST_FACE)}
    for scale in sorted(scales):
        boxes = _find(frame, scale, _whole(frame))
        if len(boxes):
            break
    return boxes


def _around(frame: np.ndarray | torch.Tensor, box: np.ndarray, scale: float) -> np.ndarray:
    """Faces within FOLLOW_REACH sides of `box`, the frame looked at `scale` times its size."""
    height, width = frame.shape[:2]
    reach = (0.5 + FOLLOW_REACH) * _side(box)
    centre = _centre(box)
    x0, y0 = np.clip(np.round(centre - reach), 0, [width, height]).astype(int).tolist()
    x1, y1 = np.clip(np.round(centre + reach), 0, [width, height]).astype(int).tolist()
    if x1 <= x0 or y1 <= y0:
        return np.empty((0, 4))
    return _find(frame, scale, (x0, y0, x1, y1))


def _nearest(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The one of `boxes` nearest `box`, or `box` where there is none."""
    if not len(boxes):
        return box
    return min(boxes, key=lambda other: link_distance(other, box))


def _centre(box: np.ndarray) -> np.ndarray:
    return (box[:2] + box[2:]) / 2


def _find(frame: np.ndarray | torch.Tensor, scale: float, region: tuple[int, int, int, int]) -> np.ndarray:
    """dlib's frontal faces in `region` (x0, y0, x1, y1) of an RGB frame looked at `scale` times its size, in
    the frame's pixels."""
    x0, y0, x1, y1 = region
    grey = working_copy(frame[y0:y1, x0:x1], scale)
    boxes = [(r.left(), r.top(), r.right() + 1, r.bottom() + 1) for r in _detector()(grey, 0)]
    ratio = np.array([(x1 - x0) / grey.shape[1], (y1 - y0) / grey.shape[0]] * 2)
    return np.array(boxes, dtype=np.float64).reshape(-1, 4) * ratio + [x0, y0, x0, y0]


def working_copy(image: np.ndarray | torch.Tensor, scale: float) -> np.ndarray:
    """A grey uint8 copy (h, w) on the host of an RGB image (H, W, 3), `scale` times its size (at most 1).

    An image in GPU memory is shrunk there, so that only the small grey copy crosses to the host.
    """
    height, width = image.shape[:2]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if isinstance(image, torch.Tensor) and image.device.type != "cpu":
        rgb = image.permute(2, 0, 1)[None].float()
        if size != (height, width):
            rgb = F.interpolate(rgb, size=size, mode="bilinear", antialias=True, align_corners=False)
        weights = torch.tensor([0.299, 0.587, 0.114], device=rgb.device).view(1, 3, 1, 1)
        return (rgb * weights).sum(dim=1)[0].round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
    grey = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2GRAY)
    if size != (height, width):
        grey = cv2.resize(grey, size[::-1], interpolation=cv2.INTER_AREA)
    return grey


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
    boxes = track(detect(frames))
    if boxes is None:
        return None
    detected = int((~np.isnan(boxes[:, 0])).sum())
    height, width = frames.shape[1:3]
    return FaceCrops(crop_windows(fill_gaps(boxes), settings.margin, height, width), detected)
