"""`python -m bench run` and `python -m bench plot`."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.context import BenchConfig
from bench.results import RESULTS_MD, append_markdown, latest, plot, save, table
from bench.stages import STAGES, WITHOUT_VIDEOS, run_stages
from bench.stores import replicate
from cache.exits import BadInput, Ending, ends

DEMO_FOLDER = Path("results/demo-data")


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m bench", description="Throughput of every clipcache stage.")
    commands = main.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="time the stages",
        description=(
            "Time each stage over repeats after a warm-up (median, min-max; whole builds and the seed's OpenCV "
            "seeks, seconds a run, over half as many), beside the baseline a user would "
            "run and the hardware's limit, measured in the same run. Writes results/<time>-<host>.json, prints a "
            "table and appends it to bench/RESULTS.md. Exit status 2 on bad input, 4 when the disk is full, 130 after "
            "Ctrl-C and 143 after SIGTERM, each with a line saying what was written (results only once every stage "
            "has run)."
        ),
    )
    source = run.add_mutually_exclusive_group()  # needed by every stage but those WITHOUT_VIDEOS
    source.add_argument("--data", type=Path, help="a folder of videos in a layout ingest understands")
    source.add_argument("--demo", action="store_true", help="Celeb-DF-shaped demo videos (written once, then reused)")
    run.add_argument("--out", type=Path, default=Path("results"), help="where result files go (default results/)")
    run.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="which stages (default all)")
    run.add_argument("--repeat", type=int, default=5, help="timed repeats per measurement (default 5)")
    run.add_argument("--quick", action="store_true", help="fewer repeats and smaller work: a check, not a record")
    run.add_argument("--videos", type=int, default=8, help="videos timed in the decode stages (default 8)")
    run.add_argument("--markdown", type=Path, default=RESULTS_MD, help=f"table appended here (default {RESULTS_MD})")
    plotting = commands.add_parser("plot", help="draw the latest results as a bar chart")
    plotting.add_argument("--out", type=Path, default=Path("results"), help="folder of result files")
    return main


def demo_data(folder: Path) -> Path:
    """Celeb-DF-shaped videos (400 frames at 942x500, x264 defaults), written once and reused."""
    return _written_once(folder / "celebdf-shaped", "Celeb-DF-shaped demo videos", 3, frames=400, width=942, height=500)


def hd_faces(folder: Path) -> Path:
    """DFDC-shaped videos (300 frames at 1920x1080) whose faces' dlib boxes are 90-200 px, written once and
    reused: faces a detector looking at the frame shrunk to 640 px misses."""
    return _written_once(
        folder / "hd-faces", "1080p face videos", 2, frames=300, width=1920, height=1080, head=(0.18, 0.36)
    )


def _written_once(root: Path, what: str, identities: int, **spec) -> Path:
    """A demo set of one real and one fake video per identity, written to `root` unless it is there."""
    from ingest.demo import DemoSpec, make_demo

    if not (root / "List_of_testing_videos.txt").exists():
        print(f"writing {what} to {root} (once)...", file=sys.stderr)
        plan = DemoSpec(identities, reals_per_identity=1, fakes_per_identity=1, youtube=0, test_identities=0, **spec)
        make_demo(root, plan)
    return root


def demo_set(folder: Path) -> Path:
    """The 100 small videos of `ingest make-demo` (48 frames at 320x180), written once and reused: many short
    videos, where a build's start-up and the store's writes weigh most."""
    from ingest.demo import make_demo

    root = folder / "demo"
    if not (root / "List_of_testing_videos.txt").exists():
        print(f"writing the 100 demo videos to {root} (once)...", file=sys.stderr)
        make_demo(root)
    return root


def needs_videos(stages: list[str]) -> bool:
    """Whether any of `stages` times the bench's videos (--data or --demo), which a store is built from first."""
    return bool(set(stages) - set(WITHOUT_VIDEOS))


@ends("bench")
def main(argv: list[str] | None, ending: Ending) -> int:
    args = parser().parse_args(argv)
    ending.where = args.out
    ending.kept = "no result was written (results are written once every stage has run); run the same command again"
    return _run(args, ending)


def _run(args: argparse.Namespace, ending: Ending) -> int:
    if args.command == "plot":
        ending.kept = f"{args.out / 'latest.png'} may be part written; run the same command again"
        png = plot(latest(args.out), args.out / "latest.png")
        print(png)
        return 0
    if not (args.demo or args.data) and needs_videos(args.stages):
        raise BadInput("one of the arguments --data --demo is required")
    root = demo_data(DEMO_FOLDER) if args.demo else args.data or Path(".")
    if not root.is_dir():
        raise BadInput(f"{root}: no such folder")
    work = Path(tempfile.mkdtemp(prefix="clipcache-bench-"))
    ending.where = f"{work.parent} or {args.out}"  # the bench's stores, then its results
    try:
        return _measure(args, root, work, ending)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # a full run leaves 2.4 GB of stores there


def _measure(args: argparse.Namespace, root: Path, work: Path, ending: Ending) -> int:
    """Every stage asked for, on `root`'s videos, with the bench's stores in `work`; the results saved, with the
    seconds the whole run took (the bench's own store and videos made first included) and each stage's."""
    started = time.perf_counter()
    from ingest.build import BuildConfig, build_cache
    from ingest.layouts import find_videos

    videos, cache = [], work / "bench.zarr"
    if needs_videos(args.stages):
        built = build_cache(BuildConfig(root, work / "videos.zarr", decoder="pyav"), log=lambda _: None)
        if built.ok == 0:
            raise BadInput(f"no video under {root} decodes")
        replicate(work / "videos.zarr", cache, 64 if args.quick else 512)
        videos = [root / p for p in find_videos(root)["path"].tolist()][: args.videos]
    repeat = 2 if args.quick else args.repeat
    config = BenchConfig(
        videos=videos,
        data_root=root,
        cache=cache,
        work=work,
        repeat=repeat,
        quick=args.quick,
        demo_set=demo_set(DEMO_FOLDER) if "ingest" in args.stages else None,
        hd_faces=hd_faces(DEMO_FOLDER) if "faces" in args.stages else None,
    )
    rows, seconds = run_stages(config, args.stages)
    data = str(root) if needs_videos(args.stages) else "none (the stages make their own)"
    took = ", ".join(f"{name} {s:.0f}" for name, s in seconds.items())
    settings = {"data": data, "videos": len(videos), "repeat": repeat, "quick": args.quick}
    settings["seconds"] = f"{time.perf_counter() - started:.0f} in all ({took})"
    path, record = save(rows, args.out, settings)
    ending.kept = f"the results are saved in {path}, their table perhaps not yet in {args.markdown}"
    append_markdown(rows, record, args.markdown)
    print(table(rows))
    print(f"\n{path}; appended to {args.markdown} ({settings['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
