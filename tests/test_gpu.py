"""The GPU decoders and the GPU feed, held to the CPU decoders' frame-number checks; skipped without a GPU. Each
command runs as a process of its own (`run_process`): CUDA would not survive a fork of the test's process."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_args, numbered_frame, read_number, run_process

from cache import open_store
from cache.dataset import ClipDataset
from cache.schema import FAILED, OK
from ingest.clips import RowJob, gpu_rows
from ingest.decoders import GPU_DECODERS, available, choose, make_decoder
from ingest.decoding import DecodeError
from ingest.demo import write_video
from ingest.frames import resize_clip, sample_indices
from train.data import BatchFeed

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]
# NVDEC refuses frames under about 144 x 144 (HEVC) or 128 x 128 (VP9): the GPU's videos are larger than the
# CPU tests'. name, frames, width, height, codec.
VIDEOS = [
    ("x264.mp4", 300, 256, 160, "libx264"),
    ("x264-odd.mp4", 97, 270, 162, "libx264"),
    ("mpeg4.avi", 61, 256, 160, "mpeg4"),
    ("vp9.webm", 45, 256, 160, "libvpx-vp9"),
    ("hevc.mkv", 70, 256, 160, "libx265"),
    ("mjpeg.mov", 20, 256, 160, "mjpeg"),
    ("short.mp4", 5, 256, 160, "libx264"),
]
# Celeb-DF is H.264; these the GPU decoders must decode exactly. Others may be refused (and fall back to PyAV).
REQUIRED = ("x264.mp4", "x264-odd.mp4", "vp9.webm", "hevc.mkv", "short.mp4")
# Two colours far apart in every channel, either side of read_number's threshold: a colour matrix (BT.601 or
# BT.709) or range (limited or full) other than PyAV's moves every channel by several grey levels.
ONE, ZERO = np.array([250, 200, 60], np.uint8), np.array([20, 70, 170], np.uint8)


@pytest.fixture(params=GPU_DECODERS)
def gpu_decoder(request) -> str:
    if not available(request.param):
        pytest.skip(f"{request.param} is not installed")
    return request.param


def colour_numbered_frame(number: int, width: int, height: int) -> np.ndarray:
    """`numbered_frame`'s bit grid in two colours."""
    bits = numbered_frame(number, width, height)[..., :1] > 127
    return np.where(bits, ONE, ZERO)


def encode_colour(path: Path, frames: int, width: int, height: int, codec: str) -> Path:
    write_video(path, (colour_numbered_frame(i, width, height) for i in range(frames)), width, height, codec=codec)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu-videos")
    return {name: (encode_colour(folder / name, n, w, h, codec), n) for name, n, w, h, codec in VIDEOS}


def assert_close_to_pyav(clip: np.ndarray, pyav: np.ndarray) -> None:
    """Within a few grey levels of PyAV's clip in each channel on average: a colour conversion of its own fails."""
    assert clip.shape == pyav.shape
    difference = np.abs(clip.astype(int) - pyav.astype(int))
    per_channel = difference.reshape(-1, 3).mean(axis=0)
    assert (per_channel < 3).all(), f"mean absolute difference per channel (R, G, B): {per_channel}"
    assert np.percentile(difference, 99) <= 12


def test_auto_picks_a_gpu_decoder_where_one_works():
    name, why = choose("auto")
    if not any(available(d) for d in GPU_DECODERS):
        pytest.skip("no GPU decoder is installed")
    assert name in GPU_DECODERS and name in why


@pytest.mark.parametrize("name", [v[0] for v in VIDEOS])
def test_gpu_decoder_returns_exactly_the_sampled_frames_as_pyav_does(videos, gpu_decoder, name):
    path, n = videos[name]
    try:
        clip = make_decoder(gpu_decoder).decode(str(path), 16)
    except DecodeError:
        if name in REQUIRED:
            raise
        pytest.skip(f"{gpu_decoder} refuses {name}; a build falls back to PyAV for it")
    assert clip.indices.tolist() == sample_indices(n, 16).tolist()
    assert [read_number(frame) for frame in clip.frames] == clip.indices.tolist()
    assert_close_to_pyav(clip.frames, make_decoder("pyav").decode(str(path), 16).frames)


