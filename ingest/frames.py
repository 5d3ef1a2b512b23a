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


def resize_clip(
    frames: np.ndarray | torch.Tensor, size: int, mode: str = "squash", in_float: bool | None = None
) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, size, size, 3) uint8, on whatever device the frames are.

    One interpolation for every decoder (bilinear with antialiasing, as torchvision resizes), so
    that CPU and GPU decoders give the same clip within a grey level. CUDA antialiases floating
    types only, so off the CPU (`in_float` None) it resizes in float32 and rounds back; on the CPU
    the uint8 kernel is kept, float32 there being about 20 times slower (942x500 -> 224, 1 thread).
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
        nchw = _interpolate(nchw, size, nchw.device.type != "cpu" if in_float is None else in_float)
    return nchw.permute(0, 2, 3, 1).contiguous()


def _interpolate(nchw: torch.Tensor, size: int, in_float: bool) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 images, computed in uint8 or in float32 rounded back."""
    source = nchw.float() if in_float else nchw
    out = F.interpolate(source, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8) if in_float else out
