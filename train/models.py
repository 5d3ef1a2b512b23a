"""The seed notebook's three video classifiers, split into a frame backbone and a clip head.

Every model maps float clips (B, T, 3, H, W) to logits (B, 2). The backbone sees all B*T frames as one
batch and yields per-frame features (B, T, D); the head turns those into logits. Keeping the two apart
lets a feature cache run the (frozen) backbone once and train the head alone on its cached output.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from train.data import UsageError

MODEL_NAMES = ("simple_cnn", "resnet18", "effnet_lstm")
DEFAULT_LR = {"simple_cnn": 1e-3, "resnet18": 1e-4, "effnet_lstm": 1e-4}
TIMM_BACKBONES = {"resnet18": "resnet18", "effnet_lstm": "efficientnet_b0"}
HUB_TIMEOUT = 5.0  # seconds the Hugging Face Hub has to answer one request before --pretrained gives up on it
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm fetches from a model's Hub repo, in order


@dataclass(frozen=True)
class ModelConfig:
    """Which classifier to build and where its backbone weights come from.

    `pretrained` asks timm for ImageNet weights (from the Hugging Face Hub, or the copy in its cache where the
    Hub cannot be reached); `weights` loads a local safetensors file instead, for machines without network. With
    neither, a timm backbone starts from random weights.
    """

    name: str
    dropout: float = 0.5
    pretrained: bool = False
    weights: Path | None = None
    lstm_hidden: int = 128


class ClipClassifier(nn.Module):
    """`backbone` on every frame, then `head` on the (B, T, D) features: forward = head(features(x))."""

    def __init__(self, backbone: nn.Module, head: nn.Module, feature_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.feature_dim = feature_dim

    def forward_features(self, clips: torch.Tensor) -> torch.Tensor:
        batch, frames = clips.shape[:2]
        features = self.backbone(clips.flatten(0, 1))
        return features.reshape(batch, frames, -1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(clips))


class FrameVoteHead(nn.Module):
    """simple_cnn: classify each frame on its own, then average the frame logits."""

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
    """effnet_lstm: embed each frame, run a bidirectional LSTM over time, average its outputs, classify."""

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


def clip_classifier(width: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 128), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(128, 2))


def conv_block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def simple_cnn_backbone() -> nn.Sequential:
    widths = (3, 32, 64, 128, 256)
    blocks = [conv_block(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def build_model(config: ModelConfig) -> ClipClassifier:
    """The classifier `config.name`, with its backbone weights loaded as the config asks."""
    if config.name not in MODEL_NAMES:
        raise ValueError(f"unknown model {config.name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if config.pretrained and config.weights is not None:
        raise ValueError("give either pretrained or weights, not both")
    if config.name == "simple_cnn":
        if config.pretrained:
            raise ValueError("simple_cnn has no pretrained weights")
        backbone: nn.Module = simple_cnn_backbone()
        feature_dim = 256
        head: nn.Module = FrameVoteHead(feature_dim, config.dropout)
    else:
        import timm  # here: simple_cnn's runs, and every command that stops at a bad argument, start without it

        overlay = pretrained_overlay(config.name) if config.pretrained else None
        backbone = timm.create_model(
            TIMM_BACKBONES[config.name], pretrained=config.pretrained, pretrained_cfg_overlay=overlay, num_classes=0
        )
        feature_dim = backbone.num_features
        if config.name == "resnet18":
            head = MeanPoolHead(feature_dim, config.dropout)
        else:
            head = LstmHead(feature_dim, config.dropout, config.lstm_hidden)
        if not config.pretrained and config.weights is None:
            warnings.warn(
                f"{config.name}: the backbone starts from random weights; pass pretrained or weights "
                "to start from ImageNet",
                stacklevel=2,
            )
    if config.weights is not None:
        load_backbone_weights(backbone, Path(config.weights))
    return ClipClassifier(backbone, head, feature_dim)


def check_start(name: str, pretrained: bool, weights: Path | None) -> None:
    """Refuse, before anything runs, a start the backbone cannot have: --pretrained with --weights, or ImageNet
    weights that cannot be had here."""
    if pretrained and weights is not None:
        raise UsageError("--pretrained and --weights: give one of them")
    if pretrained:
        pretrained_overlay(name)


def pretrained_overlay(name: str) -> dict | None:
    """What timm's `pretrained=True` needs to load `name`'s ImageNet weights here: nothing where the Hub answers
    (timm fetches them, or checks its cached copy), the cached file where it does not. Where there is neither,
    UsageError at once, in one line: huggingface_hub would retry the Hub for about 50 s before its traceback."""
    repo = hub_repo(name)
    unreachable = hub_unreachable(repo)
    if unreachable is None:
        return None
    cached = cached_weights(repo)
    if cached is None:
        raise UsageError(
            f"--pretrained: {name}'s ImageNet weights ({repo}) are not in the Hugging Face cache, and {unreachable}; "
            "without network, pass --weights FILE (the backbone's weights as a safetensors file)"
        )
    return {"file": cached}


def hub_repo(name: str) -> str:
    """The Hugging Face Hub repository timm loads `name`'s backbone weights from."""
    if name not in TIMM_BACKBONES:
        raise UsageError(f"--pretrained: {name} has no pretrained weights (only {', '.join(TIMM_BACKBONES)} do)")
    from timm.models import get_pretrained_cfg

    return get_pretrained_cfg(TIMM_BACKBONES[name]).hf_hub_id


