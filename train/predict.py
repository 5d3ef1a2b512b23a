"""Is this video fake? A trained model's verdict on new videos, decoded exactly as its training clips were.

The model loads once; the videos decode in worker processes (the pool that built the store) while the
model scores the clips already decoded, a batch at a time. A video that cannot be decoded gets a row with
the reason, so one bad file never costs the verdicts on the others.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cache.exits import Ending, ends
from ingest.clips import RowOutcome
from ingest.discover import VIDEO_SUFFIXES, is_video
from ingest.pool import add_decoding_options
from train.data import UsageError
from train.inference import TrainedModel, decode_videos

CSV_COLUMNS = ("path", "probability", "verdict", "error")


@dataclass(frozen=True)
class Prediction:
    path: Path
    probability: float | None = None
    verdict: str = ""
    error: str = ""

    def line(self) -> str:
        if self.error:
            return f"{'-':>6}  {'error':<5}  {self.path}: {self.error}"
        return f"{self.probability:6.4f}  {self.verdict:<5}  {self.path}"


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


def find_videos(arguments: list[Path]) -> list[Path]:
    """Files as given (whatever their suffix), folders searched for video files, in a stable order."""
    paths: list[Path] = []
    for argument in arguments:
        if argument.is_dir():
            paths += sorted(path for path in argument.rglob("*") if is_video(path))
        elif argument.is_file():
            paths.append(argument)
        else:
            raise UsageError(f"{argument}: no such file or folder")
    if not paths:
        suffixes = " ".join(sorted(VIDEO_SUFFIXES))
        raise UsageError(f"no video files ({suffixes}) found in {', '.join(map(str, arguments))}")
    return paths


def predict(
    trained: TrainedModel, paths: list[Path], outcomes: Iterable[RowOutcome], batch_size: int
) -> list[Prediction]:
    """One prediction per path, in the order of `paths`, from decoding outcomes that arrive in any order."""
    predictions: list[Prediction | None] = [None] * len(paths)
    waiting: list[RowOutcome] = []

    def score() -> None:
        probabilities = trained.probabilities(np.stack([outcome.clip for outcome in waiting]))
        for outcome, probability in zip(waiting, probabilities, strict=True):
            predictions[outcome.row] = Prediction(paths[outcome.row], float(probability), trained.verdict(probability))
        waiting.clear()

    for outcome in outcomes:
        if outcome.clip is None:
            predictions[outcome.row] = Prediction(paths[outcome.row], error=outcome.error)
            continue
        waiting.append(outcome)
        if len(waiting) == batch_size:
            score()
    if waiting:
        score()
    return predictions


def summary(predictions: list[Prediction]) -> str:
    verdicts = [prediction.verdict or "error" for prediction in predictions]
    counts = ", ".join(f"{verdicts.count(kind)} {kind}" for kind in ("fake", "real", "error"))
    return f"{len(predictions)} videos: {counts}"


def write_csv(path: Path, predictions: list[Prediction]) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(CSV_COLUMNS)
        for prediction in predictions:
            probability = "" if prediction.probability is None else repr(prediction.probability)
            writer.writerow([str(prediction.path), probability, prediction.verdict, prediction.error])


if __name__ == "__main__":
    sys.exit(main())
