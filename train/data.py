"""Feeding the training processes from the store: one feed per split, each process reading its own share."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler, RandomSampler, WeightedRandomSampler

from cache.bucket import store_location
from cache.dataset import ClipDataset, Phases, StoreUnion
from cache.exits import BadInput
from cache.schema import FAKE, REAL
from cache.shard_cache import ShardCacheConfig
from cache.store import clip_settings

BALANCE = ("none", "weights", "sampler")
READER_THREADS = "clip-reader"


class UsageError(BadInput):
    """Bad input to the trainer: one line for the user, exit status 2."""


def split_dataset(
    caches: Sequence[Path],
    split: str,
    need_both_classes: bool,
    clip_frames: int | None = None,
    shard_cache: ShardCacheConfig | None = None,
) -> ClipDataset | StoreUnion:
    """The ok clips of a split of one store, or of several as one (those in a bucket read through `shard_cache`);
    refuses a split that cannot be trained or judged on."""
    parts = [ClipDataset(cache, split, True, clip_frames, shard_cache) for cache in caches]
    dataset = parts[0] if len(parts) == 1 else StoreUnion(parts)
    if need_both_classes:
        check_classes(" + ".join(map(str, caches)), split, dataset.labels)
    return dataset


def check_same_clips(caches: Sequence[Path]) -> None:
    """Stores trained on together, or scored by one model, must hold clips made alike."""
    first = clip_settings(caches[0])
    for cache in caches[1:]:
        difference = first.difference(clip_settings(cache))
        if difference is not None:
            raise UsageError(f"{cache} and {caches[0]} hold clips of other preprocessing: {difference}")


def store_names(caches: Sequence[Path]) -> dict[str, Path]:
    """What reports call each store: its name without the suffix (`ffpp` for ffpp.zarr), or its whole path
    where two stores share a name."""
    stems = [Path(cache).stem for cache in caches]
    if len(set(stems)) == len(stems):
        return dict(zip(stems, map(store_location, caches), strict=True))
    return {str(cache): store_location(cache) for cache in caches}


def check_classes(cache: str | Path, split: str, labels: np.ndarray) -> None:
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


def train_sampler(dataset: FeedSource, balance: str, seed: int, epoch: int) -> list[int]:
    """One item per video for one epoch, in a shuffled (or, with `sampler`, class-balanced) order that is the
    same in every process: the clip of a phase drawn at random, so each epoch sees other frames of a video
    whose store holds more frames than a clip takes.

    Seeding by epoch lets a resumed run see the same order as an uninterrupted one.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    k = dataset.phases.count
    labels = dataset.labels[::k]
    if balance == "sampler":
        per_video = class_weights(labels)[torch.from_numpy(labels)]
        videos = WeightedRandomSampler(per_video.double(), len(labels), replacement=True, generator=generator)
    else:
        videos = RandomSampler(range(len(labels)), generator=generator)
    order = torch.tensor(list(videos), dtype=torch.int64)
    phases = torch.randint(k, (len(labels),), generator=generator)
    return (order * k + phases[order]).tolist()


@dataclass(frozen=True)
class Sharding:
    """This process's share of a split's batches, as Accelerate deals them: batch i goes to process i mod count.

    `even` pads the end from the first clips, so that every process gets as many full batches (evaluation:
    gathered results are cut back to the split's length); without it the last process may get one batch less
    and a last batch shorter (training, with DDP's join), so every clip is seen once per epoch.
    """

    index: int = 0
    count: int = 1
    even: bool = False

    @classmethod
    def of(cls, accelerator: Accelerator, even: bool) -> Sharding:
        return cls(accelerator.process_index, accelerator.num_processes, even)


class FeedSource(Protocol):
    """What a feed reads: clips from a store (`ClipDataset`) or features in memory (`FeatureDataset`)."""

    rows: np.ndarray  # store row of each index
    labels: np.ndarray  # int64 label of each index
    phases: Phases  # items per video: index i is the clip of phase i mod k of video i // k
    sample_shape: tuple[int, ...]
    sample_dtype: torch.dtype

    def __len__(self) -> int: ...

    def read_into(self, indices: np.ndarray, out: torch.Tensor) -> None: ...


