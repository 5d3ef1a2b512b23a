"""Feeding the training processes from the store: one loader per split, each process reading its own part."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader, RandomSampler, Sampler, SequentialSampler, WeightedRandomSampler

from cache import ClipDataset, collate_clips
from cache.schema import FAKE, REAL

BALANCE = ("none", "weights", "sampler")


class UsageError(Exception):
    """Bad input to the trainer: one line for the user, exit status 2."""


def split_dataset(cache: Path, split: str, need_both_classes: bool) -> ClipDataset:
    """The ok clips of a split, with their row numbers; refuses a split that cannot be trained or judged on."""
    dataset = ClipDataset(cache, split, with_rows=True)
    if need_both_classes:
        check_classes(cache, split, dataset.labels)
    return dataset


def check_classes(cache: Path, split: str, labels: np.ndarray) -> None:
    """A split trained or judged on needs clips of both classes."""
    if len(labels) == 0:
        raise UsageError(f"{cache}: the {split} split holds no ok clips")
    present = set(np.unique(labels).tolist())
    if not {REAL, FAKE} <= present:
        raise UsageError(f"{cache}: the {split} split holds one class only ({sorted(present)}); both are needed")


def class_weights(labels: np.ndarray) -> torch.Tensor:
    """n / (2 n_c): each class weighs as much in the loss as the other, however rare."""
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    return torch.tensor(len(labels) / (2 * np.maximum(counts, 1)), dtype=torch.float32)


def train_sampler(dataset: ClipDataset, balance: str, seed: int, epoch: int) -> Sampler:
    """Shuffled (or class-balanced with `sampler`) order for one epoch, the same in every process.

    Seeding by epoch lets a resumed run see the same order as an uninterrupted one.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    if balance == "sampler":
        per_clip = class_weights(dataset.labels)[torch.from_numpy(dataset.labels)]
        return WeightedRandomSampler(per_clip.double(), len(dataset), replacement=True, generator=generator)
    return RandomSampler(dataset, generator=generator)


def make_loader(
    dataset: ClipDataset, batch_size: int, workers: int, sampler: Sampler | None = None, keep_workers: bool = False
) -> DataLoader:
    """Whole batches read in one store call and passed on uncopied, pinned for asynchronous copies to a GPU.

    `keep_workers` keeps worker processes across passes, for a loader iterated many times.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler or SequentialSampler(dataset),
        num_workers=workers,
        collate_fn=collate_clips,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=keep_workers and workers > 0,
    )


def shard_loader(loader: DataLoader, accelerator: Accelerator, even_batches: bool) -> DataLoader:
    """This process's share of `loader`'s batches, moved to its device.

    Training shards without padding (`even_batches=False`, with DDP's join for the uneven end), so every
    clip is seen once per epoch; evaluation pads and lets `gather_for_metrics` drop the padding.
    """
    return prepare_data_loader(
        loader,
        device=accelerator.device,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
        put_on_device=True,
        even_batches=even_batches,
        non_blocking=loader.pin_memory,
    )


class TimedBatches:
    """Iterates a loader, adding up the time spent waiting for each batch: the data stall of a loop."""

    def __init__(self, loader):
        self.loader = loader
        self.waited = 0.0

    def __iter__(self) -> Iterator:
        batches = iter(self.loader)
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            self.waited += time.perf_counter() - asked
            if batch is None:
                return
            yield batch
