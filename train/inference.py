"""A trained run folder as a model ready to use: one loader for prediction and explanations alike.

A model only means what it was trained on: the clips must be decoded, sampled and resized as the store's
were, and normalised as the trainer's evaluation did. So the clip settings come from the run (the
trainer records them in metrics.json), and new videos are decoded by the ingest code that built the store.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cache import StoreError
from cache.dataset import Phases
from cache.schema import ClipSettings
from cache.store import clip_settings
from ingest.clips import RowJob, RowOutcome
from ingest.decoders import available, resolve
from ingest.faces import FaceSettings
from ingest.pool import VIDEO_TIMEOUT, decode_rows, threads_per_worker
from train.augment import ClipTransform
from train.checkpoint import load_weights
from train.data import UsageError
from train.models import ClipClassifier, build_model
from train.run_config import CONFIG_FILE, RunConfig


def decode_videos(
    paths: list[Path], clip: ClipSettings, workers: int, whole: bool = False, timeout: float = VIDEO_TIMEOUT
) -> Iterator[RowOutcome]:
    """Clips of `paths` made as the store's were, in parallel; outcome `row` is the index into `paths`; with
    `whole`, a face clip's outcome also holds its middle frame uncropped, from the same decode (CPU decoders);
    a video not decoded within `timeout` seconds fails (0: no limit; `ingest.pool.DecodePool`).

    Where the store's decoder cannot run (a GPU decoder on a machine without one), `auto` stands in: every
    decoder samples the same frames and gives them within a few grey levels.
    """
    threads = threads_per_worker(workers)
    decoder = decoder_for(clip)
    face = FaceSettings(margin=clip.face_margin, no_face=clip.no_face)
    jobs = [
        RowJob(i, str(path), decoder, threads, clip.frames, clip.size, clip.resize, face, whole)
        for i, path in enumerate(paths)
    ]
    return decode_rows(jobs, workers, timeout)


def decoder_for(clip: ClipSettings) -> str:
    """The store's decoder where it runs here, else `auto`'s choice."""
    return clip.decoder if available(clip.decoder) else resolve("auto")


@dataclass
class TrainedModel:
    """The chosen weights of one trained model, in eval mode, with the input transform, clip length and verdict
    threshold of its own evaluation."""

    name: str
    model: ClipClassifier
    transform: ClipTransform
    threshold: float
    clip: ClipSettings
    device: torch.device
    clip_frames: int  # frames per clip the model saw: a video's stored frames make stored / clip_frames clips

    @classmethod
    def load(cls, run_dir: Path, device: torch.device | None = None) -> TrainedModel:
        """RUN_DIR/MODEL as written by `train/run.py`: config.json and best.safetensors."""
        config, weights_file = run_config(run_dir), run_dir / "best.safetensors"
        if not weights_file.is_file():
            raise UsageError(f"--run {run_dir}: no {weights_file.name} (give a trained model's folder, RUN_DIR/MODEL)")
        device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        with warnings.catch_warnings():
            # The backbone's random start is overwritten by the checkpoint at once.
            warnings.filterwarnings("ignore", message=".*starts from random weights")
            model = build_model(config.model_config())
        model.load_state_dict(load_weights(weights_file))
        return cls(
            name=config.model,
            model=model.to(device).eval(),
            transform=ClipTransform(train=False, size=config.frame_size, mean=config.mean, std=config.std),
            threshold=config.threshold,
            clip=config.clip,
            device=device,
            clip_frames=config.clip_frames,
        )

    def inputs(self, clips: np.ndarray) -> torch.Tensor:
        """uint8 clips (B, T, H, W, 3) as the model's normalised float input on its device."""
        return self.transform(torch.from_numpy(clips).to(self.device))

    def verdict(self, probability: float) -> str:
        """Fake at or above the threshold chosen on validation, as the trainer's metrics count it."""
        return "fake" if probability >= self.threshold else "real"

    def phase_clips(self, clips: np.ndarray) -> np.ndarray:
        """Each video's clips as the model saw them (B, k, clip_frames, H, W, 3): clip p of its stored frames p,
        p + k, ... (`cache.dataset.Phases`)."""
        phases = Phases.of(clips.shape[1], self.clip_frames)
        return clips[:, phases.frames(np.arange(phases.count))]

    @torch.inference_mode()
    def probabilities(self, clips: np.ndarray) -> np.ndarray:
        """Fake probability of each video from its uint8 clip of all stored frames (B, T, H, W, 3): the mean of
        its k clips' probabilities, as the trainer's evaluation scores a video."""
        phased = self.phase_clips(clips)
        logits = self.model(self.inputs(phased.reshape(-1, *phased.shape[2:])))
        probabilities = logits.float().softmax(dim=1)[:, 1].double().cpu().numpy()
        return probabilities.reshape(phased.shape[:2]).mean(axis=1)


def run_config(run_dir: Path) -> RunConfig:
    """The run's config.json; a run from before it was written rebuilds from metrics.json (and, before the clip
    settings were recorded there, from its store)."""
    if (run_dir / CONFIG_FILE).is_file():
        return RunConfig.read(run_dir)
    metrics_file = run_dir / "metrics.json"
    if not metrics_file.is_file():
        raise UsageError(f"--run {run_dir}: no {CONFIG_FILE} (give a trained model's folder, RUN_DIR/MODEL)")
    metrics = json.loads(metrics_file.read_text())
    return RunConfig.of_metrics(metrics, run_clip_settings(metrics))


def run_clip_settings(metrics: dict) -> ClipSettings:
    """The clip settings a run recorded; a run from before they were recorded reads them from its store."""
    if "clip" in metrics:
        return ClipSettings(**metrics["clip"])
    cache = metrics["config"]["cache"]
    cache = cache[0] if isinstance(cache, list) else cache
    try:
        return clip_settings(cache)
    except StoreError as error:
        raise UsageError(f"the run does not record its clip settings and its store is unreadable: {error}") from error
