"""Turning uint8 clip batches into normalised model input, augmented or not, on the batch's own device.

The store hands out uint8 (B, T, H, W, 3); the models want float (B, T, 3, H, W). Doing the conversion and
the seed's augmentations batched where the batch already is (the GPU, in training) keeps the DataLoader
workers down to reading bytes. Each augmentation is drawn once per clip and applied to all its frames, so a
clip stays a coherent video rather than a flickering one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale, which ColorJitter's contrast uses
Triple = tuple[float, float, float]


@dataclass(frozen=True)
class ModelInput:
    """What a backbone was made to see: frames of `size` x `size`, normalised with its own per-channel mean and std
    (timm's data config of the model; ImageNet's for most, not for CLIP's)."""

    size: int
    mean: Triple = IMAGENET_MEAN
    std: Triple = IMAGENET_STD


@dataclass(frozen=True)
class ClipAugment:
    """Per-clip augmentation parameters, each of shape (B,)."""

    flip: torch.Tensor  # bool: mirror left-right
    angle: torch.Tensor  # degrees, counter-clockwise
    brightness: torch.Tensor  # factor multiplying the image
    contrast: torch.Tensor  # factor blending the image with its grey mean


@dataclass(frozen=True)
class AugmentRanges:
    """The seed's augmentations: RandomHorizontalFlip(0.5), RandomRotation(10), ColorJitter(0.2, 0.2)."""

    flip_p: float = 0.5
    degrees: float = 10.0
    brightness: float = 0.2
    contrast: float = 0.2

    def sample(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> ClipAugment:
        """Draw parameters for `batch` clips on the generator's device (else `device`, else the CPU).

        Drawing where the batch is spares a host-to-device copy per batch, which would make the CPU wait.
        """
        device = generator.device if generator is not None else device

        def rand() -> torch.Tensor:
            return torch.rand(batch, generator=generator, device=device)

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * rand()

        return ClipAugment(
            flip=rand() < self.flip_p,
            angle=uniform(-self.degrees, self.degrees),
            brightness=uniform(1 - self.brightness, 1 + self.brightness),
            contrast=uniform(1 - self.contrast, 1 + self.contrast),
        )


def to_unit_float(clips: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float32 (B, T, 3, H, W) in [0, 1], contiguous."""
    if clips.dtype != torch.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
        raise ValueError(f"expected uint8 clips (B, T, H, W, 3), got {clips.dtype} {tuple(clips.shape)}")
    return clips.permute(0, 1, 4, 2, 3).to(torch.float32, memory_format=torch.contiguous_format).div_(255)


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """float (B, T, 3, H, W) -> (B, T, 3, size, size), antialiased as the store's own resize."""
    batch, time = frames.shape[:2]
    resized = F.interpolate(frames.flatten(0, 1), size=(size, size), mode="bilinear", antialias=True)
    return resized.view(batch, time, 3, size, size)


@cache
def per_channel(values: tuple[float, float, float], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A (1, 1, 3, 1, 1) constant, made once per device and dtype rather than copied to the device per batch
    (outside inference mode, so that a gradient through the transform may use it whoever made it first)."""
    with torch.inference_mode(False):
        return torch.tensor(values, device=device, dtype=dtype).view(1, 1, 3, 1, 1)


def normalize(frames: torch.Tensor, mean: Triple = IMAGENET_MEAN, std: Triple = IMAGENET_STD) -> torch.Tensor:
    """Per-channel normalisation of float (B, T, 3, H, W) in [0, 1] (ImageNet's unless the model's are given)."""
    return (frames - per_channel(mean, frames.device, frames.dtype)) / per_channel(std, frames.device, frames.dtype)


def augment(frames: torch.Tensor, params: ClipAugment) -> torch.Tensor:
    """Flip, rotate (zero fill), then brightness and contrast: float (B, T, 3, H, W) in [0, 1] -> same."""
    batch, time, channels, height, width = frames.shape
    frames = torch.where(params.flip.view(batch, 1, 1, 1, 1), frames.flip(-1), frames)

    # One grid per clip: folding T into the channels makes grid_sample apply it to every frame alike.
    radians = params.angle.to(frames.dtype) * (math.pi / 180)
    cos, sin = radians.cos(), radians.sin()
    zero = torch.zeros_like(cos)
    # affine_grid works in [-1, 1] coordinates, so the aspect ratio enters to keep non-square rotations rigid.
    theta = torch.stack(
        [
            torch.stack([cos, -sin * (height / width), zero], dim=1),
            torch.stack([sin * (width / height), cos, zero], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [batch, time * channels, height, width], align_corners=False)
    folded = frames.reshape(batch, time * channels, height, width)
    frames = F.grid_sample(folded, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    frames = frames.view(batch, time, channels, height, width)

    frames = (frames * params.brightness.to(frames.dtype).view(batch, 1, 1, 1, 1)).clamp_(0, 1)
    grey_mean = (
        (frames * per_channel(GREY_WEIGHTS, frames.device, frames.dtype))
        .sum(dim=2, keepdim=True)
        .mean(dim=(-2, -1), keepdim=True)
    )
    contrast = params.contrast.to(frames.dtype).view(batch, 1, 1, 1, 1)
    return (contrast * frames + (1 - contrast) * grey_mean).clamp_(0, 1)


class ClipTransform:
    """uint8 (B, T, H, W, 3) -> normalised float32 (B, T, 3, H, W), with the seed's augmentations if `train`.

    `size` resizes the frames first (training at a reduced size from a full-size store); `mean` and `std` are the
    model's (`ModelInput`), ImageNet's by default.
    `seed` makes the sequence of augmentations reproducible; the transform keeps its own generator on the
    batch's device (on the CPU, the draws of a CPU generator; on a GPU, a GPU generator's), so successive
    calls draw fresh parameters. With `channels_last`, each frame of the (B*T, 3, H, W) view is
    laid out channels-last, which convolutions on GPU prefer; the shape stays (B, T, 3, H, W).
    """

    def __init__(
        self,
        train: bool = False,
        *,
        seed: int | None = None,
        ranges: AugmentRanges | None = None,
        channels_last: bool = False,
        size: int | None = None,
        mean: Triple = IMAGENET_MEAN,
        std: Triple = IMAGENET_STD,
    ):
        self.train = train
        self.size = size
        self.mean, self.std = tuple(mean), tuple(std)
        self.ranges = ranges or AugmentRanges()
        self.channels_last = channels_last
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device).manual_seed(self.seed)
        return self._generators[device]

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        frames = to_unit_float(clips)
        if self.size is not None and frames.shape[-2:] != (self.size, self.size):
            frames = resize_frames(frames, self.size)
        if self.train:
            frames = augment(frames, self.ranges.sample(frames.shape[0], self.generator(frames.device), frames.device))
        frames = normalize(frames, self.mean, self.std)
        if self.channels_last:
            frames = frames.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        return frames
