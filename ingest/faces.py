"""Face-centred crops of a clip's sampled frames: detect, follow one face, smooth, crop square.

The field crops the face before training (FaceForensics++: dlib's frontal face detector, box enlarged 1.3
times), because in a whole Celeb-DF frame the face, and the blending seams that give a fake away, shrink
to a few dozen pixels at 224x224. Here it happens on the sampled frames of the decode pass itself:
dlib's HOG detector on small grey copies of the frames (the whole frame until a face shows, then, in every
frame, the part around the face, shrunk by whole steps of dlib's own pyramid to where the face is just large
enough), one face track per video (the largest face that persists, linked frame to frame by how near its boxes
lie for their size), gaps filled from the nearest detections, the size averaged over neighbouring frames (dlib's
boxes come in 20% steps), the centre smoothed only over frames close in time (frames far apart are each where
their face is), and a square of `margin` times the box's longer side, which `ingest.frames.resize_windows`
cuts and resizes.
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
# Sampled frames close in time show the face nearly still, and their mean removes the detector's jitter; frames
# further apart (16 of a 10 s video lie 0.6 s apart) are each located on their own.
SMOOTH_REACH = 6  # source frames: neighbours this close enter a frame's local linear fit of its box's centre...
SMOOTH_RADIUS = 2  # ...at most this many sampled frames on each side
# dlib's box comes in steps of 6/5, more than a face's size changes between sampled frames: its size is averaged
# (in log) over this many sampled frames on each side, however far apart.
SIZE_RADIUS = 3
# dlib's HOG detector scans an 80 px window over a pyramid of the image, each level 5/6 the size of the last: its
# boxes come in steps of 6/5 (73, 88, 105, 127, 152, 182, 219 px ...) at a frame's own size, and its cost follows
# the pixels it looks at.
LEVEL = 6 / 5
FOLLOW_BOX = 88  # a followed face is looked at where its box is this size, a level above the smallest...
FOLLOW_REACH = 0.5  # ...this many of its sides around where it should be
SEARCH_SIDE = 240  # a search looks first at the frame halved to about this shorter side, where large faces show


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

    Every frame is looked at. Until one shows a face, each is searched whole (`_search`). After, the face
    followed is looked for around where its last two detections put it, at a size on dlib's own pyramid where
    its box is about FOLLOW_BOX px: the look costs little whatever the frame's size, and the box comes in the
    steps a detection in the whole frame at full size gives. Where it is not there, the whole frame is looked
    at at that size.
    """
    follower = Follower(frames)
    for t in range(len(frames)):
        follower.look(t)
    return follower.found


@dataclass
class Follower:
    """What the frames of one clip have shown so far: the faces found, and the face followed."""

    frames: np.ndarray | torch.Tensor
    found: list[np.ndarray] = field(default_factory=list)  # each frame's face boxes, in order
    followed: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> the followed face's box

    def look(self, t: int) -> None:
        """Frame `t` searched whole, or, once a face is followed, looked at around where it should be."""
        frame = self.frames[t]
        seen = sorted(self.followed)[-2:]
        if not seen:
            boxes = _search(frame)
            if len(boxes):  # measured again where a followed face is, so that its box comes in the same steps
                boxes = np.stack([_nearest(_around(frame, box), box) for box in boxes])
            self._keep(boxes, max(boxes, key=_side) if len(boxes) else None)
            return
        expected = self._predict(seen, t)
        boxes = _around(frame, expected)
        boxes = boxes if len(boxes) else _find(frame, follow_scale(_side(expected)), _whole(frame))
        self._keep(boxes, _nearest(boxes, expected) if len(boxes) else None)

    def _predict(self, seen: list[int], t: int) -> np.ndarray:
        """The followed face's box in frame `t`: its centre moved on from its last detection as it moved
        before, its size that of the last detection (the detector's steps would make a trend of its size)."""
        last = self.followed[seen[-1]]
        if len(seen) == 1:
            return last
        first = self.followed[seen[0]]
        shift = (_centre(last) - _centre(first)) * (t - seen[-1]) / (seen[-1] - seen[0])
        return last + np.tile(shift, 2)

    def _keep(self, boxes: np.ndarray, followed: np.ndarray | None) -> None:
        if followed is not None:
            self.followed[len(self.found)] = followed
        self.found.append(boxes)


def follow_scale(side: float) -> float:
    """The size, whole steps of dlib's pyramid below the frame's, at which a face boxed `side` px in the frame
    is boxed about FOLLOW_BOX px: a level above the smallest box, so that the face shows there if it shrank a
    step, and on the pyramid, so that its box comes in the same steps as a full-size detection's."""
    return LEVEL ** -max(0, round(np.log(side / FOLLOW_BOX) / np.log(LEVEL)))


