"""A finished run and its stores, seen video by video: what the review page (`train.review_app`) shows.

A run's tables say how often a model is wrong; a researcher also needs to see which videos, on which frames,
looking where. Everything here is scored by the project's own code, so that the page agrees with the tables:
a store's videos as `train.evaluate` scores them (`train.evaluation.score_feed`, the mean of each video's clips), a new
video as `train.predict` decodes and scores it, and Grad-CAM as `train.explain` draws it. Scores are computed
on first asking and kept. Requests name models and stores only by the names the run gave them, and videos
by store row: no path from outside reaches the filesystem.
"""

from __future__ import annotations

import html
import io
import json
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from accelerate import Accelerator

from cache import open_store
from cache.schema import LABEL_NAMES, OK, SPLIT_CODES, SPLIT_NAMES, ClipSettings
from cache.store import ClipStore
from ingest.discover import VIDEO_SUFFIXES
from train.data import UsageError, shard_feed, store_names
from train.evaluation import check_store, load_models, model_folders, score_feed, split_clips
from train.explanation import Clip, Explanation, WholeFrame, explain, first_clip, plot, store_clips, video_clips
from train.inference import TrainedModel
from train.metrics import video_scores

SPLITS = ("test", "val", "train", "all")
LABELS = ("real", "fake", "unknown")
RUN_FIGURES = ("curves", "confusion")  # the PNGs of a model folder the page shows
RUN_TABLES = ("comparison", "cross_dataset", "robustness")  # the markdown tables of a run folder
STRIP_FRAMES = 8  # frames in a video's strip on the list
STRIP_HEIGHT = 72


class NotFound(LookupError):
    """A model, store, row or figure that the run does not have: 404, with this message."""


@dataclass(frozen=True)
class VideoScore:
    """One video of a store as the list shows it: how wrong the model is comes first."""

    def wrong_first(self) -> tuple[bool, float]:
        """The list's order: the mistakes at the run's threshold first, then the rest, each the most confidently
        wrong first; a threshold chosen on val lies away from 0.5, where a mistake can be less confident than a
        right answer near the threshold, and a researcher looks for the mistakes."""
        return not self.mistaken, -self.wrongness

    store: str
    row: int
    path: str
    label: str
    split: str
    probability: float
    verdict: str
    wrongness: float  # the probability given to the wrong class (labelled videos), -1 where the label is unknown

    @property
    def mistaken(self) -> bool:
        return self.label in ("real", "fake") and self.verdict != self.label

    def as_dict(self) -> dict:
        return {**asdict(self), "mistaken": self.mistaken}


@dataclass(frozen=True)
class FrameView:
    """One stored frame of a video: its source frame number, its own score and its face crop's box."""

    index: int
    probability: float
    box: list[int] | None  # x0, y0, x1, y1 in source pixels, where the store kept one


@dataclass(frozen=True)
class CheckResult:
    """The answer to an uploaded video: `train.predict`'s verdict, each frame's score and `train.explain`'s
    figure."""

    model: str
    probability: float
    verdict: str
    threshold: float
    frames: list[FrameView]
    explanation_png: bytes

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "probability": self.probability,
            "verdict": self.verdict,
            "threshold": self.threshold,
            "frames": [asdict(frame) for frame in self.frames],
        }


class UndecodableVideo(ValueError):
    """An upload that does not decode as the run's store was built: 422, with the decoder's reason."""


def wrongness(label: str, probability: float) -> float:
    """How much probability the model gave to the class the video is not: 1 is a confident mistake."""
    if label == "fake":
        return 1.0 - probability
    if label == "real":
        return probability
    return -1.0


def jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    """An RGB uint8 image as JPEG bytes."""
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cannot encode the image as JPEG")
    return data.tobytes()


def strip(frames: np.ndarray, count: int = STRIP_FRAMES, height: int = STRIP_HEIGHT) -> np.ndarray:
    """`count` frames spread over a clip, side by side at `height` pixels: a video at a glance."""
    picked = frames[np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)]
    side = (height, height)
    return np.concatenate([cv2.resize(frame, side, interpolation=cv2.INTER_AREA) for frame in picked], axis=1)


def with_box(whole: WholeFrame) -> np.ndarray:
    """The uncropped source frame with its face crop's square drawn on it."""
    frame = np.ascontiguousarray(whole.frame.copy())
    x0, y0, x1, y1 = (int(v) for v in whole.box)
    thickness = max(2, frame.shape[1] // 300)
    cv2.rectangle(frame, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 0), thickness)
    return frame


@torch.inference_mode()
def frame_probabilities(trained: TrainedModel, frames: np.ndarray) -> np.ndarray:
    """Each frame's fake probability on its own, as a clip of that one frame: where in the video the model sees
    the fake (the video's score is its clips', not the mean of these)."""
    logits = trained.model(trained.inputs(np.ascontiguousarray(frames[:, None])))
    return logits.float().softmax(dim=1)[:, 1].double().cpu().numpy()


