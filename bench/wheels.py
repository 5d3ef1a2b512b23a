"""Wheels for a machine without network, small enough to travel: `python -m bench.wheels repack|unpack ...`.

Wheels are zips deflated at level 6; recompressed with LZMA (which pip and zipfile read) PyAV's shrinks from
35.8 to 26.8 MB. PyNvVideoCodec's also carries samples, benchmarks, an FFmpeg source tarball, a build for
pre-CUDA-13 drivers and three copies of each FFmpeg library; decoding needs one copy under the soname the
extension links to.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

# Paths (prefixes) that decoding with PyNvVideoCodec on a CUDA 13 driver does not load.
NVDEC_UNUSED = (
    "samples/",
    "benchmarks/",
    "pynvvideocodec-",  # the .data folder: FFmpeg's source tarball (the .dist-info folder is kept below)
    "PyNvVideoCodec/PyNvVideoCodec_121.",  # the build for drivers older than NVENC 13 (CUDA 12)
    "PyNvVideoCodec/libavformat.so.63.",
    "PyNvVideoCodec/libavutil.so.61.",
)
NVDEC_UNUSED_NAMES = ("PyNvVideoCodec/libavformat.so", "PyNvVideoCodec/libavutil.so")


def unused(name: str) -> bool:
    """Whether a PyNvVideoCodec wheel member is left out (the unversioned library links and the big extras)."""
    if ".dist-info/" in name:
        return False
    return name.startswith(NVDEC_UNUSED) or name in NVDEC_UNUSED_NAMES


def repack(wheel: Path) -> tuple[int, int]:
    """Rewrite `wheel` in place LZMA-compressed, a PyNvVideoCodec wheel without what `unused` names and its
    RECORD to match; (bytes before, after)."""
    before = wheel.stat().st_size
    drop = unused if wheel.name.lower().startswith("pynvvideocodec-") else lambda _: False
    packed = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(packed, "w") as target:
        for item in source.infolist():
            if drop(item.filename):
                continue
            data = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                data = "".join(f"{line}\n" for line in lines if not drop(line.split(",", 1)[0])).encode()
            target.writestr(item, data, compress_type=zipfile.ZIP_LZMA)
    packed.replace(wheel)
    return before, wheel.stat().st_size


def unpack(wheels: list[Path], site: Path) -> None:
    """Install wheels without pip: a wheel is a zip of the site-packages tree (no entry points are needed here)."""
    site.mkdir(parents=True, exist_ok=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wheels", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    repacking = commands.add_parser("repack", help="recompress wheels in place (and strip PyNvVideoCodec's)")
    repacking.add_argument("wheels", type=Path, nargs="+")
    unpacking = commands.add_parser("unpack", help="unzip wheels into a folder for PYTHONPATH")
    unpacking.add_argument("site", type=Path)
    unpacking.add_argument("wheels", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "repack":
        for wheel in args.wheels:
            before, after = repack(wheel)
            print(f"{wheel.name}: {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB")
    else:
        unpack(args.wheels, args.site)
    return 0


if __name__ == "__main__":
    sys.exit(main())
