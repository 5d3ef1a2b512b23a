"""The model registry: each detector a frame backbone and a clip head, built by one factory from a ModelConfig.

Every model maps float clips (B, T, 3, H, W) to logits (B, 2). The backbone sees all B*T frames as one
batch and yields per-frame features (B, T, D); the head turns those into logits over time. Keeping the two
apart lets a feature cache run the (frozen) backbone once and train the head alone on its cached output.

The registry holds the seed notebook's three (`simple_cnn`, `resnet18`, `effnet_lstm`), the field's usual
backbones averaging their frame logits (`xception`, `efficientnet_b4`, `clip_vit_b16`), and any timm model as
`timm/NAME` with the head `--temporal` names. The backbones come from `train.simple_cnn` and `train.timm_backbones`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from train.augment import ModelInput
from train.data import UsageError
from train.pretrained import load_backbone_weights, pretrained_overlay
from train.simple_cnn import FEATURE_DIM, INPUT_SIZE, simple_cnn_backbone
from train.timm_backbones import check_timm_model, timm_backbone, timm_input

TIMM_PREFIX = "timm/"
TEMPORAL = ("mean", "lstm", "attention")  # the heads --temporal gives a timm/NAME model


@dataclass(frozen=True)
class Family:
    """A registered model: its timm backbone (None: the seed's own CNN), its head over time and its learning rate."""

    name: str
    backbone: str | None
    head: str  # a key of HEADS
    lr: float = 1e-4
    about: str = ""


REGISTRY = {
    family.name: family
    for family in (
        Family("simple_cnn", None, "vote", 1e-3, "seed: 4-block CNN, an MLP per frame, frame logits averaged"),
        Family("resnet18", "resnet18", "embed_mean", about="seed: frame embeddings averaged over time"),
        Family("effnet_lstm", "efficientnet_b0", "lstm", about="seed: a bidirectional LSTM over frame embeddings"),
        Family("xception", "legacy_xception", "mean", about="FaceForensics++'s baseline, frame logits averaged"),
        Family("efficientnet_b4", "tf_efficientnet_b4", "mean", about="DFDC winners' backbone, frame logits averaged"),
        Family("clip_vit_b16", "vit_base_patch16_clip_224", "mean", about="CLIP ViT-B/16, frame logits averaged"),
    )
}
MODEL_NAMES = tuple(REGISTRY)
SEED_MODELS = ("simple_cnn", "resnet18", "effnet_lstm")  # what --model all trains: the seed notebook's three


@dataclass(frozen=True)
class ModelConfig:
    """Which classifier to build and where its backbone weights come from.

    `pretrained` asks timm for its pretrained weights (from the Hugging Face Hub, or the copy in its cache where the
    Hub cannot be reached); `weights` loads a local safetensors file instead, for machines without network. With
    neither, a timm backbone starts from random weights. `temporal` picks a timm/NAME model's head (default mean);
    `frame_size` builds a backbone made for one image size (a ViT) for the frames it will see.
    """

    name: str
    dropout: float = 0.5
    pretrained: bool = False
    weights: Path | None = None
    lstm_hidden: int = 128
    temporal: str | None = None
    frame_size: int | None = None


class ClipClassifier(nn.Module):
    """`backbone` on every frame, then `head` on the (B, T, D) features: forward = head(features(x)).

    `input` is what the backbone expects (size, mean, std): whatever feeds the model normalises with it."""

    def __init__(self, backbone: nn.Module, head: nn.Module, feature_dim: int, input: ModelInput):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.feature_dim = feature_dim
        self.input = input

    def forward_features(self, clips: torch.Tensor) -> torch.Tensor:
        batch, frames = clips.shape[:2]
        features = self.backbone(clips.flatten(0, 1))
        return features.reshape(batch, frames, -1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(clips))


class FrameVoteHead(nn.Module):
    """simple_cnn: classify each frame on its own with an MLP, then average the frame logits."""

    def __init__(self, feature_dim: int, dropout: float):
        super().__init__()
        self.frame = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(feature_dim, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(128, 2),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.frame(features).mean(dim=1)


class FrameLogitMeanHead(nn.Module):
    """xception, efficientnet_b4, clip_vit_b16 and --temporal mean: a linear classifier on each frame, as the
    backbone's own, and the clip's logits the mean of its frames'."""

    def __init__(self, feature_dim: int, dropout: float):
        super().__init__()
        self.frame = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, 2))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.frame(features).mean(dim=1)


class MeanPoolHead(nn.Module):
    """resnet18: embed each frame, average the embeddings over time, classify the clip."""

    def __init__(self, feature_dim: int, dropout: float):
        super().__init__()
        self.frame = nn.Sequential(
            nn.Linear(feature_dim, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, 256),
        )
        self.classifier = clip_classifier(256, dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.frame(features).mean(dim=1))


