"""The CPU side of bench/gpu_check.sh: the store comparison and the wheel stripping it relies on."""

import json
import zipfile

from conftest import build_args, run_cli

from bench.gpu_check import compare, environment
from bench.wheels import repack


def test_two_builds_of_the_same_clips_compare_equal_and_another_resize_does_not(tiny_cache, demo_root, tmp_path):
    same = compare(tiny_cache, tiny_cache)
    assert same["problems"] == [] and same["mean_abs_difference_rgb"] == [0, 0, 0] and same["ok_in_both"] > 0
    cropped = tmp_path / "crop.zarr"
    run_cli(*build_args(demo_root, cropped, "--workers", "1", "--frames", "4"), "--size", "32", "--resize", "crop")
    other = compare(tiny_cache, cropped)
    assert other["frame_index_differs"] == [] and other["fell_back"] == {}
    assert any("mean absolute difference" in problem for problem in other["problems"])
    out = tmp_path / "result"
    result = run_cli("bench.gpu_check", "compare", str(tiny_cache), str(cropped), "--out", str(out), check=False)
    assert result.returncode == 1
    assert json.loads(out.with_suffix(".json").read_text())["problems"] == other["problems"]


def test_environment_names_every_decoder():
    lines = environment()
    assert lines[0].startswith("torch ") and any(line.startswith("decoder auto: ") for line in lines)
    assert any(line.startswith("decoder nvdec: ") for line in lines)


def test_the_repacked_pynvvideocodec_wheel_keeps_what_decoding_loads(tmp_path):
    wheel = tmp_path / "pynvvideocodec-2.2.4-cp312-cp312-manylinux_2_28_x86_64.whl"
    kept = [
        "PyNvVideoCodec/__init__.py",
        "PyNvVideoCodec/PyNvVideoCodec_130.cpython-312-x86_64-linux-gnu.so",
        "PyNvVideoCodec/libavformat.so.63",
        "pynvvideocodec./libcudart-c64a25f3.so.12.3.101",
        "pynvvideocodec-2.2.4.dist-info/METADATA",
    ]
    dropped = [
        "samples/basic/encode.py",
        "benchmarks/frame_sampling_benchmark.py",
        "pynvvideocodec-2.2.4.data/data/external/ffmpeg/src/ffmpeg-9.0.1.tar.xz",
        "PyNvVideoCodec/PyNvVideoCodec_121.cpython-312-x86_64-linux-gnu.so",
        "PyNvVideoCodec/libavformat.so",
        "PyNvVideoCodec/libavformat.so.63.1.101",
    ]
    record = "".join(f"{name},sha256=x,1\n" for name in kept + dropped)
    with zipfile.ZipFile(wheel, "w") as archive:
        for name in kept + dropped:
            archive.writestr(name, b"\0" * 10000)
        archive.writestr("pynvvideocodec-2.2.4.dist-info/RECORD", record)
    before, after = repack(wheel)
    assert after < before
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert {item.compress_type for item in archive.infolist()} == {zipfile.ZIP_LZMA}
        assert sorted(names) == sorted([*kept, "pynvvideocodec-2.2.4.dist-info/RECORD"])
        record = archive.read("pynvvideocodec-2.2.4.dist-info/RECORD").decode()
        recorded = [line.split(",")[0] for line in record.split()]
    assert recorded == kept
