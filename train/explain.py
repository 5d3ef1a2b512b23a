"""`python -m train.explain --run RUN_DIR/MODEL (--cache STORE --rows N ... | --video V ...) --out DIR`: Grad-CAM
and each frame's part in the verdict (`train.explanation`), one PNG per clip."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cache.bucket import store_location
from cache.exits import Ending, ends
from cache.shard_cache import add_cache_options, cache_config
from ingest.pool import add_decoding_options
from train.data import UsageError
from train.explanation import explain, first_clip, plot, store_clips, video_clips
from train.inference import TrainedModel
from train.models import folder_name


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m train.explain",
        description=(
            "Draw Grad-CAM heatmaps of the 'fake' class over the frames of clips, with each frame's contribution "
            "to the decision (gradient x feature) as bars beneath: one PNG per clip, OUT/MODEL_CLIP.png. "
            "Exit status 2 on bad input, 4 when the disk is full, 130 after Ctrl-C and 143 after SIGTERM."
        ),
    )
    main.add_argument("--run", type=Path, required=True, help="a trained model's folder, RUN_DIR/MODEL")
    source = main.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--cache", type=store_location, help="explain clips of this store (its clips must match the run's)"
    )
    add_cache_options(main)
    source.add_argument("--video", type=Path, nargs="+", help="explain these videos, decoded as the run's store was")
    main.add_argument("--rows", type=int, nargs="+", help="with --cache: the store rows to explain")
    main.add_argument("--out", type=Path, required=True, help="folder for the PNGs (created)")
    add_decoding_options(main, "with --video: decoding processes")
    return main


@ends("explain")
def main(argv: list[str] | None, ending: Ending) -> int:
    args = parser().parse_args(argv)
    ending.kept, ending.where = "no explanation was drawn; run the same command again", args.out
    if (args.cache is None) != (args.rows is None):
        raise UsageError("--rows goes with --cache, and --cache needs --rows")
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.video_timeout < 0:
        raise UsageError("--video-timeout must be 0 (no limit) or more seconds")
    for video in args.video or []:
        if not video.is_file():
            raise UsageError(f"--video {video}: no such file")
    trained = TrainedModel.load(args.run)
    if args.cache is not None:
        clips, failures = store_clips(args.cache, args.rows, trained.clip, cache_config(args)), []
    else:
        clips, failures = video_clips(args.video, trained.clip, args.workers, args.video_timeout)
    args.out.mkdir(parents=True, exist_ok=True)
    drawn: list[Path] = []
    ending.kept = lambda: f"{len(drawn)} of {len(clips)} explanations are in {args.out}; run the same command again"
    for clip in clips:
        path = args.out / f"{folder_name(trained.name)}_{clip.name}.png"
        explanation = explain(trained, clip.frames)
        plot(trained, first_clip(clip, explanation), explanation).savefig(path, dpi=100)
        drawn.append(path)
        print(path)
    for failure in failures:
        print(f"explain: cannot decode {failure}", file=sys.stderr)
    print(f"{len(clips)} explanations in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
