from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    SIZE,
    encode_lying,
    encode_numbered,
    encode_numbered_with,
    encode_zero_frames,
    read_number,
    write_broken,
)

from ingest import decoders
from ingest.decoders import (
    CPU_DECODERS,
    FRAME_THREADS_FROM_PIXELS,
    GPU_DECODERS,
    PyAVDecoder,
    _feed_mask,
    available,
    choose,
    decoder_threads,
    make_decoder,
    resolve,
)
from ingest.decoding import DecodeError
from ingest.demux import Packets, probe_video, read_packets
from ingest.frames import resize_clip, sample_indices
from ingest.gpu_decoders import gpu_unavailable

DECODERS = list(CPU_DECODERS)
VIDEOS = [  # name, frames, width, height, codec: B-frames and long GOPs, other codecs and containers
    ("x264.mp4", 300, 96, 64, "libx264"),
    ("x264-odd.mp4", 97, 130, 74, "libx264"),
    ("mpeg4.avi", 61, 96, 64, "mpeg4"),
    ("vp9.webm", 45, 96, 64, "libvpx-vp9"),
    ("hevc.mkv", 70, 96, 64, "libx265"),
    ("mjpeg.mov", 20, 96, 64, "mjpeg"),
    ("short.mp4", 5, 96, 64, "libx264"),
]
X265 = "scenecut=0:log-level=error"
SHORT_GOPS = {  # name: codec, encoder options; 400 frames with a keyframe every 10, most GOPs hold no sampled frame
    "x264-closed.mp4": ("libx264", {"x264-params": "keyint=10:min-keyint=10:scenecut=0"}),
    "x264-open.mp4": ("libx264", {"x264-params": "keyint=10:min-keyint=10:scenecut=0:open-gop=1"}),
    "hevc-open.mkv": ("libx265", {"x265-params": f"keyint=10:min-keyint=10:{X265}"}),  # x265's default: CRA + RASL
    "hevc-closed.mkv": ("libx265", {"x265-params": f"keyint=10:min-keyint=10:open-gop=0:{X265}"}),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return {name: (encode_numbered(folder / name, n, w, h, codec), n) for name, n, w, h, codec in VIDEOS}


def test_sample_indices_are_evenly_spaced_and_fill_short_videos():
    assert sample_indices(300, 16).tolist() == np.linspace(0, 299, 16).astype(int).tolist()
    short = sample_indices(5, 16)
    assert len(short) == 16 and short[0] == 0 and short[-1] == 4
    assert (np.diff(short) >= 0).all() and set(short) == set(range(5))
    with pytest.raises(ValueError):
        sample_indices(0, 16)


def test_resize_squashes_or_crops_to_a_square():
    frames = np.zeros((2, 40, 100, 3), np.uint8)
    frames[:, :, :30] = 255  # a white band on the left that a centre crop drops
    assert resize_clip(frames, 32).shape == (2, 32, 32, 3)
    assert resize_clip(frames, 32)[:, :, 0].float().mean() > 200
    assert resize_clip(frames, 32, "crop")[:, :, 0].float().mean() == 0


@pytest.mark.parametrize("mode", ["squash", "crop"])
def test_the_float_resize_cuda_runs_stays_within_a_grey_level_of_the_uint8_one(mode):
    frames = torch.randint(0, 256, (3, 500, 942, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    in_uint8 = resize_clip(frames, 224, mode, in_float=False)
    in_float = resize_clip(frames, 224, mode, in_float=True)
    assert in_float.dtype == torch.uint8 and in_float.shape == in_uint8.shape == (3, 224, 224, 3)
    assert (in_float.int() - in_uint8.int()).abs().max() <= 1


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("name", [v[0] for v in VIDEOS])
def test_decoder_returns_exactly_the_sampled_frames(videos, decoder, name):
    path, n = videos[name]
    clip = make_decoder(decoder).decode(str(path), 16)
    assert clip.indices.tolist() == sample_indices(n, 16).tolist()
    assert clip.probe.frames == n
    assert [read_number(frame) for frame in clip.frames] == clip.indices.tolist()


@pytest.mark.parametrize("name", [v[0] for v in VIDEOS])
def test_decoders_agree_within_a_few_grey_levels(videos, name):
    path, _ = videos[name]
    clips = [resize_clip(make_decoder(d).decode(str(path), 16).frames, SIZE).int() for d in DECODERS]
    for other in clips[1:]:
        difference = (clips[0] - other).abs().float()
        assert difference.mean() < 2.0 and np.percentile(difference.numpy(), 99) <= 8


def test_frames_promised_by_the_index_but_missing_are_never_sampled(tmp_path):
    path = encode_lying(tmp_path / "lying.mp4", 200)
    clip = make_decoder("pyav").decode(str(path), 16)
    assert 0 < clip.probe.frames < 200
    assert clip.indices.tolist() == sample_indices(clip.probe.frames, 16).tolist()
    numbers = [read_number(frame) for frame in clip.frames]
    # Each stored frame is a distinct real frame of the file, in order; with B-frames a cut can also
    # take frames from the middle of the last group of pictures, so positions and numbers may part there.
    assert numbers == sorted(numbers) and len(set(numbers)) == len(set(clip.indices.tolist()))
    assert numbers[: len(numbers) // 2] == clip.indices[: len(numbers) // 2].tolist()


@pytest.mark.parametrize("decoder", DECODERS)
def test_broken_files_raise_a_decode_error_with_a_reason(tmp_path, decoder):
    broken = write_broken(tmp_path)
    for name in broken:
        assert (tmp_path / name).exists()
        with pytest.raises(DecodeError) as error:
            make_decoder(decoder).decode(str(tmp_path / name), 16)
        assert str(error.value).strip(), name


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: auto may pick a GPU decoder")
def test_auto_picks_a_cpu_decoder_without_a_gpu_and_says_why():
    name, why = choose("auto")
    assert name == "pyav" and "no NVIDIA GPU" in why
    with pytest.raises(DecodeError):
        resolve("nonesuch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("decoder", GPU_DECODERS)
def test_gpu_decoders_say_plainly_that_they_need_a_gpu(decoder):
    with pytest.raises(DecodeError, match="NVIDIA GPU"):
        make_decoder(decoder)


@pytest.mark.skipif(available("nvdec"), reason="PyNvVideoCodec starts here")
def test_a_gpu_decoder_that_cannot_start_gives_one_line_once():
    why = gpu_unavailable("nvdec")
    assert why.startswith("nvdec cannot start here: ") and "\n" not in why and len(why) < 300
    assert gpu_unavailable("nvdec") is why  # tried once per process


def test_probe_counts_the_frames_every_decoder_samples(videos):
    for path, n in videos.values():
        assert probe_video(str(path)).frames == n


def test_zero_frame_stream_is_reported_as_such(tmp_path):
    with pytest.raises(DecodeError, match="no frames"):
        make_decoder("pyav").decode(str(encode_zero_frames(tmp_path / "empty.avi")), 16)


@pytest.fixture(scope="module")
def short_gops(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gops")
    return {name: encode_numbered_with(folder / name, 400, codec, opts) for name, (codec, opts) in SHORT_GOPS.items()}


def packets(order: list[int], keys: set[int]) -> Packets:
    """Packets with presentation numbers `order` (decode order), keyframes at the positions `keys`."""
    return Packets(np.array(order, np.int64), np.array([i in keys for i in range(len(order))]))


def test_closed_gops_without_a_sampled_frame_are_not_fed_and_each_stops_at_its_last():
    gops = packets([0, 2, 1, 4, 3, 5, 7, 6, 9, 8, 10, 12, 11, 14, 13], {0, 5, 10})
    assert np.flatnonzero(_feed_mask(gops, {1, 12})).tolist() == [0, 1, 2, 10, 11]
    assert np.flatnonzero(_feed_mask(gops, {0, 14})).tolist() == [0, 10, 11, 12, 13]


def test_the_gop_before_an_open_gop_is_fed_whole_and_so_on_back():
    # GOP 10 has leading picture 9, and GOP 5 leading picture 4: each needs the whole GOP before it.
    gops = packets([0, 2, 1, 3, 5, 4, 7, 6, 8, 10, 9, 12, 11, 13, 14], {0, 4, 9})
    assert np.flatnonzero(_feed_mask(gops, {12})).tolist() == list(range(12))
    assert np.flatnonzero(_feed_mask(gops, {5})).tolist() == [0, 1, 2, 3, 4]
    assert _feed_mask(gops, {2, 14}).all()
    closed_then_open = packets([0, 2, 1, 3, 4, 6, 5, 8, 7, 10, 9, 12, 11, 13, 14], {0, 4, 9})
    assert np.flatnonzero(_feed_mask(closed_then_open, {2, 14})).tolist() == [0, 1, *range(4, 15)]


def test_packets_before_the_first_keyframe_are_a_gop_of_their_own():
    stray = packets([1, 0, 2, 3, 4], {2})
    assert np.flatnonzero(_feed_mask(stray, {3})).tolist() == [2, 3]
    assert np.flatnonzero(_feed_mask(stray, {0, 4})).tolist() == [0, 1, 2, 3, 4]


def sampled_leading_pictures(path: Path, count: int) -> list[int]:
    """Sampled leading pictures (timestamps) of GOPs whose GOP before holds no sampled frame: the frames
    that come out wrong, or not at all, if that GOP is skipped."""
    probe, index = read_packets(str(path))
    wanted = set(np.sort(index.pts)[sample_indices(probe.frames, count)].tolist())
    starts = np.append(np.flatnonzero(index.key), len(index.pts))
    found = []
    for before, start, end in zip(starts[:-2], starts[1:-1], starts[2:], strict=True):
        gop = index.pts[start:end]
        if not wanted & set(index.pts[before:start].tolist()):
            found += [stamp for stamp in gop[1:][gop[1:] < gop[0]].tolist() if stamp in wanted]
    return found


def test_the_short_gop_videos_skip_most_gops_and_sample_leading_pictures(short_gops):
    for name, path in short_gops.items():
        probe, index = read_packets(str(path))
        wanted = set(np.sort(index.pts)[sample_indices(probe.frames, 16)].tolist())
        assert index.key.sum() >= 40, name
        if "open" in name:
            assert sampled_leading_pictures(path, 16), name
        else:
            assert _feed_mask(index, wanted).sum() < probe.frames / 2, name


def no_fallback(*args, **kwargs):
    raise AssertionError("fell back to decoding frame by frame")


@pytest.mark.parametrize("threads", [1, 0])
@pytest.mark.parametrize("name", list(SHORT_GOPS))
def test_skipping_gops_alone_gives_exactly_the_sampled_frames(short_gops, name, threads, monkeypatch):
    # The frame-by-frame fallback is exact too, so it would hide a wrong skip: forbid it here.
    monkeypatch.setattr(PyAVDecoder, "_pick_in_order", no_fallback)
    clip = PyAVDecoder(threads).decode(str(short_gops[name]), 16)
    assert clip.indices.tolist() == sample_indices(400, 16).tolist()
    assert [read_number(frame) for frame in clip.frames] == clip.indices.tolist()


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
def test_keyframe_flags_that_lie_are_caught_and_decoded_frame_by_frame(tmp_path, monkeypatch, codec):
    # One GOP, then every 7th packet claimed a keyframe: H.264 drops frames that miss their references,
    # MPEG-4 part 2 returns them damaged, which only the check of the first frame after a gap catches.
    path = encode_numbered_with(tmp_path / "one-gop.mp4", 200, codec, {"x264-params": "scenecut=0", "g": "250"})

    def lying(path):
        probe, found = read_packets(path)
        return probe, Packets(found.pts, found.key | (np.arange(len(found.key)) % 7 == 0))

    monkeypatch.setattr(decoders, "read_packets", lying)
    clip = PyAVDecoder(1).decode(str(path), 16)
    assert [read_number(frame) for frame in clip.frames] == sample_indices(200, 16).tolist()


def test_frames_smaller_than_the_crossover_decode_in_one_thread_whatever_the_cores():
    assert decoder_threads(2, 320 * 180) == decoder_threads(16, 942 * 500) == 1
    assert decoder_threads(8, FRAME_THREADS_FROM_PIXELS - 1) == 1
    assert decoder_threads(2, 1920 * 1080) == 2 and decoder_threads(0, FRAME_THREADS_FROM_PIXELS) == 0
    assert decoder_threads(1, 1920 * 1080) == 1, "a worker with one core of its own: one thread"