def hub_unreachable(repo: str) -> str | None:
    """Why the Hub cannot serve `repo` now (offline mode, or no answer to one request within HUB_TIMEOUT), or None.

    One request without retries, waited for at most HUB_TIMEOUT, name lookup included: the system's resolver can
    take longer than that where no DNS server answers, so the request runs in a thread left behind on timeout."""
    import huggingface_hub

    if huggingface_hub.constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    url = huggingface_hub.hf_hub_url(repo, WEIGHT_FILES[0])
    failures: list[str | None] = []  # the request's error, or None where the Hub answered

    def ask() -> None:
        try:
            huggingface_hub.get_session().head(url, timeout=HUB_TIMEOUT)
        except Exception as error:  # whichever error the Hub's HTTP client raises, the Hub did not answer
            failures.append(str(error))
            return
        failures.append(None)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(HUB_TIMEOUT)
    if not failures:
        return f"the Hub did not answer within {HUB_TIMEOUT:.0f} s"
    return None if failures[0] is None else f"the Hub cannot be reached ({failures[0]})"


def cached_weights(repo: str) -> str | None:
    """The weights of `repo` in the Hugging Face cache, if a download put them there."""
    from huggingface_hub import try_to_load_from_cache

    for filename in WEIGHT_FILES:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    return None


def load_backbone_weights(backbone: nn.Module, path: Path) -> None:
    """Load a safetensors file of backbone keys, or of a whole timm model whose classifier keys are dropped.

    Missing `num_batches_tracked` buffers are allowed, since published timm checkpoints often lack them.
    """
    state = load_file(str(path))
    classifier = getattr(backbone, "pretrained_cfg", {}).get("classifier")
    if classifier:
        state = {key: value for key, value in state.items() if not key.startswith(f"{classifier}.")}
    expected = backbone.state_dict()
    missing = sorted(key for key in expected.keys() - state.keys() if not key.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = sorted(key for key in state.keys() & expected.keys() if state[key].shape != expected[key].shape)
    problems = [
        f"{len(keys)} {kind} keys (first: {', '.join(keys[:3])})"
        for kind, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", mismatched))
        if keys
    ]
    if problems:
        raise ValueError(f"{path} does not fit the backbone: {'; '.join(problems)}")
    backbone.load_state_dict(state, strict=False)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())