class LstmHead(nn.Module):
    """effnet_lstm and --temporal lstm: embed each frame, run a bidirectional LSTM over time, average its outputs,
    classify."""

    def __init__(self, feature_dim: int, dropout: float, hidden: int):
        super().__init__()
        # BatchNorm1d wants (N, C), so the frame MLP runs on the flattened (B*T, D) features.
        self.frame = nn.Sequential(
            nn.Linear(feature_dim, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(inplace=True),
        )
        self.lstm = nn.LSTM(256, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.classifier = clip_classifier(2 * hidden, dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, frames = features.shape[:2]
        embedded = self.frame(features.flatten(0, 1)).reshape(batch, frames, -1)
        # Autocast would run cuDNN's LSTM in fp16 even under bf16, where its state can overflow: keep it fp32.
        with torch.autocast(embedded.device.type, enabled=False):
            outputs, _ = self.lstm(embedded.float())
        return self.classifier(outputs.mean(dim=1))


class AttentionPoolHead(nn.Module):
    """--temporal attention: a learnt score per frame, softmaxed over time, weighs the frame features into one clip
    feature, which a linear layer classifies; the frames that show the fake can outweigh the rest."""

    def __init__(self, feature_dim: int, dropout: float):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(feature_dim, 128), nn.Tanh(), nn.Linear(128, 1))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, 2))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weights = self.score(features).softmax(dim=1)  # (B, T, 1)
        return self.classifier((weights * features).sum(dim=1))


def clip_classifier(width: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 128), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(128, 2))


def make_head(kind: str, feature_dim: int, config: ModelConfig) -> nn.Module:
    """The head `kind` (a Family's) on features of `feature_dim`."""
    if kind == "lstm":
        return LstmHead(feature_dim, config.dropout, config.lstm_hidden)
    heads = {
        "vote": FrameVoteHead,
        "mean": FrameLogitMeanHead,
        "embed_mean": MeanPoolHead,
        "attention": AttentionPoolHead,
    }
    return heads[kind](feature_dim, config.dropout)


def family(name: str, temporal: str | None = None) -> Family:
    """The registered model `name`, or timm's model NAME for `timm/NAME` with the head `temporal` (default mean).

    A registered model's head is part of it: `temporal` is refused there, so a name always means one model."""
    if name.startswith(TIMM_PREFIX):
        backbone = name[len(TIMM_PREFIX) :]
        check_timm_model(backbone)
        if temporal is not None and temporal not in TEMPORAL:
            raise UsageError(f"--temporal must be one of {', '.join(TEMPORAL)}, not {temporal!r}")
        return Family(name, backbone, temporal or "mean", about=f"timm's {backbone}")
    if name not in REGISTRY:
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}, or timm/NAME")
    if temporal is not None:
        raise UsageError(f"--temporal is for timm/NAME models: {name}'s head is part of it")
    return REGISTRY[name]


def build_model(config: ModelConfig) -> ClipClassifier:
    """The classifier `config.name`, with its backbone weights loaded as the config asks. The backbone is built
    first, so that a seed draws the same random backbone whatever head follows (the feature cache relies on it)."""
    model = family(config.name, config.temporal)
    if config.pretrained and config.weights is not None:
        raise ValueError("give either pretrained or weights, not both")
    if model.backbone is None:
        if config.pretrained:
            raise ValueError(f"{config.name} has no pretrained weights")
        backbone: nn.Module = simple_cnn_backbone()
        if config.weights is not None:
            load_backbone_weights(backbone, Path(config.weights))
        feature_dim, input = FEATURE_DIM, ModelInput(INPUT_SIZE)
    else:
        backbone = timm_backbone(model.backbone, config.pretrained, config.weights, config.frame_size)
        feature_dim, input = backbone.num_features, timm_input(backbone)
        if not config.pretrained and config.weights is None:
            warnings.warn(
                f"{config.name}: the backbone starts from random weights; pass pretrained or weights "
                "to start from pretrained ones",
                stacklevel=2,
            )
    return ClipClassifier(backbone, make_head(model.head, feature_dim, config), feature_dim, input)


def check_start(name: str, pretrained: bool, weights: Path | None) -> None:
    """Refuse, before anything runs, a start the backbone cannot have: --pretrained with --weights, or pretrained
    weights that cannot be had here."""
    if pretrained and weights is not None:
        raise UsageError("--pretrained and --weights: give one of them")
    if pretrained:
        backbone = family(name).backbone
        if backbone is None:
            raise UsageError(f"--pretrained: {name} has no pretrained weights")
        pretrained_overlay(backbone)


def folder_name(name: str) -> str:
    """The model's folder in a run: its name, with timm/NAME as timm-NAME, so every model is one level down."""
    return name.replace("/", "-")


def default_lr(name: str) -> float:
    return REGISTRY[name].lr if name in REGISTRY else Family.lr


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def registry_lines() -> list[str]:
    """The registry as `--list-models` prints it: each model's parameters, default input size, backbone and head.

    The models are built on the meta device, which allocates nothing: counting CLIP ViT-B/16 costs no memory."""
    rows = [("model", "parameters", "input", "backbone (timm)", "about")]
    for name, model in REGISTRY.items():
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            built = build_model(ModelConfig(name))
        size = built.input.size
        rows.append((name, f"{count_parameters(built):,}", f"{size}x{size}", model.backbone or "-", model.about))
    rows.append(("timm/NAME", "-", "NAME's", "NAME", f"any timm model; --temporal {'|'.join(TEMPORAL)} (mean)"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
