"""Why did the model call this clip fake? Grad-CAM heatmaps on its frames, and how much each frame counted.

Two views, because every model looks at a clip in two stages: a backbone looks at each frame alone
(Grad-CAM shows where in the frame), then a head weighs the frames together (an LSTM head, in order),
which gradient x feature per frame shows. Both explain the "fake" logit. Clips come from a store by row,
or from videos decoded as the model's training store was.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from cache import open_store
from cache.schema import FAKE, LABEL_NAMES, OK, UNKNOWN, ClipSettings
from cache.shard_cache import ShardCacheConfig
from ingest.decoders import make_decoder
from ingest.decoding import DecodeError
from ingest.pool import VIDEO_TIMEOUT
from train.data import UsageError
from train.inference import TrainedModel, decode_videos, decoder_for
from train.models import ClipClassifier

GRID_COLUMNS = 8


@dataclass(frozen=True)
class Clip:
    """One clip to explain and what to call it."""

    name: str  # the PNG's name, beside the model's
    source: str  # shown in the title
    frames: np.ndarray  # uint8 (T, H, W, 3)
    indices: np.ndarray  # source frame number of each frame
    label: str  # real, fake or unknown
    whole: WholeFrame | None = None  # face clips: the middle frame uncropped, with its crop's box


@dataclass(frozen=True)
class WholeFrame:
    """One source frame of a face clip with the square its crop was cut from, so a reader sees where it lies."""

    frame: np.ndarray  # uint8 (H, W, 3), the source's size
    box: np.ndarray  # x0, y0, x1, y1 in source pixels
    index: int  # its source frame number

    @classmethod
    def middle(cls, frame: np.ndarray, boxes: np.ndarray, indices: np.ndarray) -> WholeFrame:
        """`frame`, the middle of a clip's sampled frames uncropped, with its crop box and frame number."""
        middle = len(indices) // 2
        return cls(frame, boxes[middle], int(indices[middle]))


