"""Face-centred crop windows on frames made from a real photograph (scikit-image's astronaut) at known places."""

import cv2
import numpy as np
import pytest
from skimage import data

from ingest.faces import FaceSettings, crop_windows, cut, face_crops, fill_gaps, smooth

PATCH = (40, 240, 120, 320)  # rows and columns of the astronaut photograph around her face
FACE_CENTRE = np.array([(179 + 266) / 2 - 120, (83 + 170) / 2 - 40])  # dlib's box on the photograph, in the patch


def face_patch(scale: float = 1.0, mirror: bool = False) -> np.ndarray:
    top, bottom, left, right = PATCH
    patch = data.astronaut()[top:bottom, left:right]
    patch = patch[:, ::-1] if mirror else patch
    side = round(200 * scale)
    return np.ascontiguousarray(cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA))


def frames_with(
    places: list[tuple[int, int]], width: int = 942, height: int = 500, patch=None, extra=None
) -> np.ndarray:
    """One frame per (x, y) top-left corner of the face patch on a textured background; `extra` another patch
    at a fixed place."""
    patch = face_patch() if patch is None else patch
    rng = np.random.default_rng(0)
    background = rng.integers(60, 120, (height, width, 3), dtype=np.uint8)
    frames = np.repeat(background[None], len(places), axis=0)
    for frame, (x, y) in zip(frames, places, strict=True):
        if extra is not None:
            other, (ox, oy) = extra
            frame[oy : oy + other.shape[0], ox : ox + other.shape[1]] = other
        frame[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    return frames


def moving(width: int, height: int, count: int = 16, side: int = 200) -> list[tuple[int, int]]:
    xs = np.linspace(0, width - side, count).astype(int)
    ys = np.linspace(0, height - side, count).astype(int)
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


def assert_centred(crops, places, scale: float = 1.0) -> None:
    """The known face lies inside every window, its centre within a tenth of the window's side of the centre."""
    for (x0, y0, x1, y1), (x, y) in zip(crops.boxes, places, strict=True):
        side = x1 - x0
        cx, cy = x + FACE_CENTRE[0] * scale, y + FACE_CENTRE[1] * scale
        assert abs(cx - (x0 + x1) / 2) <= side / 10 and abs(cy - (y0 + y1) / 2) <= side / 10
        assert x0 < cx < x1 and y0 < cy < y1


@pytest.mark.parametrize("width, height", [(942, 500), (943, 501), (360, 640)], ids=["celebdf", "odd", "portrait"])
def test_a_moving_face_is_followed_and_centred_in_every_frame(width, height):
    places = moving(width, height)
    crops = face_crops(frames_with(places, width, height), FaceSettings())
    assert crops is not None and crops.detected >= 14
    assert_centred(crops, places)
    x0, y0, x1, y1 = crops.boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= width).all() and (y1 <= height).all()
    sides = x1 - x0
    assert (sides == y1 - y0).all() and np.ptp(sides) <= 0.2 * sides.mean()


def test_a_frame_without_a_face_is_none():
    assert face_crops(frames_with([(0, 0)] * 4, patch=np.full((10, 10, 3), 90, np.uint8)), FaceSettings()) is None


def test_of_two_faces_the_larger_is_kept_in_every_frame():
    places = moving(942, 500)
    small = (face_patch(0.8, mirror=True), (700, 20))
    crops = face_crops(frames_with(places, extra=small), FaceSettings())
    assert crops is not None
    assert_centred(crops, places)


def test_frames_without_a_detection_take_their_neighbours_boxes():
    boxes = np.array([[np.nan] * 4, [10, 10, 50, 50], [np.nan] * 4, [30, 10, 70, 50], [np.nan] * 4], dtype=float)
    filled = fill_gaps(boxes)
    assert filled[0].tolist() == [10, 10, 50, 50] and filled[2].tolist() == [20, 10, 60, 50]
    assert filled[4].tolist() == [30, 10, 70, 50]


def test_smoothing_keeps_steady_motion_and_flattens_jitter():
    steady = np.arange(16, dtype=float) * 7
    np.testing.assert_allclose(smooth(steady), steady, atol=1e-9)
    jitter = np.where(np.arange(16) % 2, 3.0, -3.0) + 100
    assert np.abs(smooth(jitter)[2:-2] - 100).max() < 1.5


def test_a_window_larger_than_the_frame_is_centred_and_padded():
    boxes = np.array([[10, 10, 90, 90]] * 3, dtype=float)
    windows = crop_windows(boxes, 1.3, height=60, width=300)  # side 104 > 60 rows
    assert (windows[:, 3] - windows[:, 1] == 104).all() and (windows[:, 1] == (60 - 104) // 2).all()
    frames = np.full((3, 60, 300, 3), 255, np.uint8)
    crop = cut(frames, windows)[0]
    assert crop.shape == (104, 104, 3) and crop[0].max() == 0 and crop[52, 52].min() == 255