def figure_png(trained: TrainedModel, clip: Clip, explanation: Explanation) -> bytes:
    buffer = io.BytesIO()
    plot(trained, first_clip(clip, explanation), explanation).savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def upload_suffix(filename: str | None) -> str:
    """The upload's own suffix where it is a video's (decoders sniff the content anyway), else .mp4: the only part
    of a name sent from outside that is kept."""
    suffix = Path(filename or "").suffix.lower()
    return suffix if suffix in VIDEO_SUFFIXES else ".mp4"


def markdown_html(text: str) -> str:
    """A run's markdown table files (a pipe table and lines of notes) as HTML: what `train.reporting` writes."""
    out: list[str] = []
    rows: list[list[str]] = []

    def close_table() -> None:
        if rows:
            head, *body = rows
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
            out.append("</table>")
            rows.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            if not set(stripped) <= set("|:- "):  # the header's separator line
                rows.append([cell.strip().replace("\\|", "|") for cell in stripped.strip("|").split(" | ")])
            continue
        close_table()
        if stripped:
            out.append(f"<p>{html.escape(stripped)}</p>")
    close_table()
    return "\n".join(out)


class RunReview:
    """A run's models (loaded once) and its stores (open for the server's life), with every score the page asks
    for computed once and kept. Safe to share between request threads: model work and store reads are locked."""

    def __init__(self, run: Path, caches: list[Path], batch_size: int = 8, workers: int = 2):
        self.run = run
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())  # as train.evaluate scores
        models = load_models(run, self.accelerator.device)
        self.models = {model.name: model for model in models}
        self.folders = {model.name: folder for model, folder in zip(models, model_folders(run), strict=True)}
        self.store_paths = store_names(caches)
        for model in self.models.values():
            for cache in self.store_paths.values():
                check_store(model, cache)
        self.stores: dict[str, ClipStore] = {name: open_store(path) for name, path in self.store_paths.items()}
        self.batch_size, self.workers = batch_size, workers
        self._model_lock = threading.Lock()
        self._store_locks = {name: threading.Lock() for name in self.stores}
        self._scores: dict[tuple[str, str, str], list[VideoScore]] = {}

    def close(self) -> None:
        for store in self.stores.values():
            store.close()

    # What requests name, checked against the run.

    def model(self, name: str | None) -> TrainedModel:
        """A model of the run by name (the first where none is named)."""
        if not name:
            return next(iter(self.models.values()))
        if name not in self.models:
            raise NotFound(f"no model {name!r} in this run (it has {', '.join(self.models)})")
        return self.models[name]

    def store(self, name: str) -> ClipStore:
        if name not in self.stores:
            raise NotFound(f"no store {name!r} (this page serves {', '.join(self.stores)})")
        return self.stores[name]

    def ok_row(self, store: str, row: int) -> ClipStore:
        found = self.store(store)
        if not 0 <= row < len(found) or found.status[row] != OK:
            raise NotFound(f"row {row} is not a decoded video of store {store!r} (rows 0..{len(found) - 1})")
        return found

    # The run as its files record it.

    def metrics(self, model: str) -> dict:
        return json.loads((self.folders[self.model(model).name] / "metrics.json").read_text())

    def figure(self, model: str, name: str) -> Path:
        """A model folder's curves.png or confusion.png."""
        folder = self.folders[self.model(model).name]
        if name not in RUN_FIGURES or not (folder / f"{name}.png").is_file():
            raise NotFound(f"no {name!r} figure for model {model!r} (one of {', '.join(RUN_FIGURES)})")
        return folder / f"{name}.png"

    def tables(self) -> dict[str, str]:
        """The run folder's comparison, cross-dataset and robustness tables that exist, as markdown text."""
        folder = self.run.parent if (self.run / "metrics.json").is_file() else self.run  # RUN_DIR/MODEL: RUN_DIR's
        found = {name: folder / f"{name}.md" for name in RUN_TABLES}
        return {name: path.read_text() for name, path in found.items() if path.is_file()}

    def split_counts(self, store: str) -> dict[str, dict[str, int]]:
        """Decoded videos of each split by label: split -> {real, fake, unknown, videos}."""
        found = self.store(store)
        counts = {}
        for split, code in SPLIT_CODES.items():
            labels = found.label[(found.status == OK) & (found.split == code)]
            counts[split] = {name: int((labels == value).sum()) for value, name in LABEL_NAMES.items()}
            counts[split]["videos"] = int(len(labels))
        return counts

    # Scores, computed on first asking.

    def scores(self, model: str, store: str, split: str = "test") -> list[VideoScore]:
        """Every decoded video of a store's split (`all`: every split) scored as `train.evaluate` scores it, the
        mistakes at the run's threshold first, each group the most confidently wrong first, and videos of unknown
        label last."""
        trained, found = self.model(model), self.store(store)
        if split not in SPLITS:
            raise NotFound(f"no split {split!r} (one of {', '.join(SPLITS)})")
        key = (trained.name, store, split)
        with self._model_lock:
            if key not in self._scores:
                self._scores[key] = self._score(trained, store, found, split)
        return self._scores[key]

    def _score(self, trained: TrainedModel, name: str, found: ClipStore, split: str) -> list[VideoScore]:
        dataset = split_clips(trained, self.store_paths[name], split)
        if not len(dataset):
            return []
        feed = shard_feed(dataset, self.batch_size, self.accelerator, even=True, threads=self.workers)
        scored = score_feed(trained, feed, self.accelerator)
        rows = np.unique(scored.rows)
        _, probabilities = video_scores(scored.rows, scored.labels, scored.probs)
        videos = []
        for row, probability in zip(rows.tolist(), probabilities.tolist(), strict=True):
            label = LABEL_NAMES[int(found.label[row])]
            videos.append(
                VideoScore(
                    name,
                    row,
                    str(found.path[row]),
                    label,
                    SPLIT_NAMES[int(found.split[row])],
                    probability,
                    trained.verdict(probability),
                    wrongness(label, probability),
                )
            )
        return sorted(videos, key=lambda video: (*video.wrong_first(), video.row))

    def video_list(
        self, model: str, stores: list[str], split: str = "test", label: str | None = None
    ) -> list[VideoScore]:
        """The videos of `stores` (all where empty) with `label` (any where None), most wrong first."""
        if label is not None and label not in LABELS:
            raise NotFound(f"no label {label!r} (one of {', '.join(LABELS)})")
        videos = [video for store in stores or list(self.stores) for video in self.scores(model, store, split)]
        if label is not None:
            videos = [video for video in videos if video.label == label]
        return sorted(videos, key=lambda video: (*video.wrong_first(), video.store, video.row))

    # One video of a store.

    def frames(self, store: str, row: int) -> np.ndarray:
        """The stored frames (T, H, W, 3) of a row."""
        found = self.ok_row(store, row)
        with self._store_locks[store]:
            return found.read([row])[0]

    def frame_views(self, model: str, store: str, row: int) -> list[FrameView]:
        """Each stored frame's source frame number, own score and face box."""
        trained, found = self.model(model), self.ok_row(store, row)
        frames = self.frames(store, row)
        with self._model_lock:
            probabilities = frame_probabilities(trained, frames)
        boxes = found.face_box[row]
        return [
            FrameView(
                int(found.frame_index[row][t]),
                float(probabilities[t]),
                boxes[t].tolist() if int(found.face_detected[row]) > 0 and not (boxes[t] == -1).all() else None,
            )
            for t in range(len(frames))
        ]

    def video_score(self, model: str, store: str, row: int) -> VideoScore:
        """The row's score as the list has it (scored with the rest of its split)."""
        found = self.ok_row(store, row)
        split = SPLIT_NAMES[int(found.split[row])]
        return next(video for video in self.scores(model, store, split) if video.row == row)

    def source_frame(self, store: str, row: int) -> np.ndarray | None:
        """The middle stored frame's source frame, uncropped, with the face crop's box drawn; None where the store
        is not a face build, found no face, or its video is no longer where the store says."""
        found = self.ok_row(store, row)
        clip = store_clips(self.store_paths[store], [row], ClipSettings.of_spec(found.spec))[0]
        return None if clip.whole is None else with_box(clip.whole)

    def explanation_png(self, model: str, store: str, row: int) -> bytes:
        """`train.explain`'s figure of a row: Grad-CAM on each frame and each frame's part in the verdict."""
        trained = self.model(model)
        self.ok_row(store, row)
        with self._model_lock:
            clip = store_clips(self.store_paths[store], [row], trained.clip)[0]
            return figure_png(trained, clip, explain(trained, clip.frames))

    # A new video.

    def check(self, model: str, data_file, filename: str | None) -> CheckResult:
        """An uploaded video (a readable binary file) decoded as the run's store was and scored as
        `train.predict` scores it, with each frame's score and the explanation; the copy on disk is deleted
        before this returns."""
        trained = self.model(model)
        with tempfile.TemporaryDirectory(prefix="review-upload-") as folder:
            path = Path(folder) / f"upload{upload_suffix(filename)}"
            with open(path, "wb") as out:
                while chunk := data_file.read(2**20):
                    out.write(chunk)
            clips, failures = video_clips([path], trained.clip, workers=1)
        if not clips:
            reason = failures[0].split(": ", 1)[-1] if failures else "no frames"
            raise UndecodableVideo(f"the upload does not decode as a video: {reason}")
        clip = clips[0]
        with self._model_lock:
            explanation = explain(trained, clip.frames)
            probabilities = frame_probabilities(trained, clip.frames)
            png = figure_png(trained, clip, explanation)
        frames = [FrameView(int(i), float(p), None) for i, p in zip(clip.indices, probabilities, strict=True)]
        probability = explanation.probability
        return CheckResult(trained.name, probability, trained.verdict(probability), trained.threshold, frames, png)


def open_review(run: Path, caches: list[Path], batch_size: int = 8, workers: int = 2) -> RunReview:
    """A run and its stores for the page; bad input (no trained model, a store of other clips) is a UsageError."""
    if not caches:
        raise UsageError("give at least one store with --cache")
    return RunReview(run, caches, batch_size, workers)