def test_no_required_video_falls_back_to_pyav_in_a_build(videos, gpu_decoder):
    names = list(videos)
    jobs = [RowJob(row, str(videos[name][0]), gpu_decoder, 1, 16, 64, "squash") for row, name in enumerate(names)]
    outcomes = {outcome.row: outcome for outcome in gpu_rows(jobs, 4)}
    assert sorted(outcomes) == list(range(len(names)))
    fell_back = {names[row]: outcome.error for row, outcome in outcomes.items() if outcome.fell_back}
    assert not set(fell_back) & set(REQUIRED), fell_back
    assert all(outcome.clip is not None for outcome in outcomes.values())


@pytest.mark.parametrize("resize", ["squash", "crop"])
def test_gpu_build_stores_what_the_pyav_build_stores(celebdf_root, tmp_path, gpu_decoder, resize):
    stores = {}
    for decoder in ("pyav", gpu_decoder):
        stores[decoder] = tmp_path / f"{decoder}.zarr"
        extra = ("--decoder", decoder, "--resize", resize, "--workers", "4", "--clips-per-shard", "3")
        result = run_process(*build_args(celebdf_root, stores[decoder], *extra))
        assert f"decoder {decoder}" in result.stdout
    with open_store(stores["pyav"]) as cpu, open_store(stores[gpu_decoder]) as gpu:
        assert gpu.spec.decoder == gpu_decoder
        assert (cpu.status == gpu.status).all() and (gpu.status == FAILED).sum() == 4
        ok = np.flatnonzero(gpu.status == OK)
        fell_back = {str(gpu.path[row]) for row in gpu.fell_back()}
        assert fell_back <= {"YouTube-real/00001.mp4"}, fell_back  # MPEG-4 Part 2 may be refused; H.264 not
        assert (cpu.frame_index[ok] == gpu.frame_index[ok]).all()
        clips = gpu.read(ok)
        for row, clip in zip(ok, clips, strict=True):
            if resize == "squash":  # a centre crop cuts into the frame number's bit grid
                assert [read_number(frame) for frame in clip] == gpu.frame_index[row].tolist(), gpu.path[row]
        assert_close_to_pyav(clips, cpu.read(ok))
    assert f"{len(fell_back)} of" in result.stdout and "fell back to pyav" in result.stdout


def test_gpu_face_build_finds_the_faces_the_pyav_build_finds(face_root, tmp_path, gpu_decoder):
    """Faces found on a small grey copy made on the GPU, then cut and resized there: the same track as PyAV's
    within a few pixels, and clips within a few grey levels."""
    stores = {}
    for decoder in ("pyav", gpu_decoder):
        stores[decoder] = tmp_path / f"{decoder}.zarr"
        extra = ("--decoder", decoder, "--resize", "face", "--manifest", str(face_root / "manifest.csv"))
        run_process(*build_args(face_root, stores[decoder], *extra, "--workers", "4"))
    with open_store(stores["pyav"]) as cpu, open_store(stores[gpu_decoder]) as gpu:
        assert (cpu.status == gpu.status).all() and len(gpu.fell_back()) == 0
        assert ((cpu.face_detected > 0) == (gpu.face_detected > 0)).all()
        assert np.abs(cpu.face_box.astype(int) - gpu.face_box.astype(int)).max() <= 8
        ok = gpu.rows()
        difference = np.abs(cpu.read(ok).astype(int) - gpu.read(ok).astype(int))
        assert difference.mean() < 6, "the GPU's face crops are not PyAV's"


def test_gpu_resize_matches_the_cpu_resize():
    frames = torch.randint(0, 256, (4, 500, 942, 3), dtype=torch.uint8)
    cpu = resize_clip(frames, 224).int()
    gpu = resize_clip(frames.cuda(), 224).cpu().int()
    assert (cpu - gpu).abs().max() <= 1


def test_feed_hands_uint8_batches_on_the_gpu_from_pinned_buffers(tiny_cache):
    dataset = ClipDataset(tiny_cache, "train")
    feed = BatchFeed(dataset, 4, threads=2, device=torch.device("cuda"))
    with open_store(tiny_cache) as store:
        for clips, labels, rows in feed:
            assert clips.is_cuda and labels.is_cuda and clips.dtype == torch.uint8
            assert clips.shape[1:] == (4, 32, 32, 3)  # tiny_cache: 4 frames of 32 x 32
            assert (clips.cpu().numpy() == store.read(rows.numpy())).all()
            assert labels.tolist() == store.label[rows.numpy()].tolist()
    assert all(buffer.is_pinned() for slot in feed._ring for buffer in slot)
