"""The `ingest` command: `build-cache`, `scan` and `make-demo`."""

from __future__ import annotations

import argparse
import functools
import sys
import textwrap
import time
from pathlib import Path

from cache.bucket import store_location
from cache.exits import Ending, ends
from cache.schema import PENDING, StoreError
from cache.store import open_store, store_exists
from ingest.build import BuildConfig, build_cache
from ingest.decoders import DECODERS
from ingest.demo import DEMO_LAYOUTS, DemoSpec, make_demo
from ingest.discover import UsageError
from ingest.faces import NO_FACE_CHOICES
from ingest.frames import RESIZE_MODES
from ingest.layouts import ALL_FFPP_METHODS, COMPRESSIONS, FFPP_METHODS, LAYOUTS, LayoutOptions
from ingest.pool import add_decoding_options
from ingest.scan import report, scan, write_csv


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="ingest", description="Turn a folder of videos into a chunked store of fixed-length clips."
    )
    commands = main.add_subparsers(dest="command", required=True)

    build = commands.add_parser(
        "build-cache",
        help="decode every video once into a Zarr v3 or HDF5 store",
        description=textwrap.fill(
            "Decode each video once, keep FRAMES evenly spaced frames, resize them to SIZE x SIZE RGB and "
            "write them to STORE (.zarr for Zarr v3, .h5/.hdf5 for HDF5), with labels, splits and a status "
            "per video. The data set's layout is found from its folders (or --dataset NAME) and said on the first "
            "line; labels, splits and groups come from its own files, a listed video that is missing becomes a failed "
            "row, and `ingest scan` shows what a build would store. Broken videos become failed rows with a reason. "
            "Under `accelerate launch` or `torchrun` the "
            "ranks share the work; a second build of the same store is refused while one runs. Exit status: 0 done, "
            "2 bad arguments, 3 with --strict when a video failed, 4 when the disk is full, 5 when an s3:// store's "
            "bucket stops answering, 6 when another build takes over an s3:// store's lock, 130 after Ctrl-C and 143 "
            "after SIGTERM (in the last five every finished shard is kept: run the same command with --resume)."
        )
        + LAYOUT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_layout_arguments(build)
    build.add_argument(
        "--out",
        type=store_location,
        required=True,
        help="the store to write: NAME.zarr, NAME.h5 or s3://BUCKET/PATH/NAME.zarr",
    )
    build.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    build.add_argument("--size", type=int, default=224, help="frames are resized to SIZE x SIZE (default 224)")
    build.add_argument(
        "--resize",
        choices=RESIZE_MODES,
        default="squash",
        help=(
            "squash the whole frame (default, the seed notebook's), crop its centre square, or crop a square "
            "around the face (dlib's frontal face detector on the sampled frames, one smoothed face track per "
            "video; the boxes are kept in the store)"
        ),
    )
    build.add_argument(
        "--face-margin",
        type=float,
        default=1.3,
        help="with --resize face: the crop's side over the face box's longer side (default 1.3, FaceForensics++'s)",
    )
    build.add_argument(
        "--no-face",
        choices=NO_FACE_CHOICES,
        default="squash",
        help="with --resize face: a video with no face in any sampled frame is stored squashed and counted "
        "(default), or fails with that reason",
    )
    build.add_argument(
        "--decoder",
        choices=("auto", *DECODERS),
        default="auto",
        help=(
            "video decoder: nvdec (PyNvVideoCodec) and dali decode on an NVIDIA GPU's video engines, pyav and "
            "decord on the CPU; auto (default) takes a GPU decoder where one works, else pyav, and says which"
        ),
    )
    add_decoding_options(build, "decoding processes, or videos in flight with a GPU decoder")
    build.add_argument("--val-fraction", type=float, default=0.2, help="share of train/val videos in val (default 0.2)")
    build.add_argument("--seed", type=int, default=42, help="seed of the train/val split (default 42)")
    build.add_argument("--clips-per-shard", type=int, default=8, help="clips per shard file and per write (default 8)")
    build.add_argument("--resume", action="store_true", help="finish an interrupted build of STORE")
    build.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: decode the videos that failed again (after installing a decoder or replacing a file) "
        "and say how many now succeed",
    )
    build.add_argument("--strict", action="store_true", help="exit 3 when any video failed")

    scanning = commands.add_parser(
        "scan",
        help="find a data set's layout, labels and splits without decoding",
        description=textwrap.fill(
            "Find the layout of DATA_ROOT as build-cache does, without decoding: print the layout and its "
            "options, the counts by split and label (and by method or part), the videos left out by choice, and "
            "every problem (a listed video that is missing, a video on no list). --csv writes the table "
            "path,label,split,group that --manifest reads."
        )
        + LAYOUT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_layout_arguments(scanning)
    scanning.add_argument("--csv", type=Path, help="write path,label,split,group here (a --manifest)")

    demo = commands.add_parser(
        "make-demo",
        help="write a small dataset of real and fake videos in Celeb-DF's, FaceForensics++'s or DFDC's layout",
        description="Write synthetic real and fake videos in a data set's own layout, with its index files:\n\n"
        + "\n".join(
            textwrap.fill(f"{name}: {layout.writes}", 100, subsequent_indent="  ")
            for name, layout in DEMO_LAYOUTS.items()
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    demo.add_argument(
        "--layout", choices=DEMO_LAYOUTS, default="celebdf", help="the data set's layout (default celebdf)"
    )
    defaults = DemoSpec()
    demo.add_argument(
        "--identities",
        type=int,
        help="source identities (default "
        + ", ".join(f"{layout.identities} for {name}" for name, layout in DEMO_LAYOUTS.items())
        + "; ffpp pairs them: an even number, at least 6)",
    )
    demo.add_argument("--frames", type=int, default=defaults.frames, help="frames per video")
    demo.add_argument("--width", type=int, default=defaults.width, help="frame width (even)")
    demo.add_argument("--height", type=int, default=defaults.height, help="frame height (even)")
    demo.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    return main


LAYOUT_HELP = "\n\nLayouts (--dataset NAME):\n" + "\n".join(f"  {n:8} {layout.help}" for n, layout in LAYOUTS.items())


def add_layout_arguments(command: argparse.ArgumentParser) -> None:
    """The data root and how to read it: the same for build-cache and scan."""
    command.add_argument("--data-root", type=Path, required=True, help="folder holding the data set")
    command.add_argument(
        "--dataset",
        choices=list(LAYOUTS),
        help="the data set's layout (default: found from the folders; an FF++ download holding DFD too is ffpp)",
    )
    command.add_argument(
        "--compression", choices=COMPRESSIONS, default="c23", help="ffpp, dfd: which videos (default c23)"
    )
    command.add_argument(
        "--methods",
        default=",".join(FFPP_METHODS),
        help=f"ffpp: manipulation methods kept, comma-separated, of {','.join(ALL_FFPP_METHODS)} "
        f"(default {','.join(FFPP_METHODS)})",
    )
    command.add_argument(
        "--splits", type=Path, help="ffpp: folder of train.json, val.json, test.json (default ROOT/splits)"
    )
    command.add_argument(
        "--grouped-split",
        action="store_true",
        help="dfd, uadfv: split train/val/test by group instead of keeping all videos as test",
    )
    command.add_argument("--test-list", type=Path, help="celebdf: the test list (default: the data root's own)")
    command.add_argument("--manifest", type=Path, help="CSV with columns path,label[,split][,group] for other layouts")


def layout_options(args: argparse.Namespace) -> LayoutOptions:
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = sorted(set(methods) - set(ALL_FFPP_METHODS))
    if unknown or not methods:
        raise UsageError(f"--methods takes some of {','.join(ALL_FFPP_METHODS)}, not {args.methods!r}")
    return LayoutOptions(args.compression, methods, args.splits, args.grouped_split, args.test_list)


@ends("ingest")
def main(argv: list[str] | None, ending: Ending) -> int:
    args = parser().parse_args(argv)
    ending.kept = functools.partial(_kept, args)
    ending.where = _written(args)
    command = {"build-cache": _build, "scan": _scan, "make-demo": _make_demo}[args.command]
    return command(args)


def _written(args: argparse.Namespace) -> Path | str:
    """What the command writes, named in the line of a full disk: scan writes only its --csv (else nothing, so
    its data root is named)."""
    if args.command == "scan":
        return args.csv or args.data_root
    return args.out


def _kept(args: argparse.Namespace) -> str:
    """What a command that stopped part way leaves behind, and how to go on."""
    if args.command == "scan":
        return "nothing written; run scan again" if not args.csv else f"{args.csv} may be part written; run scan again"
    if args.command == "make-demo":
        return f"{args.out} holds part of the demo set; remove it and run make-demo again"
    again = "run the same command with --resume to finish it"
    try:
        if not store_exists(args.out):
            return f"nothing written ({args.out} was not created yet); run the same command again"
        with open_store(args.out) as store:
            stored, total = int((store.status != PENDING).sum()), len(store)
    except (StoreError, OSError):  # a bucket that no longer answers cannot say how much it holds
        return f"every finished shard is kept in {args.out}; {again}"
    return f"{stored} of {total} videos stored in {args.out}; {again}"


def _build(args: argparse.Namespace) -> int:
    config = BuildConfig(
        data_root=args.data_root,
        out=args.out,
        frames=args.frames,
        size=args.size,
        resize=args.resize,
        face_margin=args.face_margin,
        no_face=args.no_face,
        decoder=args.decoder,
        workers=args.workers,
        video_timeout=args.video_timeout,
        val_fraction=args.val_fraction,
        seed=args.seed,
        manifest=args.manifest,
        dataset=args.dataset,
        layout=layout_options(args),
        clips_per_shard=args.clips_per_shard,
        resume=args.resume,
        retry_failed=args.retry_failed,
        strict=args.strict,
    )
    summary = build_cache(config)
    return 3 if args.strict and summary.failed else 0


def _scan(args: argparse.Namespace) -> int:
    chosen, found = scan(args.data_root, args.dataset, layout_options(args), args.manifest)
    report(chosen, found)
    if args.csv:
        print(f"{args.csv}: {write_csv(found, args.csv)} videos (path,label,split,group)")
    return 0


def _make_demo(args: argparse.Namespace) -> int:
    identities = DEMO_LAYOUTS[args.layout].identities if args.identities is None else args.identities
    if args.width % 2 or args.height % 2 or min(args.width, args.height, args.frames, identities) < 2:
        raise UsageError("--width and --height must be even, and every count at least 2")
    if args.out.exists() and any(args.out.iterdir()):
        raise UsageError(f"--out {args.out} is not empty")
    spec = DemoSpec(identities=identities, frames=args.frames, width=args.width, height=args.height, seed=args.seed)
    started = time.perf_counter()
    try:
        videos = make_demo(args.out, spec, args.layout)
    except ValueError as error:
        raise UsageError(f"--layout {args.layout}: {error}") from error
    print(
        f"{args.out}: {len(videos)} videos in {args.layout}'s layout ({spec.frames} frames at "
        f"{spec.width}x{spec.height}) in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
