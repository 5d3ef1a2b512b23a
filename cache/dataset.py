"""A PyTorch view of one split of a store."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from cache.store import ClipStore, open_store

_OPENING = threading.Lock()


class ClipDataset(Dataset):
    """uint8 clips (T, H, W, 3) and labels of the ok rows of one split (and each clip's row, with `with_rows`).

    Each process opens its own store handle on first use, so the dataset is safe to hand to DataLoader
    workers, and the trainer's reader threads share it (`read_into`). `__getitems__` lets the DataLoader
    fetch a whole batch in one `read`; with `collate_fn=collate_clips` that batch is handed on as read, not
    copied again by `default_collate`.
    """

    def __init__(self, store_path: str | Path, split: str | None = None, with_rows: bool = False):
        self.store_path = Path(store_path)
        self.split = split
        self.with_rows = with_rows
        with open_store(self.store_path) as store:
            self.rows = store.rows(split)
            self.labels = store.label[self.rows].astype(np.int64)
            self.sample_shape = store.spec.clip_shape()
        self.sample_dtype = torch.uint8
        self._store: ClipStore | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None, "_pid": None}

    def store(self) -> ClipStore:
        with _OPENING:  # reader threads share one handle
            if self._store is None or self._pid != os.getpid():
                self._store = open_store(self.store_path)
                self._pid = os.getpid()
            return self._store

    def read_into(self, indices: np.ndarray, out: torch.Tensor) -> None:
        """The clips of `indices` into `out` (a reused buffer), read by this thread; safe from several threads."""
        self.store().read(self.rows[indices], out=out.numpy())

    def __getitem__(self, index: int) -> tuple:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> ClipBatch:
        rows = self.rows[indices]
        columns = [torch.from_numpy(self.store().read(rows)), torch.from_numpy(self.labels[indices])]
        if self.with_rows:
            columns.append(torch.from_numpy(rows))
        return ClipBatch(columns)


class ClipBatch(list):
    """The samples of one `__getitems__` call (views into one array), which also keeps them as columns."""

    def __init__(self, columns: list[torch.Tensor]):
        super().__init__(zip(*columns, strict=True))
        self.columns = tuple(columns)


def collate_clips(batch: list) -> tuple | list:
    """A ClipBatch's columns as they are (no copy); anything else as `default_collate` would make it."""
    return list(batch.columns) if isinstance(batch, ClipBatch) else default_collate(batch)
