"""`ingest build-cache --resize face` end to end, on videos of a real face photograph at known places."""

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import FACE_CENTRE, FACE_VIDEOS, KNOWN_FACES, build_args, run_cli, train_args
from matplotlib.image import imread
from matplotlib.patches import Rectangle
from test_build import assert_same_store
from test_resume import assert_same_files, kill_mid_build

from bench.faces import agreement, reference_faces
from cache import open_store
from cache.schema import FAILED, OK
from cache.store import clip_settings
from ingest.decoders import make_decoder
from ingest.faces import FACE_DEFAULTS, NO_FACE
from ingest.frames import resize_clip, resize_windows
from train import explain, explanation
from train.inference import TrainedModel, decode_videos, decoder_for

NO_FACE_VIDEO = "Celeb-real/id2_0000.mp4"


def face_args(root, store, *extra: str) -> list[str]:
    return [*build_args(root, store, "--resize", "face", "--manifest", str(root / "manifest.csv")), *extra]


@pytest.fixture(scope="module")
def face_store(face_root, tmp_path_factory):
    store = tmp_path_factory.mktemp("face") / "faces.zarr"
    result = run_cli(*face_args(face_root, store, "--workers", "2"))
    return store, result.stdout


def test_the_known_face_is_centred_in_every_stored_frame(face_store):
    store, _ = face_store
    with open_store(store) as built:
        for row, path in enumerate(built.path):
            width, height, places, _ = FACE_VIDEOS[path]
            if places is None:
                continue
            assert built.status[row] == OK and built.face_detected[row] >= 14, path
            for (x0, y0, x1, y1), index in zip(built.face_box[row], built.frame_index[row], strict=True):
                cx, cy = np.array(places[index]) + FACE_CENTRE
                side = x1 - x0
                assert side == y1 - y0 and x0 < cx < x1 and y0 < cy < y1, path
                assert abs(cx - (x0 + x1) / 2) <= side / 10 and abs(cy - (y0 + y1) / 2) <= side / 10, path
                if side <= min(width, height):
                    assert x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height, path


@pytest.fixture(scope="module")
def known_store(known_face_root, tmp_path_factory):
    store = tmp_path_factory.mktemp("known") / "known.zarr"
    run_cli(*face_args(known_face_root, store, "--workers", "2"))
    return store


def test_every_stored_crop_follows_its_own_frames_face(known_store, known_face_root):
    """Faces of 80-200 px that jump and grow or shrink between sampled frames far apart, in Celeb-DF's and DFDC's
    frame sizes: every crop centred on its frame's known face within a tenth of its side and holding the whole
    face, and each video's crops as large as margin x the face dlib finds in each whole frame at full size, within
    8% (median over the frames)."""
    with open_store(known_store) as built:
        assert len(built.rows()) == len(KNOWN_FACES)
        for row, path in enumerate(built.path):
            face = KNOWN_FACES[path]
            np.testing.assert_array_equal(built.frame_index[row], face.indices)
            windows = built.face_box[row]
            known = agreement(windows, face.boxes(), face.height, face.width, FACE_DEFAULTS.margin)
            assert known.centred == known.holding == known.frames == len(face.sides), (path, known)
            frames = make_decoder("pyav", 1).decode(str(known_face_root / path), built.spec.frames).frames
            measured = agreement(windows, reference_faces(frames), face.height, face.width, FACE_DEFAULTS.margin)
            assert measured.frames == len(face.sides) and measured.sized, (path, measured)


def test_prediction_crops_the_known_faces_as_the_store_did(known_store, known_face_root):
    with open_store(known_store) as built:
        rows = built.rows()
        paths = [known_face_root / built.path[row] for row in rows]
        outcomes = sorted(decode_videos(paths, clip_settings(known_store), workers=2), key=lambda o: o.row)
        for outcome, row in zip(outcomes, rows, strict=True):
            np.testing.assert_array_equal(outcome.face.boxes, built.face_box[row])


