"""Which frames a clip holds, and how they are resized: shared by every decoder."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

RESIZE_MODES = ("squash", "crop")


def sample_indices(n: int, count: int) -> np.ndarray:
    """`count` evenly spaced frames of `n`; fewer than `count` frames repeat, never decreasing."""
    if n < 1:
        raise ValueError("the video has no frames")
    return np.linspace(0, n - 1, count).astype(int)


def resize_clip(frames: np.ndarray | torch.Tensor, size: int, mode: str = "squash") -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, size, size, 3) uint8, on whatever device the frames are.

    One interpolation for every decoder (bilinear with antialiasing, as torchvision resizes), so
    that CPU and GPU decoders give the same clip within a few grey levels.
    """
    clip = torch.as_tensor(frames)
    if mode == "crop":
        h, w = clip.shape[1:3]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        clip = clip[:, top : top + side, left : left + side]
    elif mode != "squash":
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, not {mode!r}")
    nchw = clip.permute(0, 3, 1, 2)
    if nchw.shape[-2:] != (size, size):
        nchw = F.interpolate(nchw, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return nchw.permute(0, 2, 3, 1).contiguous()
