"""PyTorch views of a store's splits: a video's clips of every k-th frame, and several stores as one."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from cache.bucket import store_location
from cache.features import FEATURES, feature_entries, read_rows
from cache.schema import StoreError
from cache.shard_cache import ShardCacheConfig
from cache.store import ClipStore, open_store

_OPENING = threading.Lock()


@dataclass(frozen=True)
class Phases:
    """How a video's `stored` frames make clips of `clip_frames`: k = stored / clip_frames clips, clip p of the
    frames p, p + k, p + 2k, ... Each clip spans the whole video, as the stored frames do, and together the k
    clips hold every stored frame once."""

    stored: int
    clip_frames: int

    @classmethod
    def of(cls, stored: int, clip_frames: int | None = None) -> Phases:
        clip_frames = stored if clip_frames is None else clip_frames
        if clip_frames < 1 or stored % clip_frames:
            raise StoreError(f"--clip-frames {clip_frames} does not divide the store's {stored} frames per video")
        return cls(stored, clip_frames)

    @property
    def count(self) -> int:
        return self.stored // self.clip_frames

    def frames(self, phases: np.ndarray) -> np.ndarray:
        """The stored frames (len(phases), clip_frames) of each phase's clip."""
        return np.asarray(phases, np.int64)[:, None] + self.count * np.arange(self.clip_frames)


class PhasedItems:
    """Items of a split: k per video, item i the clip of phase i mod k of video i // k (`Phases`).

    `rows` and `labels` hold each item's store row and label; `videos` counts videos. With k = 1 an item is a
    video's clip of all its stored frames.
    """

    phases: Phases
    rows: np.ndarray
    labels: np.ndarray

    def _set_items(self, rows: np.ndarray, labels: np.ndarray, phases: Phases) -> None:
        self.phases = phases
        self.rows = np.repeat(rows, phases.count)
        self.labels = np.repeat(labels.astype(np.int64), phases.count)

    @property
    def videos(self) -> int:
        return len(self.rows) // self.phases.count

    def __len__(self) -> int:
        return len(self.rows)

    def _frames(self, indices: np.ndarray) -> np.ndarray | None:
        """The stored frames of each item's clip; None where an item is a whole stored clip."""
        return None if self.phases.count == 1 else self.phases.frames(np.asarray(indices) % self.phases.count)


class ClipDataset(PhasedItems, Dataset):
    """uint8 clips (T, H, W, 3) and labels of the ok rows of one split (and each clip's row, with `with_rows`);
    with `clip_frames`, k clips of every k-th frame per video (`PhasedItems`).

    Each process opens its own store handle on first use, so the dataset is safe to hand to DataLoader
    workers, and the trainer's reader threads share it (`read_into`). A store in a bucket is read through the
    shard cache `cache` names, which travels with the dataset to its workers. `__getitems__` lets the DataLoader
    fetch a whole batch in one `read`; with `collate_fn=collate_clips` that batch is handed on as read, not
    copied again by `default_collate`.
    """

    def __init__(
        self,
        store_path: str | Path,
        split: str | None = None,
        with_rows: bool = False,
        clip_frames: int | None = None,
        cache: ShardCacheConfig | None = None,
    ):
        self.store_path = store_location(store_path)
        self.split = split
        self.with_rows = with_rows
        self.cache = cache
        with open_store(self.store_path, cache) as store:
            rows = store.rows(split)
            self._set_items(rows, store.label[rows], Phases.of(store.spec.frames, clip_frames))
            self.store_rows = len(store)
            _, size, _, channels = store.spec.clip_shape()
            self.sample_shape = (self.phases.clip_frames, size, size, channels)
        self.sample_dtype = torch.uint8
        self._store: ClipStore | None = None
        self._pid: int | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None, "_pid": None}

    def store(self) -> ClipStore:
        with _OPENING:  # reader threads share one handle
            if self._store is None or self._pid != os.getpid():
                self._store = open_store(self.store_path, self.cache)
                self._pid = os.getpid()
            return self._store

    def read_into(self, indices: np.ndarray, out: torch.Tensor) -> None:
        """The clips of `indices` into `out` (a reused buffer), read by this thread; safe from several threads."""
        self.store().read(self.rows[indices], out=out.numpy(), frames=self._frames(indices))

    def __getitem__(self, index: int) -> tuple:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> ClipBatch:
        rows = self.rows[indices]
        clips = self.store().read(rows, frames=self._frames(indices))
        columns = [torch.from_numpy(clips), torch.from_numpy(self.labels[indices])]
        if self.with_rows:
            columns.append(torch.from_numpy(rows))
        return ClipBatch(columns)


