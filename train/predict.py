"""`python -m train.predict --run RUN_DIR/MODEL VIDEO ...`: a trained model's verdict on new videos
(`train.prediction`), printed and optionally written as CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from cache.exits import Ending, ends
from ingest.discover import VIDEO_SUFFIXES
from ingest.pool import add_decoding_options
from train.data import UsageError
from train.inference import TrainedModel, decode_videos
from train.prediction import find_videos, predict, summary, write_csv


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="python -m train.predict",
        description=(
            "Say for each video how likely it is fake, with the verdict at the threshold the model chose on its "
            "validation split. Videos are decoded as the model's training store was (same frames, size, resize "
            "and decoder). A video that cannot be decoded gets a row with its error. Exit status 2 on bad input, "
            "4 when the disk is full, 130 after Ctrl-C and 143 after SIGTERM."
        ),
    )
    main.add_argument("--run", type=Path, required=True, help="a trained model's folder, RUN_DIR/MODEL")
    main.add_argument(
        "videos",
        type=Path,
        nargs="+",
        help=f"video files, or folders searched (recursively) for {' '.join(sorted(VIDEO_SUFFIXES))} files",
    )
    main.add_argument("--csv", type=Path, help="also write the rows to this CSV file (path,probability,verdict,error)")
    add_decoding_options(main, "decoding processes")
    main.add_argument("--batch-size", type=int, default=16, help="clips per forward pass of the model (default 16)")
    return main


@ends("predict")
def main(argv: list[str] | None, ending: Ending) -> int:
    args = parser().parse_args(argv)
    ending.kept, ending.where = "no prediction was written; run the same command again", args.csv
    if args.workers < 1 or args.batch_size < 1:
        raise UsageError("--workers and --batch-size must be at least 1")
    if args.video_timeout < 0:
        raise UsageError("--video-timeout must be 0 (no limit) or more seconds")
    if args.csv is not None and not args.csv.parent.is_dir():
        raise UsageError(f"--csv {args.csv}: folder {args.csv.parent} does not exist")
    paths = find_videos(args.videos)
    trained = TrainedModel.load(args.run)
    outcomes = tqdm(
        decode_videos(paths, trained.clip, args.workers, timeout=args.video_timeout),
        total=len(paths),
        unit="video",
        desc="predict",
        disable=len(paths) < 2,
    )
    predictions = predict(trained, paths, outcomes, args.batch_size)
    print(f"{trained.name}: probability of fake, verdict at threshold {trained.threshold:.4f}")
    for prediction in predictions:
        print(prediction.line())
    print(summary(predictions))
    if args.csv is not None:
        ending.kept = f"the predictions are printed above, {args.csv} may be part written; run the same command again"
        write_csv(args.csv, predictions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
