"""The GPU decoders and the GPU feed, held to the CPU decoders' frame-number checks; skipped without a GPU."""

import numpy as np
import pytest
import torch
from conftest import build_args, encode_numbered, read_number, run_cli
from test_decoders import VIDEOS

from cache import ClipDataset, open_store
from cache.schema import FAILED, OK
from ingest.decoders import GPU_DECODERS, DecodeError, available, choose, make_decoder
from ingest.frames import resize_clip, sample_indices
from train.data import BatchFeed

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")]
# Celeb-DF is H.264; these the GPU decoders must decode exactly. Others may be refused (and fall back to PyAV).
REQUIRED = ("x264.mp4", "x264-odd.mp4", "hevc.mkv", "short.mp4")


@pytest.fixture(params=GPU_DECODERS)
def gpu_decoder(request) -> str:
    if not available(request.param):
        pytest.skip(f"{request.param} is not installed")
    return request.param


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu-videos")
    return {name: (encode_numbered(folder / name, n, w, h, codec), n) for name, n, w, h, codec in VIDEOS}


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
    pyav = make_decoder("pyav").decode(str(path), 16)
    assert clip.frames.shape == pyav.frames.shape
    difference = np.abs(clip.frames.astype(int) - pyav.frames.astype(int))
    assert difference.mean() < 3 and np.percentile(difference, 99) <= 12


@pytest.mark.parametrize("resize", ["squash", "crop"])
def test_gpu_build_stores_what_the_pyav_build_stores(celebdf_root, tmp_path, gpu_decoder, resize):
    stores = {}
    for decoder in ("pyav", gpu_decoder):
        stores[decoder] = tmp_path / f"{decoder}.zarr"
        extra = ("--decoder", decoder, "--resize", resize, "--workers", "4", "--clips-per-shard", "3")
        result = run_cli(*build_args(celebdf_root, stores[decoder], *extra))
        assert f"decoder {decoder}" in result.stdout
    with open_store(stores["pyav"]) as cpu, open_store(stores[gpu_decoder]) as gpu:
        assert gpu.spec.decoder == gpu_decoder
        assert (cpu.status == gpu.status).all() and (gpu.status == FAILED).sum() == 4
        ok = np.flatnonzero(gpu.status == OK)
        assert (cpu.frame_index[ok] == gpu.frame_index[ok]).all()
        clips = gpu.read(ok)
        for row, clip in zip(ok, clips, strict=True):
            if resize == "squash":  # a centre crop cuts into the frame number's bit grid
                assert [read_number(frame) for frame in clip] == gpu.frame_index[row].tolist(), gpu.path[row]
        difference = np.abs(cpu.read(ok).astype(int) - clips.astype(int))
        assert difference.mean() < 3 and np.percentile(difference, 99) <= 12


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
