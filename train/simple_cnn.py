"""The seed notebook's own frame CNN: four conv blocks and a global pool, the one family not taken from timm."""

from __future__ import annotations

from torch import nn

FEATURE_DIM = 256
INPUT_SIZE = 224  # the seed's frame size; the CNN pools globally, so it takes any


def conv_block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def simple_cnn_backbone() -> nn.Sequential:
    widths = (3, 32, 64, 128, FEATURE_DIM)
    blocks = [conv_block(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
