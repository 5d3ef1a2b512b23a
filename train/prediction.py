"""Is this video fake? A trained model's verdict on new videos, decoded exactly as its training clips were.

The model loads once; the videos decode in worker processes (the pool that built the store) while the
model scores the clips already decoded, a batch at a time. A video that cannot be decoded gets a row with
the reason, so one bad file never costs the verdicts on the others.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest.clips import RowOutcome
from ingest.discover import VIDEO_SUFFIXES, is_video
from train.data import UsageError
from train.inference import TrainedModel

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