def test_each_stored_clip_is_its_decoded_frames_cut_at_its_stored_boxes(face_store, face_root):
    store, _ = face_store
    with open_store(store) as built:
        for row in built.rows():
            decoded = make_decoder("pyav", 1).decode(str(face_root / built.path[row]), built.spec.frames)
            np.testing.assert_array_equal(decoded.indices, built.frame_index[row])
            if built.face_detected[row] > 0:
                expected = resize_windows(decoded.frames, built.face_box[row], built.spec.size)
            else:
                expected = resize_clip(decoded.frames, built.spec.size, "squash")
            np.testing.assert_array_equal(built.read([row])[0], expected.numpy())


def test_a_video_without_a_face_is_stored_squashed_and_counted(face_store):
    store, stdout = face_store
    with open_store(store) as built:
        row = built.path.tolist().index(NO_FACE_VIDEO)
        assert built.status[row] == OK and built.face_detected[row] == 0 and (built.face_box[row] == -1).all()
        assert built.without_face().tolist() == [row]
    assert f"1 of {len(FACE_VIDEOS)} clips had no face (stored squashed)" in stdout
    info = run_cli("cache", "info", str(store)).stdout
    assert f"faces: 1 of {len(FACE_VIDEOS)} ok clips had no face" in info


def test_no_face_fail_fails_that_video_with_its_reason(face_root, face_store, tmp_path):
    store = tmp_path / "strict.h5"
    result = run_cli(*face_args(face_root, store, "--no-face", "fail", "--workers", "1", "--strict"), check=False)
    assert result.returncode == 3 and f"failed {NO_FACE_VIDEO}: {NO_FACE}" in result.stdout
    with open_store(store) as strict, open_store(face_store[0]) as squashing:
        row = strict.path.tolist().index(NO_FACE_VIDEO)
        assert strict.status[row] == FAILED and strict.error[row] == NO_FACE
        others = np.flatnonzero(strict.status == OK)
        assert len(others) == len(FACE_VIDEOS) - 1
        assert (strict.read(others) == squashing.read(others)).all()
        assert (strict.face_box[others] == squashing.face_box[others]).all()


def test_resume_needs_the_same_face_settings(face_store, face_root):
    result = run_cli(*face_args(face_root, face_store[0], "--resume", "--face-margin", "1.5"), check=False)
    assert result.returncode == 2 and "face_margin=1.3, not 1.5" in result.stderr


@pytest.fixture(scope="module")
def many_faces(face_root, tmp_path_factory):
    """Twenty-four links to the face videos: enough rows for a kill to land mid-build."""
    root = tmp_path_factory.mktemp("many-faces")
    for i in range(24):
        name, _ = list(FACE_VIDEOS.items())[i % len(FACE_VIDEOS)]
        link = root / ("Celeb-real" if i % 2 else "Celeb-synthesis") / f"id{i}_{'' if i % 2 else f'id{i + 1}_'}0000.mp4"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(face_root / name)
    return root


@pytest.mark.slow
def test_a_killed_face_build_resumes_to_the_identical_store(many_faces, tmp_path):
    whole, killed = tmp_path / "whole.zarr", tmp_path / "killed.zarr"
    face = ("--resize", "face", "--clips-per-shard", "2")
    run_cli(*build_args(many_faces, whole, *face, "--workers", "1"))
    kill_mid_build(build_args(many_faces, killed, *face, "--workers", "1"), killed)
    result = run_cli(*build_args(many_faces, killed, *face, "--workers", "2", "--resume"))
    assert int(re.search(r"(\d+) videos decoded", result.stdout).group(1)) > 0
    assert_same_store(killed, whole)
    assert_same_files(killed, whole)


def test_prediction_crops_new_videos_as_the_store_did(face_store, face_root):
    store, _ = face_store
    with open_store(store) as built:
        rows = built.rows()
        paths = [face_root / built.path[row] for row in rows]
        outcomes = sorted(decode_videos(paths, clip_settings(store), workers=2), key=lambda o: o.row)
        for outcome, row in zip(outcomes, rows, strict=True):
            np.testing.assert_array_equal(outcome.clip, built.read([row])[0])
            np.testing.assert_array_equal(outcome.face.boxes, built.face_box[row])


