"""Which frames a clip holds, and how they are resized: shared by every decoder."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ingest.faces import FACE_DEFAULTS, FaceCrops, FaceSettings, face_crops

RESIZE_MODES = ("squash", "crop", "face")


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
    if mode == "face":
        raise ValueError("face-centred clips need their crop windows: see make_clip")
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


def make_clip(
    frames: np.ndarray | torch.Tensor,
    indices: np.ndarray,
    size: int,
    mode: str,
    face: FaceSettings = FACE_DEFAULTS,
) -> tuple[torch.Tensor, FaceCrops | None]:
    """The clip of sampled frames (T, H, W, 3) uint8 on any device, source frames `indices`, as `mode` makes it,
    and for `face` its crops.

    A face clip where no sampled frame shows a face is the squashed frames, with crops that detected none.
    """
    if mode != "face":
        return resize_clip(frames, size, mode), None
    crops = face_crops(frames, indices, face)
    if crops is None:
        empty = np.full((len(frames), 4), -1, np.int64)
        return resize_clip(frames, size, "squash"), FaceCrops(empty, 0)
    return resize_windows(frames, crops.boxes, size), crops


def resize_windows(frames: np.ndarray | torch.Tensor, windows: np.ndarray, size: int) -> torch.Tensor:
    """Each frame's window (x0, y0, x1, y1, zero-padded where it reaches past the frame) resized to size x size,
    with `resize_clip`'s interpolation, on the frames' device."""
    clip = torch.as_tensor(frames)
    height, width = clip.shape[1:3]
    out = []
    for frame, (x0, y0, x1, y1) in zip(clip, windows.tolist(), strict=True):
        crop = frame.new_zeros((y1 - y0, x1 - x0, 3))
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        crop[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = frame[sy0:sy1, sx0:sx1]
        out.append(resize_clip(crop[None], size)[0])
    return torch.stack(out)
