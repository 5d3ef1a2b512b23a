"""`cache show`: a clip's frames as a picture, one strip per store, to see what a build made of a video.

Stores built from the same videos with different settings (`--resize squash` and `--resize face`) show the
same row one above the other: the before and after of a preprocessing choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cache.schema import OK, StoreError
from cache.store import ClipStore

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def clip_strips(stores: list[ClipStore], row: int, frames: int) -> Figure:
    """`frames` evenly spaced frames of `row` in each store, a strip per store titled with its settings."""
    from matplotlib.figure import Figure  # here: every other `cache` command starts without matplotlib

    path = _same_video(stores, row)
    figure = Figure(figsize=(1.6 * frames, 2.1 * len(stores) + 0.4), layout="constrained")
    for strip, store in zip(figure.subfigures(len(stores), 1, squeeze=False)[:, 0], stores, strict=True):
        clip = store.read([row])[0]
        picks = np.linspace(0, len(clip) - 1, min(frames, len(clip))).astype(int)
        for ax, t in zip(strip.subplots(1, frames, squeeze=False)[0], picks, strict=False):
            ax.imshow(clip[t])
            ax.set_title(f"frame {store.frame_index[row][t]}", fontsize=7)
        for ax in strip.axes:
            ax.set_axis_off()
        strip.suptitle(_caption(store, row), fontsize=9)
    figure.suptitle(path, fontsize=10)
    return figure


def _same_video(stores: list[ClipStore], row: int) -> str:
    """The row's video, which must be an ok clip of the same video in every store."""
    paths = set()
    for store in stores:
        if not 0 <= row < len(store) or store.status[row] != OK:
            raise StoreError(f"--row {row}: not an ok clip of {store.location}")
        paths.add(str(store.path[row]))
    if len(paths) > 1:
        raise StoreError(f"--row {row} is a different video in each store: {', '.join(sorted(paths))}")
    return paths.pop()


def _caption(store: ClipStore, row: int) -> str:
    spec = store.spec
    caption = f"{Path(str(store.location)).name}: --resize {spec.resize}, {spec.size}x{spec.size}"
    if spec.resize == "face":
        detected = int(store.face_detected[row])
        caption += f", face found in {detected} of {spec.frames} frames" if detected else ", no face: squashed"
    return caption