@pytest.fixture(scope="module")
def face_run(face_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("face-run")
    run_cli(*train_args(face_store[0], out, "simple_cnn", "--epochs", "1", "--frame-size", "32"))
    return out / "simple_cnn"


@pytest.mark.slow
def test_explain_draws_the_crops_box_on_the_whole_frame(face_run, face_store, face_root, tmp_path):
    store, _ = face_store
    trained = TrainedModel.load(face_run)
    with open_store(store) as built:
        rows = [int(row) for row in built.rows()]
        by_path = {str(built.path[row]): row for row in rows}
        clips = explanation.store_clips(store, rows, trained.clip)
        for clip, row in zip(clips, rows, strict=True):
            assert (clip.whole is None) == (built.face_detected[row] == 0)
        video = face_root / "Celeb-real/id0_0000.mp4"
        (clip,), failures = explanation.video_clips([video], trained.clip, workers=1)
        row = by_path["Celeb-real/id0_0000.mp4"]
        middle = len(clip.indices) // 2
        assert not failures and clip.whole.frame.shape == (320, 480, 3)
        assert clip.whole.box.tolist() == built.face_box[row][middle].tolist()
        assert clip.whole.index == built.frame_index[row][middle]
    figure = explanation.plot(trained, clip, explanation.explain(trained, clip.frames))
    (box,) = figure.axes[0].patches  # the whole frame comes first, above the frames' heatmaps
    assert isinstance(box, Rectangle) and figure.axes[0].images[0].get_array().shape == (320, 480, 3)
    x0, y0, x1, y1 = clip.whole.box.tolist()
    assert (box.get_x() + 0.5, box.get_y() + 0.5, box.get_width(), box.get_height()) == (x0, y0, x1 - x0, y1 - y0)
    assert explain.main(["--run", str(face_run), "--video", str(video), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "simple_cnn_id0_0000.png").is_file()


def test_explain_takes_a_face_videos_whole_middle_frame_from_its_one_decode(face_store, face_root, monkeypatch):
    settings = clip_settings(face_store[0])
    videos = [face_root / name for name in ("Celeb-real/id0_0000.mp4", "Celeb-real/id1_0000.mp4", NO_FACE_VIDEO)]

    def decode_again(*_):
        raise AssertionError("video_clips decoded a video a second time for its whole frame")

    monkeypatch.setattr(explanation, "make_decoder", decode_again)  # what `whole_frame` decodes a video again with
    clips, failures = explanation.video_clips(videos, settings, workers=2)
    monkeypatch.undo()
    by_source = {clip.source: clip for clip in clips}
    assert not failures and by_source["id2_0000.mp4"].whole is None, "no face: no crop to show the box of"
    for video in videos[:2]:
        clip = by_source[video.name]
        again = make_decoder(decoder_for(settings), 1).decode(str(video), settings.frames)
        middle = len(again.indices) // 2
        np.testing.assert_array_equal(clip.whole.frame, again.frames[middle])
        assert clip.whole.index == again.indices[middle] and clip.whole.frame.shape[:2] == again.frames.shape[1:3]
    (outcome,) = decode_videos(videos[:1], settings, workers=1)
    assert outcome.whole is None, "a whole frame crosses from a decoding process only where it is asked for"


def test_cache_show_draws_a_video_squashed_above_its_face_crops(face_store, face_root, tmp_path):
    squash = tmp_path / "squash.zarr"
    run_cli(*build_args(face_root, squash, "--manifest", str(face_root / "manifest.csv"), "--workers", "1"))
    png = tmp_path / "before-after.png"
    result = run_cli("cache", "show", str(squash), str(face_store[0]), "--row", "0", "--out", str(png))
    assert result.stdout.strip() == str(png)
    image = imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 1000 and image.std() > 0.05
    missing = run_cli("cache", "show", str(squash), "--row", "99", "--out", str(png), check=False)
    assert missing.returncode == 2 and missing.stderr.strip() == f"cache: error: --row 99: not an ok clip of {squash}"
