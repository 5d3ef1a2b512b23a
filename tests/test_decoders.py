import numpy as np
import pytest
from conftest import SIZE, encode_lying, encode_numbered, encode_zero_frames, read_number, write_broken

from ingest.decoders import CPU_DECODERS, DecodeError, make_decoder, resolve
from ingest.frames import resize_clip, sample_indices

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


def test_auto_picks_an_installed_cpu_decoder():
    assert resolve("auto") in CPU_DECODERS
    with pytest.raises(DecodeError):
        resolve("nonesuch")


def test_zero_frame_stream_is_reported_as_such(tmp_path):
    with pytest.raises(DecodeError, match="no frames"):
        make_decoder("pyav").decode(str(encode_zero_frames(tmp_path / "empty.avi")), 16)