class BatchFeed:
    """This process's batches of a split, `(inputs, labels, rows)` in the sampler's order: inputs and labels
    on `device`, the store rows on the host.

    The training process reads them itself, with `threads` threads (`os.preadv` lets go of the GIL) that
    keep `threads` batches ahead of the step, straight into a ring of `threads + 1` (at least 2) buffers
    kept from one pass to the next (pinned where the device is a GPU). Worker processes would pickle every
    2.4 MB clip across a pipe, and fresh buffers would fault their pages in on every batch: each costs as
    much as the read itself. A buffer is refilled only after the consumer has asked for the batch after the
    one it held (on a CPU the model uses the buffer itself) and after its copy to the GPU is done. Labels and
    rows, which callers keep for a whole pass (evaluation gathers them), are new tensors for every batch.
    `threads=0` reads in the training thread between steps, which suits features already in memory.
    `sampler` (store order when None) may be replaced between passes: each pass draws its order from it
    once, as a DataLoader does.
    """

    def __init__(
        self,
        dataset: FeedSource,
        batch_size: int,
        sampler: Iterable[int] | None = None,
        *,
        sharding: Sharding = Sharding(),
        device: torch.device | None = None,
        threads: int = 0,
    ):
        self.dataset = dataset
        self.batch_size = batch_size
        self.sampler = sampler
        self.sharding = sharding
        self.device = device or torch.device("cpu")
        self.threads = threads
        self._ring: list[torch.Tensor] = []
        self._busy = False

    def batches(self) -> BatchSampler:
        """The batches of a pass of all processes, before they are dealt."""
        order = self.sampler if self.sampler is not None else range(len(self.dataset))
        return BatchSampler(order, self.batch_size, drop_last=False)

    def plan(self) -> BatchSampler:
        """The dataset indices of each batch this process reads, in order; a pass draws them once."""
        batches = self.batches()
        if self.sharding.count == 1:
            return batches
        index, count, even = self.sharding.index, self.sharding.count, self.sharding.even
        return BatchSamplerShard(batches, count, index, split_batches=False, even_batches=even)

    def __len__(self) -> int:
        return len(self.plan())

    def most_batches(self) -> int:
        """The batches of a pass of the process dealt the most (the first): where the pass ends for all together."""
        return math.ceil(len(self.batches()) / self.sharding.count)

    def _buffers(self) -> list[torch.Tensor]:
        if not self._ring:
            pin = self.device.type == "cuda"
            shape, dtype = (self.batch_size, *self.dataset.sample_shape), self.dataset.sample_dtype
            self._ring = [torch.empty(shape, dtype=dtype, pin_memory=pin) for _ in range(max(self.threads, 1) + 1)]
        return self._ring

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        if self._busy:
            raise RuntimeError("a BatchFeed's buffers serve one pass at a time")
        self._busy = True
        try:
            yield from self._pass()
        finally:
            self._busy = False

    def _pass(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        plan = [np.asarray(batch, dtype=np.int64) for batch in self.plan()]
        ring = self._buffers()
        copied: list[torch.cuda.Event | None] = [None] * len(ring)

        def fill(k: int) -> tuple[torch.Tensor, torch.Tensor]:
            slot, indices = k % len(ring), plan[k]
            if copied[slot] is not None:
                copied[slot].synchronize()  # the GPU has taken what this buffer held before
            inputs = ring[slot][: len(indices)]
            self.dataset.read_into(indices, inputs)
            return inputs, torch.from_numpy(self.dataset.labels[indices])  # a copy: fancy indexing

        pool = ThreadPoolExecutor(self.threads, thread_name_prefix=READER_THREADS) if self.threads else None
        ahead: deque[Future] = (
            deque(pool.submit(fill, k) for k in range(min(self.threads, len(plan)))) if pool else deque()
        )
        try:
            for k, indices in enumerate(plan):
                if pool is not None and k + self.threads < len(plan):
                    # Its slot is the one of the batch before k, which the consumer gave back by asking for k.
                    ahead.append(pool.submit(fill, k + self.threads))
                inputs, labels = ahead.popleft().result() if pool is not None else fill(k)
                if self.device.type != "cpu":
                    inputs, labels = (t.to(self.device, non_blocking=True) for t in (inputs, labels))
                    if self.device.type == "cuda":
                        copied[k % len(ring)] = torch.cuda.Event()
                        copied[k % len(ring)].record()
                yield inputs, labels, torch.from_numpy(self.dataset.rows[indices])
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def shard_feed(
    dataset: FeedSource, batch_size: int, accelerator: Accelerator, even: bool, threads: int = 0
) -> BatchFeed:
    """This process's feed of `dataset` onto its device: `even` for evaluation, uneven for training."""
    sharding = Sharding.of(accelerator, even)
    return BatchFeed(dataset, batch_size, sharding=sharding, device=accelerator.device, threads=threads)


class TimedBatches:
    """Iterates a feed, adding up the time spent waiting for each batch: the data stall of a loop."""

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