def whole_frame(video: Path, settings: ClipSettings, boxes: np.ndarray, detected: int) -> WholeFrame | None:
    """The middle sampled frame of `video`, decoded again whole (a store keeps none), and its crop box; None where
    the clip is not a face crop (another resize mode, or no face found) or the video cannot be read any more."""
    if settings.resize != "face" or detected <= 0 or not video.is_file():
        return None
    try:
        decoded = make_decoder(decoder_for(settings), 1).decode(str(video), settings.frames)
    except DecodeError:
        return None
    return WholeFrame.middle(decoded.frames[len(decoded.indices) // 2], boxes, decoded.indices)


@dataclass(frozen=True)
class Explanation:
    probability: float  # the video's: the mean over its clips, as its evaluation scores it
    clips: int  # of which the first is explained
    heatmap: np.ndarray  # (T, H, W) in [0, 1], one Grad-CAM map per frame
    contributions: np.ndarray  # (T,) gradient x feature of each frame: > 0 pushed towards fake


class FramesAsBatch(nn.Module):
    """A clip classifier fed one clip as its frames (T, 3, H, W): the 4-D image batch Grad-CAM expects, so the
    target layer's (T, C, h, w) activations give one heatmap per frame, at the frame's size."""

    def __init__(self, model: ClipClassifier):
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.model(frames.unsqueeze(0))


def target_layer(trained: TrainedModel) -> nn.Module:
    """The backbone's last stage, the finest map that still sees whole objects: simple_cnn's last conv block, an
    EfficientNet's conv_head (after its batch norm and activation, as it is pooled), else the last feature stage
    timm names (a ResNet's layer4, a ViT's last block)."""
    backbone = trained.model.backbone
    if trained.name == "simple_cnn":
        return backbone[-3]  # the last conv block, before the pooling and flattening
    if hasattr(backbone, "conv_head"):
        return backbone.bn2
    return backbone.get_submodule(backbone.feature_info[-1]["module"])


def token_grid(backbone: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """For a ViT, its block's (T, tokens, C) output as the (T, C, h, w) map of its patch tokens, which Grad-CAM
    weighs as a CNN's; None for a CNN, whose maps are already so."""
    if not hasattr(backbone, "patch_embed"):
        return None
    prefix, (height, width) = backbone.num_prefix_tokens, backbone.patch_embed.grid_size

    def grid(tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, prefix:].reshape(len(tokens), height, width, -1).permute(0, 3, 1, 2)

    return grid


def explain(trained: TrainedModel, clip: np.ndarray) -> Explanation:
    """Grad-CAM per frame and per-frame contributions for the fake class, of the first of the clips the model
    sees in a video's uint8 stored frames (T, H, W, 3): all of them, or frames 0, k, 2k, ... with
    `--clip-frames` (`first_clip`); with the video's probability, as its evaluation scores it."""
    phased = trained.phase_clips(clip[None])
    inputs = trained.inputs(phased[:, 0])
    layers, grid = [target_layer(trained)], token_grid(trained.model.backbone)
    with GradCAM(model=FramesAsBatch(trained.model), target_layers=layers, reshape_transform=grid) as cam:
        heatmap = cam(input_tensor=inputs[0], targets=[ClassifierOutputTarget(FAKE)])
    _, contributions = frame_contributions(trained.model, inputs)
    probability = float(trained.probabilities(clip[None])[0])
    return Explanation(probability, phased.shape[1], fit_heatmap(heatmap, clip.shape[1:3]), contributions)


def first_clip(clip: Clip, explanation: Explanation) -> Clip:
    """The frames of `clip` that `explanation` is of."""
    return replace(clip, frames=clip.frames[:: explanation.clips], indices=clip.indices[:: explanation.clips])


def frame_contributions(model: ClipClassifier, inputs: torch.Tensor) -> tuple[float, np.ndarray]:
    """The fake probability of one clip (1, T, 3, H, W), and gradient x feature of the fake logit summed per frame."""
    features = model.forward_features(inputs).detach().requires_grad_()
    logits = model.forward_head(features)
    (gradient,) = torch.autograd.grad(logits[0, FAKE], features)
    probability = float(logits.detach().float().softmax(dim=1)[0, FAKE])
    return probability, (gradient * features).sum(dim=-1)[0].detach().cpu().numpy()


def fit_heatmap(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Heatmaps of the model's input size brought to the clip's frames (they differ with --frame-size)."""
    if heatmap.shape[1:] == tuple(size):
        return heatmap
    resized = F.interpolate(torch.from_numpy(heatmap)[:, None], size=size, mode="bilinear", align_corners=False)
    return resized[:, 0].clamp(0, 1).numpy()


def plot(trained: TrainedModel, clip: Clip, explanation: Explanation) -> Figure:
    """The frames in a grid with their heatmaps, and under them a bar of each frame's contribution."""
    frames = len(clip.frames)
    columns = min(frames, GRID_COLUMNS)
    rows = math.ceil(frames / columns)
    top = 0 if clip.whole is None else 1
    heights = [2.4] * top + [1] * rows + [1.1]
    figure = Figure(figsize=(1.8 * columns + 0.6, 1.8 * (rows + 2.4 * top) + 2.4), layout="constrained")
    grid = figure.add_gridspec(top + rows + 1, columns, height_ratios=heights)
    if clip.whole is not None:
        draw_whole(figure.add_subplot(grid[0, :]), clip.whole)
    for t in range(frames):
        axes = figure.add_subplot(grid[top + t // columns, t % columns])
        axes.imshow(clip.frames[t])
        axes.imshow(explanation.heatmap[t], cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes.set_title(f"frame {clip.indices[t]}", fontsize=8)
        axes.set_axis_off()
    bars = figure.add_subplot(grid[top + rows, :])
    colours = ["tab:red" if value > 0 else "tab:blue" for value in explanation.contributions]
    bars.bar(range(frames), explanation.contributions, color=colours)
    bars.axhline(0, color="black", linewidth=0.6)
    bars.set_xticks(range(frames), [str(index) for index in clip.indices], fontsize=7)
    bars.set_xlabel("source frame")
    bars.set_ylabel("towards fake (+)\ntowards real (-)", fontsize=8)
    verdict = trained.verdict(explanation.probability)
    figure.suptitle(
        f"{trained.name}: {clip.source}\n"
        f"p(fake) {explanation.probability:.3f}{clips_note(explanation.clips)}, {verdict} at threshold "
        f"{trained.threshold:.3f}; label {clip.label}",
        fontsize=10,
    )
    return figure


def clips_note(clips: int) -> str:
    return "" if clips == 1 else f" (the video's: the mean of its {clips} clips; the first is shown)"


def draw_whole(axes, whole: WholeFrame) -> None:
    """The uncropped frame with the face crop's square on it (it may reach past the frame, where it was padded)."""
    axes.imshow(whole.frame)
    x0, y0, x1, y1 = whole.box.tolist()
    axes.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="yellow", linewidth=2))
    axes.set_title(f"frame {whole.index} whole, with the face crop's box", fontsize=8)
    axes.set_axis_off()


def store_clips(
    cache: Path, rows: list[int], settings: ClipSettings, shard_cache: ShardCacheConfig | None = None
) -> list[Clip]:
    """Rows of a store whose clips were made as the model's were."""
    with open_store(cache, shard_cache) as store:
        if ClipSettings.of_spec(store.spec) != settings:
            raise UsageError(f"--cache {cache} holds {store.spec} clips, but the model was trained on {settings}")
        for row in rows:
            if not 0 <= row < len(store) or store.status[row] != OK:
                raise UsageError(f"--rows {row}: not a decoded clip of {cache} (rows 0..{len(store) - 1})")
        frames = store.read(rows)
        root = Path(store.spec.data_root)
        return [
            Clip(
                f"row{row}",
                f"row {row}, {store.path[row]}",
                frames[i],
                store.frame_index[row],
                LABEL_NAMES[int(store.label[row])],
                whole_frame(root / store.path[row], settings, store.face_box[row], int(store.face_detected[row])),
            )
            for i, row in enumerate(rows)
        ]


def video_clips(
    paths: list[Path], settings: ClipSettings, workers: int, timeout: float = VIDEO_TIMEOUT
) -> tuple[list[Clip], list[str]]:
    """Clips of videos, decoded as the model's store was, a face clip's whole middle frame from the same decode;
    and a line for each video that would not decode (or not within `timeout` seconds)."""
    clips, failures = [], []
    stems = [path.stem for path in paths]
    for outcome in decode_videos(paths, settings, workers, whole=settings.resize == "face", timeout=timeout):
        path = paths[outcome.row]
        if outcome.clip is None:
            failures.append(f"{path}: {outcome.error}")
            continue
        name = path.stem if stems.count(path.stem) == 1 else f"{path.stem}_{outcome.row}"
        face = outcome.face
        if outcome.whole is not None:
            whole = WholeFrame.middle(outcome.whole, face.boxes, outcome.indices)
        else:  # a GPU decoder cuts the faces on the GPU and sends back no whole frame: decode it again here
            whole = None if face is None else whole_frame(path, settings, face.boxes, face.detected)
        clips.append(Clip(name, path.name, outcome.clip, outcome.indices, LABEL_NAMES[UNKNOWN], whole))
    return sorted(clips, key=lambda clip: clip.name), failures
