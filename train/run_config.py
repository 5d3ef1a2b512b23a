"""config.json: what rebuilds a trained model from its run folder alone, beside its weights (best.safetensors).

The model's registry name and options, the frames it was fed (size, normalisation) and the clips it was fed them
as (the store's preprocessing, the clip length and stride), and the verdict threshold chosen on validation: with
these, prediction, explanation and evaluation feed the model what it was trained on, without the run's arguments,
its store or metrics.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cache.dataset import Phases
from cache.schema import ClipSettings
from train.augment import IMAGENET_MEAN, IMAGENET_STD, Triple
from train.checkpoint import write_json
from train.models import ModelConfig

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class RunConfig:
    model: str  # a registered model, or timm/NAME
    temporal: str | None  # a timm/NAME model's head
    dropout: float
    lstm_hidden: int
    frame_size: int  # the frames' side as the model saw them, after any resize of the stored frames
    mean: Triple  # the normalisation of the frames: the backbone's own
    std: Triple
    clip: ClipSettings  # how the store made clips from videos: frames per video, size, resize mode, decoder
    clip_frames: int  # frames per clip: clip p of a video is its stored frames p, p + stride, ... (all p scored)
    threshold: float  # fake at or above it: chosen on the run's validation split

    @property
    def stride(self) -> int:
        return Phases.of(self.clip.frames, self.clip_frames).count

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            self.model,
            self.dropout,
            lstm_hidden=self.lstm_hidden,
            temporal=self.temporal,
            frame_size=self.frame_size,
        )

    def write(self, folder: Path) -> None:
        write_json(folder / CONFIG_FILE, {**asdict(self), "stride": self.stride})

    @classmethod
    def read(cls, folder: Path) -> RunConfig:
        values = json.loads((folder / CONFIG_FILE).read_text())
        values.pop("stride")
        return cls(
            **{
                **values,
                "mean": tuple(values["mean"]),
                "std": tuple(values["std"]),
                "clip": ClipSettings(**values["clip"]),
            }
        )

    @classmethod
    def of_metrics(cls, metrics: dict, clip: ClipSettings) -> RunConfig:
        """The config of a run trained before config.json was written (the seed's three, ImageNet-normalised), from
        its metrics.json."""
        config = metrics["config"]
        return cls(
            model=config["model"],
            temporal=None,
            dropout=config["dropout"],
            lstm_hidden=config.get("lstm_hidden", ModelConfig.lstm_hidden),
            frame_size=config["frame_size"] or clip.size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            clip=clip,
            clip_frames=int(metrics.get("clip_frames") or clip.frames),
            threshold=float(metrics["threshold"]),
        )
