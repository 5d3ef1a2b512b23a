"""Frame backbones from timm: any of its models, headless (`num_classes=0`), with the input it expects.

A backbone's input size, mean and std are its own (CLIP's mean and std are not ImageNet's), so they come from
timm's data config of the model, and every place that feeds the model normalises with them.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from train.augment import ModelInput
from train.data import UsageError
from train.pretrained import load_backbone_weights, pretrained_overlay


def check_timm_model(backbone: str) -> None:
    """UsageError unless timm knows `backbone`."""
    from timm import is_model

    if not is_model(backbone):
        raise UsageError(f"timm has no model {backbone!r} (timm.list_models() lists them)")


def timm_backbone(backbone: str, pretrained: bool, weights: Path | None, frame_size: int | None) -> nn.Module:
    """The timm model `backbone` without its classifier, its weights from timm (`pretrained`), a file, or random.

    A model built for one image size (a ViT's position embeddings) is built for `frame_size` when it is given
    and differs; one that takes any size is built as it is.
    """
    import timm  # here: simple_cnn's runs, and every command that stops at a bad argument, start without it

    check_timm_model(backbone)
    overlay = pretrained_overlay(backbone) if pretrained else None
    options = {"pretrained": pretrained, "pretrained_cfg_overlay": overlay, "num_classes": 0}
    native = timm.models.get_pretrained_cfg(backbone)
    fixed = native is not None and native.fixed_input_size
    if fixed and frame_size is not None and frame_size != native.input_size[-1]:
        options["img_size"] = frame_size
    model = timm.create_model(backbone, **options)
    if weights is not None:
        load_backbone_weights(model, Path(weights))
    return model


def timm_input(model: nn.Module) -> ModelInput:
    """The input size, mean and std of a timm model's data config."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    return ModelInput(size=int(config["input_size"][-1]), mean=tuple(config["mean"]), std=tuple(config["std"]))
