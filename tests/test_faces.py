"""Face-centred crop windows on frames made from a real photograph (scikit-image's astronaut) at known places, and
on the demo set's videos, which show that photograph."""

import numpy as np
import pytest
from conftest import FACE_CENTRE, face_patch, frames_with, moving

from ingest.decoders import make_decoder
from ingest.demo import DemoSpec, make_demo
from ingest.faces import (
    SIZE_RADIUS,
    SMOOTH_RADIUS,
    SMOOTH_REACH,
    FaceSettings,
    crop_windows,
    face_crops,
    fill_gaps,
    smooth,
)
from ingest.frames import resize_windows

APART = 20  # source frames between sampled frames: 16 of a 300-frame video


def crops_of(frames, apart: int = APART):
    return face_crops(frames, np.arange(len(frames)) * apart, FaceSettings())


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
    crops = crops_of(frames_with(places, width, height))
    assert crops is not None and crops.detected >= 14
    assert_centred(crops, places)
    x0, y0, x1, y1 = crops.boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= width).all() and (y1 <= height).all()
    sides = x1 - x0
    assert (sides == y1 - y0).all() and np.ptp(sides) <= 0.2 * sides.mean()


@pytest.mark.parametrize("scale", [1.0, 1.7, 2.2], ids=["87px", "150px", "190px"])
def test_a_small_face_in_a_1080p_frame_is_found_and_centred(scale):
    """DFDC's faces: dlib boxes of 80-200 px in 1920x1080 frames, too small to be found in a frame shrunk to
    640 px, found and followed in every frame."""
    places = [(round(600 + 40 * t * scale), round(300 + 20 * t * scale)) for t in range(8)]  # half a side a frame
    crops = crops_of(frames_with(places, 1920, 1080, patch=face_patch(scale)))
    assert crops is not None and crops.detected == 8
    assert_centred(crops, places, scale)
    sides = crops.boxes[:, 2] - crops.boxes[:, 0]
    assert np.ptp(sides) <= 0.2 * sides.mean() and abs(sides.mean() / 1.3 - 87 * scale) <= 0.25 * 87 * scale


def test_a_frame_without_a_face_is_none():
    assert crops_of(frames_with([(0, 0)] * 4, patch=np.full((10, 10, 3), 90, np.uint8))) is None


def test_of_two_faces_the_larger_is_kept_in_every_frame():
    places = moving(942, 500)
    small = (face_patch(0.8, mirror=True), (700, 20))
    crops = crops_of(frames_with(places, extra=small))
    assert crops is not None
    assert_centred(crops, places)


def test_frames_without_a_detection_take_their_neighbours_boxes_by_frame_number():
    boxes = np.array([[np.nan] * 4, [10, 10, 50, 50], [np.nan] * 4, [30, 10, 70, 50], [np.nan] * 4], dtype=float)
    filled = fill_gaps(boxes, np.array([0, 10, 15, 30, 40], dtype=float))
    assert filled[0].tolist() == [10, 10, 50, 50] and filled[2].tolist() == [15, 10, 55, 50]
    assert filled[4].tolist() == [30, 10, 70, 50]


def test_smoothing_keeps_steady_motion_and_flattens_jitter_of_frames_close_in_time():
    close = np.arange(16, dtype=float) * 2
    steady = close * 7
    np.testing.assert_allclose(smooth(steady, close, SMOOTH_RADIUS, SMOOTH_REACH), steady, atol=1e-9)
    jitter = np.where(np.arange(16) % 2, 3.0, -3.0) + 100
    assert np.abs(smooth(jitter, close, SMOOTH_RADIUS, SMOOTH_REACH)[2:-2] - 100).max() < 1.5


def test_frames_far_apart_keep_their_own_centre_and_share_their_size():
    """A head that moved between frames half a second apart is cropped where it is; dlib's box sizes, which
    come in 20% steps, are averaged over the neighbours."""
    far = np.arange(16, dtype=float) * (SMOOTH_REACH + 1)
    jumps = np.where(np.arange(16) % 2, 300.0, 100.0)
    np.testing.assert_array_equal(smooth(jumps, far, SMOOTH_RADIUS, SMOOTH_REACH), jumps)
    sides = np.where(np.arange(16) % 3 == 0, 180.0, 150.0)
    boxes = np.stack([jumps, jumps, jumps + sides, jumps + sides], axis=1)
    windows = crop_windows(boxes, far, 1.0, height=2000, width=2000)
    np.testing.assert_allclose((windows[:, :2] + windows[:, 2:]) / 2, (boxes[:, :2] + boxes[:, 2:]) / 2, atol=1)
    assert np.ptp(windows[SIZE_RADIUS:-SIZE_RADIUS, 2] - windows[SIZE_RADIUS:-SIZE_RADIUS, 0]) <= 10


def test_a_window_larger_than_the_frame_is_centred_and_padded():
    boxes = np.array([[10, 10, 90, 90]] * 3, dtype=float)
    windows = crop_windows(boxes, np.arange(3.0), 1.3, height=60, width=300)  # side 104 > 60 rows
    assert (windows[:, 3] - windows[:, 1] == 104).all() and (windows[:, 1] == (60 - 104) // 2).all()
    frames = np.full((3, 60, 300, 3), 255, np.uint8)
    crop = resize_windows(frames, windows, 104)[0].numpy()  # the window's own side: no interpolation
    assert crop.shape == (104, 104, 3) and crop[0].max() == 0 and crop[52, 52].min() == 255


def test_the_demo_videos_show_a_face_dlib_finds_in_real_and_fake_videos(tmp_path):
    """`make demo` shows face crops only if its videos, as a build decodes them, hold faces dlib finds: the fakes'
    manipulated inner face too."""
    spec = DemoSpec(identities=2, reals_per_identity=1, fakes_per_identity=1, youtube=0, frames=16, test_identities=0)
    videos = make_demo(tmp_path, spec)
    decoder = make_decoder("pyav", 1)
    for folder in ("Celeb-real", "Celeb-synthesis"):
        for path in (video for video in videos if video.parent.name == folder):
            decoded = decoder.decode(str(path), 16)
            crops = face_crops(decoded.frames, decoded.indices, FaceSettings())
            assert crops is not None and crops.detected >= 12, f"{path.name}: {crops and crops.detected} of 16"