def full_size_faces(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    """dlib's faces in a whole frame at its own size, as FaceForensics++'s preprocessing finds them: the
    yardstick the followed face is measured against (bench, tests), which a build cannot afford per frame."""
    return _find(frame, 1.0, _whole(frame))


def _whole(frame: np.ndarray | torch.Tensor) -> tuple[int, int, int, int]:
    return (0, 0, frame.shape[1], frame.shape[0])


def _search(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    """Faces in a whole frame, looked at smallest first: halved from its own size while its shorter side stays
    SEARCH_SIDE or more (cheap, and enough for the large faces most videos show), then at each larger size
    until a face shows, at last at its own, where dlib finds faces from about 80 px."""
    scales = [1.0]
    while min(frame.shape[:2]) * scales[0] / 2 >= SEARCH_SIDE:
        scales.insert(0, scales[0] / 2)
    for scale in scales:
        boxes = _find(frame, scale, _whole(frame))
        if len(boxes):
            break
    return boxes


def _around(frame: np.ndarray | torch.Tensor, box: np.ndarray, again: bool = True) -> np.ndarray:
    """Faces within FOLLOW_REACH sides of `box`, looked at at `follow_scale`. A face the look's edge cuts (it
    moved further than expected) is boxed wrong by dlib, so it is looked at again around where it was seen."""
    height, width = frame.shape[:2]
    reach = (0.5 + FOLLOW_REACH) * _side(box)
    centre = _centre(box)
    x0, y0 = np.clip(np.round(centre - reach), 0, [width, height]).astype(int).tolist()
    x1, y1 = np.clip(np.round(centre + reach), 0, [width, height]).astype(int).tolist()
    if x1 <= x0 or y1 <= y0:
        return np.empty((0, 4))
    region = (x0, y0, x1, y1)
    boxes = _find(frame, follow_scale(_side(box)), region)
    inner = np.array([x0 > 0, y0 > 0, x1 < width, y1 < height])  # the look's edges that are not the frame's
    for i, found in enumerate(boxes):
        if again and _cut(found, region, inner):
            boxes[i] = _nearest(_around(frame, found, again=False), found)
    return boxes


def _cut(box: np.ndarray, region: tuple[int, int, int, int], inner: np.ndarray) -> bool:
    """Whether `box` reaches within a tenth of its side of one of the region's `inner` edges."""
    near = 0.1 * _side(box)
    x0, y0, x1, y1 = region
    reaches = np.array([box[0] < x0 + near, box[1] < y0 + near, box[2] > x1 - near, box[3] > y1 - near])
    return bool((reaches & inner).any())


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


def fill_gaps(boxes: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Frames without a detection take their neighbours' boxes: interpolated between (by source frame number),
    or the nearest at the ends."""
    seen = np.flatnonzero(~np.isnan(boxes[:, 0]))
    return np.stack([np.interp(indices, indices[seen], boxes[seen, k]) for k in range(4)], axis=1)


def smooth(values: np.ndarray, indices: np.ndarray, radius: int, reach: float = np.inf, degree: int = 1) -> np.ndarray:
    """A local polynomial fit (a line: steady motion stays unbent; a constant: the mean) over the sampled frames
    within `radius` samples and `reach` source frames of each; a frame with no neighbour that close stays as it
    was located."""
    out = np.asarray(values, dtype=np.float64).copy()
    for t in range(len(values)):
        near = np.arange(max(0, t - radius), min(len(values), t + radius + 1))
        near = near[np.abs(indices[near] - indices[t]) <= reach]
        if len(np.unique(indices[near])) > degree:
            out[t] = np.polyval(np.polyfit(indices[near], values[near], degree), indices[t])
    return out


def crop_windows(boxes: np.ndarray, indices: np.ndarray, margin: float, height: int, width: int) -> np.ndarray:
    """Squares of margin x the box's longer side (averaged in log over SIZE_RADIUS frames a side), centred on
    the box (smoothed where frames lie within SMOOTH_REACH), moved inside the frame where they fit; (T, 4) int
    x0, y0, x1, y1."""
    centre_x = smooth((boxes[:, 0] + boxes[:, 2]) / 2, indices, SMOOTH_RADIUS, SMOOTH_REACH)
    centre_y = smooth((boxes[:, 1] + boxes[:, 3]) / 2, indices, SMOOTH_RADIUS, SMOOTH_REACH)
    longer = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * margin
    side = np.exp(smooth(np.log(np.maximum(longer, 2)), indices, SIZE_RADIUS, degree=0))
    side = np.round(side).astype(np.int64)
    x0 = _inside(np.round(centre_x - side / 2).astype(np.int64), side, width)
    y0 = _inside(np.round(centre_y - side / 2).astype(np.int64), side, height)
    return np.stack([x0, y0, x0 + side, y0 + side], axis=1)


def _inside(start: np.ndarray, side: np.ndarray, limit: int) -> np.ndarray:
    """Shift each window into [0, limit); one larger than the frame is centred on it (and padded)."""
    fits = side <= limit
    return np.where(fits, np.clip(start, 0, np.maximum(limit - side, 0)), (limit - side) // 2)


def face_crops(frames: np.ndarray | torch.Tensor, indices: np.ndarray, settings: FaceSettings) -> FaceCrops | None:
    """The crop window of each frame of (T, H, W, 3) RGB, source frames `indices`, or None where no frame shows
    a face."""
    boxes = track(detect(frames))
    if boxes is None:
        return None
    detected = int((~np.isnan(boxes[:, 0])).sum())
    height, width = frames.shape[1:3]
    indices = np.asarray(indices, dtype=np.float64)
    return FaceCrops(crop_windows(fill_gaps(boxes, indices), indices, settings.margin, height, width), detected)
