"""DeeperForensics-1.0's seven distortions at its five levels, applied to stored clips.

The levels and what each does follow `perturbation/add_distortion_to_video.py` (`get_distortion_parameter`, the
levels) and `perturbation/distortions.py` (one function per distortion) of EndlessSora/DeeperForensics-1.0
(commit 7589587), which works per BGR uint8 frame with OpenCV and numpy; here each works on a clip's RGB frames
at once, and all but video compression on the clip's own device:

- saturation (`CS`, `color_saturation`): the chroma of OpenCV's float YCbCr scaled by 0.4, 0.3, 0.2, 0.1, 0.0
  around its middle. Since luma and chroma are linear in RGB, that is each pixel drawn toward its BT.601 luma
  (0.299 R + 0.587 G + 0.114 B) by that factor; the studio-swing offsets of its YCbCr round trip cancel but for a
  shift under 0.01 grey level, left out.
- contrast (`CC`, `color_contrast`): every value multiplied by 0.85, 0.725, 0.6, 0.475, 0.35, toward black, not
  toward the mean.
- block (`BW`, `block_wise`): 16, 32, 48, 64, 80 times `min(H, W) // 256` grey (128) squares of 8 x 8 pixels,
  drawn anew for every frame, each at a uniform top-left corner in [0, H - 9] x [0, W - 9] (they may overlap). A
  224-pixel crop would get none there (224 // 256 = 0): here the multiplier is at least 1, so a crop gets the
  16-80 blocks the levels name.
- noise (`GNC`, `gaussian_noise_color`): white Gaussian noise of variance 0.001, 0.002, 0.005, 0.01, 0.05 added to
  each of Y, Cb and Cr in DeeperForensics' scale (OpenCV's float YCbCr of 0-255 frames, mapped to studio swing
  and divided by 255 once more): one unit there is 255^2 / 219 grey levels of luma and 255^2 / 224 of chroma, so
  level 1 is a luma standard deviation of 9.4 grey levels, level 5 of 66. Mapped back to RGB with OpenCV's
  YCrCb -> RGB coefficients and clipped to 0-255.
- blur (`GB`, `gaussian_blur`): `cv2.GaussianBlur` with a square kernel of 7, 9, 13, 17, 21 pixels and sigma a
  sixth of the kernel's size, borders reflected without repeating the edge (OpenCV's BORDER_REFLECT_101).
- jpeg (`JPEG`, `jpeg_compression`): no JPEG encoder: each frame shrunk by 2, 3, 4, 5, 6 (to `H // f` x `W // f`)
  and enlarged back, both bilinear with `cv2.resize`'s default (INTER_LINEAR, half-pixel centres, no antialias).
- video (`VC`, `video_compression`): `ffmpeg -i IN -crf C OUT.mp4`, that is libx264, preset medium, yuv420p, at
  CRF 30, 32, 35, 38, 40. Here the clip's frames are encoded so through PyAV at 25 fps and decoded back in memory;
  they are frames sampled over the video, so x264 sees more motion between them than between the video's own.

Values are truncated to uint8 where DeeperForensics truncates (`astype(np.uint8)`: saturation, contrast, noise)
and rounded where OpenCV rounds (blur, resizing). Left out: the `--via_xvid` step that writes every distorted
video through XVID and then ffmpeg's default H.264 again; a stored clip is already a decoded video's frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch
import torch.nn.functional as F

from train.data import UsageError

LEVELS = (1, 2, 3, 4, 5)
LUMA = (0.299, 0.587, 0.114)  # BT.601, as OpenCV's RGB -> YCrCb weighs R, G, B
BLOCK_SIDE = 8  # pixels; DeeperForensics' `width`
BLOCK_GREY = 128
BLOCKS_PER = 256  # a frame gets `min(H, W) // 256` times the level's count of blocks
LUMA_UNIT = 255**2 / 219  # grey levels of luma per unit of DeeperForensics' noise scale
CHROMA_UNIT = 255**2 / 224  # grey levels of Cb and Cr per unit
VIDEO_FPS = 25
TRUNCATION_SLACK = 1e-3  # keeps float error from truncating an exact integer value one level down

Op = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Distortion:
    """One of DeeperForensics' distortions: its name here, its `--type` code there, the parameter of each level,
    and the operation on a uint8 clip (T, H, W, 3) given that parameter and a generator on the clip's device."""

    name: str
    code: str
    parameters: tuple[float, ...]
    meaning: str
    op: Op
    on_device: bool = True

    def parameter(self, level: int) -> float:
        if level not in LEVELS:
            raise ValueError(f"level {level}: DeeperForensics' levels are 1-5")
        return self.parameters[level - 1]

    def __call__(self, clip: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
        """The clip distorted at `level`, a new uint8 tensor on the clip's device."""
        if clip.dtype != torch.uint8 or clip.ndim != 4 or clip.shape[-1] != 3:
            raise ValueError(f"expected a uint8 clip (T, H, W, 3), got {tuple(clip.shape)} {clip.dtype}")
        return self.op(clip, self.parameter(level), generator)


def truncated(values: torch.Tensor) -> torch.Tensor:
    """Float values to uint8 as numpy's astype does after clipping: toward zero."""
    return (values + TRUNCATION_SLACK).clamp(0, 255).floor().to(torch.uint8)


def rounded(values: torch.Tensor) -> torch.Tensor:
    """Float values to uint8 as OpenCV's fixed-point filters give them: to the nearest, halves up."""
    return half_up(values).clamp(0, 255).to(torch.uint8)


def half_up(values: torch.Tensor) -> torch.Tensor:
    """To the nearest integer, halves up (torch.round takes halves to even: 12% of a 2x shrink's pixels differ)."""
    return (values + 0.5).floor()


def saturation(clip: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    rgb = clip.float()
    luma = rgb @ torch.tensor(LUMA, device=clip.device)
    return truncated(luma[..., None] + factor * (rgb - luma[..., None]))


def contrast(clip: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    return truncated(clip.float() * factor)


def block_count(height: int, width: int, blocks: float) -> int:
    """The level's count times `min(H, W) // 256`, that multiplier at least 1 (see the module's docstring)."""
    return max(1, min(height, width) // BLOCKS_PER) * int(blocks)


def block_corners(clip: torch.Tensor, blocks: float, generator: torch.Generator) -> torch.Tensor:
    """Top-left corners (T, n, 2) as (row, column) of each frame's blocks, as `block_wise` draws them."""
    frames, height, width, _ = clip.shape
    if min(height, width) <= BLOCK_SIDE:
        raise ValueError(f"frames of {height} x {width} are too small for {BLOCK_SIDE}-pixel blocks")
    n = block_count(height, width, blocks)
    highs = torch.tensor([height - BLOCK_SIDE, width - BLOCK_SIDE], device=clip.device)
    draws = torch.rand((frames, n, 2), generator=generator, device=clip.device)
    return (draws * highs).long().minimum(highs - 1)


def block(clip: torch.Tensor, blocks: float, generator: torch.Generator) -> torch.Tensor:
    corners = block_corners(clip, blocks, generator)
    side = torch.arange(BLOCK_SIDE, device=clip.device)
    rows = (corners[..., 0, None] + side)[..., :, None]  # (T, n, 8, 1)
    columns = (corners[..., 1, None] + side)[..., None, :]  # (T, n, 1, 8)
    frame = torch.arange(clip.shape[0], device=clip.device)[:, None, None, None]
    out = clip.clone()
    out[frame, rows, columns] = BLOCK_GREY
    return out


def noise_to_rgb(device: torch.device) -> torch.Tensor:
    """(3, 3): noise in DeeperForensics' (Y, Cb, Cr) scale to grey levels of R, G, B (OpenCV's YCrCb -> RGB)."""
    return torch.tensor(
        [
            [LUMA_UNIT, 0.0, 1.403 * CHROMA_UNIT],
            [LUMA_UNIT, -0.344 * CHROMA_UNIT, -0.714 * CHROMA_UNIT],
            [LUMA_UNIT, 1.773 * CHROMA_UNIT, 0.0],
        ],
        device=device,
    )


def noise(clip: torch.Tensor, variance: float, generator: torch.Generator) -> torch.Tensor:
    ycbcr = torch.randn(clip.shape, generator=generator, device=clip.device) * math.sqrt(variance)
    return truncated(clip.float() + ycbcr @ noise_to_rgb(clip.device).T)


def gaussian_kernel(size: int, device: torch.device | None = None) -> torch.Tensor:
    """The 1-D kernel of `cv2.getGaussianKernel(size, size / 6)`: `size` taps, summing to 1."""
    sigma = size / 6
    offsets = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    return (taps / taps.sum()).float()


def channels_first(clip: torch.Tensor) -> torch.Tensor:
    return clip.permute(0, 3, 1, 2).float()


def channels_last(frames: torch.Tensor) -> torch.Tensor:
    return frames.permute(0, 2, 3, 1)


def blur(clip: torch.Tensor, size: float, generator: torch.Generator) -> torch.Tensor:
    size = int(size)
    taps = gaussian_kernel(size, clip.device)
    frames = F.pad(channels_first(clip), (size // 2,) * 4, mode="reflect")
    frames = F.conv2d(frames, taps.view(1, 1, 1, size).expand(3, 1, 1, size), groups=3)
    frames = F.conv2d(frames, taps.view(1, 1, size, 1).expand(3, 1, size, 1), groups=3)
    return rounded(channels_last(frames))


def bilinear(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`cv2.resize(..., INTER_LINEAR)` of float frames (T, 3, H, W), rounded to grey levels as uint8 frames are."""
    resized = F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    return half_up(resized).clamp(0, 255)


def jpeg(clip: torch.Tensor, factor: float, generator: torch.Generator) -> torch.Tensor:
    _, height, width, _ = clip.shape
    factor = int(factor)
    small = bilinear(channels_first(clip), height // factor, width // factor)
    return channels_last(bilinear(small, height, width)).to(torch.uint8)


def x264(frames: np.ndarray, crf: int) -> list[bytes]:
    """RGB frames (T, H, W, 3) of even sides as libx264 packets at `crf`, as ffmpeg's defaults encode them."""
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    encoder.time_base, encoder.framerate = Fraction(1, VIDEO_FPS), Fraction(VIDEO_FPS)
    encoder.options = {"crf": str(crf), "preset": "medium"}
    packets = []
    for number, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
        frame.pts = number
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    return [bytes(packet) for packet in packets]


def h264_frames(packets: Sequence[bytes]) -> np.ndarray:
    """The RGB frames (T, H, W, 3) of an H.264 stream's packets, in display order."""
    decoder = av.CodecContext.create("h264", "r")
    frames = []
    for data in [*packets, None]:
        packet = None if data is None else av.Packet(data)
        frames += [frame.to_ndarray(format="rgb24") for frame in decoder.decode(packet)]
    return np.stack(frames)


def video(clip: torch.Tensor, crf: float, generator: torch.Generator) -> torch.Tensor:
    frames, height, width, _ = clip.shape
    rgb = clip.cpu().numpy()
    # yuv420p needs even sides: an odd one is padded with its last row or column and cut back after.
    even = np.pad(rgb, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    decoded = h264_frames(x264(even, int(crf)))
    if len(decoded) != frames:
        raise RuntimeError(f"libx264 gave back {len(decoded)} frames of {frames}")
    return torch.from_numpy(decoded[:, :height, :width]).to(clip.device)


DISTORTIONS: dict[str, Distortion] = {
    d.name: d
    for d in (
        Distortion("saturation", "CS", (0.4, 0.3, 0.2, 0.1, 0.0), "chroma factor", saturation),
        Distortion("contrast", "CC", (0.85, 0.725, 0.6, 0.475, 0.35), "value factor", contrast),
        Distortion("block", "BW", (16, 32, 48, 64, 80), "8-px grey blocks", block),
        Distortion("noise", "GNC", (0.001, 0.002, 0.005, 0.01, 0.05), "YCbCr noise variance", noise),
        Distortion("blur", "GB", (7, 9, 13, 17, 21), "kernel size", blur),
        Distortion("jpeg", "JPEG", (2, 3, 4, 5, 6), "down/up-scale factor", jpeg),
        Distortion("video", "VC", (30, 32, 35, 38, 40), "x264 CRF", video, on_device=False),
    )
}


def parse_perturb(text: str) -> list[str]:
    """`all` or comma-separated names, in the order given, each once; an unknown name is one line of usage error."""
    if text.strip() == "all":
        return list(DISTORTIONS)
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in DISTORTIONS]
    if unknown or not names:
        raise UsageError(
            f"--perturb {text}: unknown distortion {', '.join(unknown) or '(none given)'}; "
            f"choose all or some of {','.join(DISTORTIONS)}"
        )
    return names


def clip_generator(seed: int, name: str, level: int, row: int, device: torch.device) -> torch.Generator:
    """A generator on `device` of its own for one video, distortion and level: the same draws whatever the batch,
    the order or the number of processes."""
    key = [seed, list(DISTORTIONS).index(name), level, row]
    state = int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> np.uint64(1))
    return torch.Generator(device).manual_seed(state)
