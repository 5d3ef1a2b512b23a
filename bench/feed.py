"""The `feed` stage: an epoch of the train split through the trainer's feed, beside the seed's Dataset that
decodes every clip it serves and the store's random read rate."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

from bench.baselines import SeedVideoDataset
from bench.context import BenchConfig, Context
from bench.timing import Rate, Row
from cache import open_store
from cache.dataset import ClipDataset
from train.data import BatchFeed
from train.loop import TrainConfig

FEED_BATCH = 32  # the trainer's feed is timed at a GPU's batch, not the seed's 4
TRAINER_THREADS = TrainConfig.workers  # the trainer's default reader threads


def feed_rate(feed: BatchFeed, repeat: int) -> Rate:
    """Clips/s of passes through a feed: its buffers are made by the warm-up pass and reused, as by epochs."""
    return Rate.measure(lambda: sum(len(labels) for _, labels, _ in feed), repeat, "clips/s")


def feed(config: BenchConfig, context: Context) -> list[Row]:
    dataset = ClipDataset(config.cache, "train")
    shuffled = RandomSampler(dataset, generator=torch.Generator().manual_seed(0))
    ours = feed_rate(BatchFeed(dataset, FEED_BATCH, shuffled, threads=TRAINER_THREADS), config.repeat)
    with open_store(config.cache) as store:
        size = store.spec.size
        root = Path(store.spec.data_root)
        paths = [str(root / store.path[r]) for r in dataset.rows]
    # The seed decodes every clip it serves: an epoch of the videos themselves gives its per-clip rate.
    unique = sorted(set(paths))
    seed_set = SeedVideoDataset(unique, [0] * len(unique), config.frames, config.size)
    seed_loader = DataLoader(seed_set, batch_size=4, shuffle=True, num_workers=config.workers, persistent_workers=True)
    seed = Rate.measure(lambda: sum(len(labels) for _, labels in seed_loader), max(1, config.repeat // 2), "clips/s")
    return [
        Row(
            "feed an epoch",
            f"train split, trainer's feed, {TRAINER_THREADS} reader threads, batch {FEED_BATCH} at {size}px",
            ours,
            seed,
            "seed: OpenCV decode in __getitem__",
            context.rates.get(f"read/{config.cache.suffix.lstrip('.')}"),
            "store random read, 1 process",
        )
    ]
