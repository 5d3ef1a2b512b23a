"""A PyTorch view of one split of a store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cache.store import ClipStore, open_store


class ClipDataset(Dataset):
    """uint8 clips (T, H, W, 3) and labels of the ok rows of one split (and each clip's row, with `with_rows`).

    Each process opens its own store handle on first use, so the dataset is safe to hand to
    DataLoader workers. `__getitems__` lets the DataLoader fetch a whole batch in one `read`.
    """

    def __init__(self, store_path: str | Path, split: str | None = None, with_rows: bool = False):
        self.store_path = Path(store_path)
        self.split = split
        self.with_rows = with_rows
        with open_store(self.store_path) as store:
            self.rows = store.rows(split)
            self.labels = store.label[self.rows].astype(np.int64)
        self._store: ClipStore | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None, "_pid": None}

    def store(self) -> ClipStore:
        if self._store is None or self._pid != os.getpid():
            self._store = open_store(self.store_path)
            self._pid = os.getpid()
        return self._store

    def __getitem__(self, index: int) -> tuple:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple]:
        rows = self.rows[indices]
        clips = torch.from_numpy(self.store().read(rows))
        if self.with_rows:
            return [(clip, int(self.labels[i]), int(r)) for clip, i, r in zip(clips, indices, rows, strict=True)]
        return [(clip, int(self.labels[i])) for clip, i in zip(clips, indices, strict=True)]