class StoreUnion(PhasedItems, Dataset):
    """Several stores' datasets read as one: item indices run through the parts in order, and each item's row
    is its part's row plus the rows of the stores before it, so rows stay unique across stores."""

    def __init__(self, parts: Sequence[ClipDataset]):
        if len({(part.sample_shape, part.phases) for part in parts}) != 1:
            raise StoreError("the stores of one run need clips of one shape and one --clip-frames")
        self.parts = list(parts)
        self.phases = parts[0].phases
        self.sample_shape, self.sample_dtype = parts[0].sample_shape, parts[0].sample_dtype
        offsets = np.cumsum([0] + [part.store_rows for part in parts])
        self.rows = np.concatenate([part.rows + offset for part, offset in zip(parts, offsets, strict=False)])
        self.labels = np.concatenate([part.labels for part in parts])
        self._part = np.repeat(np.arange(len(parts)), [len(part) for part in parts])
        self._local = np.concatenate([np.arange(len(part)) for part in parts])

    def read_into(self, indices: np.ndarray, out: torch.Tensor) -> None:
        """Each part reads its items of the batch; straight into `out` where they lie together in it."""
        indices = np.asarray(indices)
        parts = self._part[indices]
        for part in np.unique(parts):
            where = np.flatnonzero(parts == part)
            local = self._local[indices[where]]
            if where[-1] - where[0] + 1 == len(where):
                self.parts[part].read_into(local, out[where[0] : where[-1] + 1])
            else:
                held = torch.empty((len(where), *self.sample_shape), dtype=self.sample_dtype)
                self.parts[part].read_into(local, held)
                out[torch.from_numpy(where)] = held


class ClipBatch(list):
    """The samples of one `__getitems__` call (views into one array), which also keeps them as columns."""

    def __init__(self, columns: list[torch.Tensor]):
        super().__init__(zip(*columns, strict=True))
        self.columns = tuple(columns)


def collate_clips(batch: list) -> tuple | list:
    """A ClipBatch's columns as they are (no copy); anything else as `default_collate` would make it."""
    return list(batch.columns) if isinstance(batch, ClipBatch) else default_collate(batch)


class FeatureDataset(PhasedItems, Dataset):
    """The features (T, D) float16 and labels of the ok, computed rows of one split, held in memory; with
    `clip_frames`, k items of every k-th frame's features per video, as `ClipDataset` has them.

    Features are small (16 x 512 halves are 16 KB a clip), so a split fits in memory and an epoch reads
    nothing from disk; only the split's own rows are read, once. `read_into` serves the trainer's feed a
    batch by indexing the tensor in memory.
    """

    def __init__(self, store_path: str | Path, entry: str, split: str | None = None, clip_frames: int | None = None):
        self.store_path = store_location(store_path)
        with open_store(self.store_path) as store:
            entries = feature_entries(store)
            if entry not in entries:
                raise StoreError(f"{store_path}: no feature entry {entry!r} (has: {', '.join(entries) or 'none'})")
            self.spec = entries[entry]
            group = store._root[FEATURES][entry]
            done = np.asarray(group["done"][...]).astype(bool)
            rows = store.rows(split)
            missing = rows[~done[rows]]
            if len(missing):
                raise StoreError(
                    f"features/{entry}: {len(missing)} ok clips of {split or 'the store'} have no features yet "
                    "(run `python -m train.features` again to finish)"
                )
            self._set_items(rows, store.label[rows], Phases.of(store.spec.frames, clip_frames))
            self.values = torch.from_numpy(read_rows(group["values"], rows))
        self.sample_shape = (self.phases.clip_frames, *self.values.shape[2:])
        self.sample_dtype = self.values.dtype

    def __getitem__(self, index: int) -> tuple:
        out = torch.empty(self.sample_shape, dtype=self.sample_dtype)
        self.read_into(np.array([index]), out[None])
        return out, int(self.labels[index])

    def read_into(self, indices: np.ndarray, out: torch.Tensor) -> None:
        videos = torch.from_numpy(np.asarray(indices) // self.phases.count)
        frames = self._frames(indices)
        if frames is None:
            torch.index_select(self.values, 0, videos, out=out)
        else:
            out.copy_(self.values[videos[:, None], torch.from_numpy(frames)])
