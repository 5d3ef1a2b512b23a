"""The `train` stage: a training step of every model fed by the trainer's feed, beside the same step on a batch
already on the device, with the share of the step spent waiting for data."""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import torch
from torch.utils.data import RandomSampler

from bench.context import BenchConfig, Context
from bench.feed import TRAINER_THREADS
from bench.timing import Rate, Row
from cache import ClipDataset
from train.augment import ClipTransform
from train.data import BatchFeed, TimedBatches
from train.models import MODEL_NAMES, ModelConfig, build_model


def train(config: BenchConfig, context: Context) -> list[Row]:
    """clips/s of a training step fed by the trainer's feed, beside the same step on a batch already there."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    size = 64 if config.quick else config.size
    steps, precisions = _train_settings(config, device)
    dataset = ClipDataset(config.cache, "train")
    transform = ClipTransform(train=True, seed=0, size=size)
    rows = []
    for name in MODEL_NAMES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(ModelConfig(name)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        for precision in precisions:
            fed, waited, resident = train_rates(
                model,
                optimizer,
                BatchFeed(dataset, 4, device=device, threads=TRAINER_THREADS),
                transform,
                precision,
                steps,
                config,
            )
            context.rates[f"train/{name}/{precision}"] = fed
            rows.append(
                Row(
                    "train step",
                    f"{name}, {precision}, batch 4 x {config.frames} frames at {size}px, {device.type}",
                    fed,
                    limit=resident,
                    limit_name="the same step on a batch already on the device",
                    note=f"data stall: {100 * waited:.1f}% of the step waiting for data",
                )
            )
    return rows


def _train_settings(config: BenchConfig, device: torch.device) -> tuple[int, list[str]]:
    """Steps per timed epoch and precisions: on a GPU, 50 steps of bf16, enough for the data stall to show."""
    if config.quick:
        return 2, ["fp32"]
    return (50, ["bf16"]) if device.type == "cuda" else (6, ["fp32", "bf16"])


def train_rates(model, optimizer, feed: BatchFeed, transform, precision: str, steps: int, config: BenchConfig):
    """The step fed by the trainer's feed (rate and data stall), and the same step on one batch kept on the device."""
    device = feed.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    criterion = torch.nn.CrossEntropyLoss()

    def step(clips: torch.Tensor, labels: torch.Tensor) -> None:
        with autocast:
            loss = criterion(model(transform(clips)).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    generator = torch.Generator().manual_seed(0)
    feed.sampler = RandomSampler(feed.dataset, replacement=True, num_samples=4 * steps, generator=generator)
    waits: list[float] = []
    totals: list[float] = []

    def fed() -> float:
        started = time.perf_counter()
        batches = TimedBatches(feed)
        clips_seen = 0
        for clips, labels, _ in batches:
            step(clips, labels)
            clips_seen += len(labels)
        _sync(device)
        waits.append(batches.waited)
        totals.append(time.perf_counter() - started)
        return clips_seen

    model.train()
    fed_rate = Rate.measure(fed, config.repeat, "clips/s")
    clips, labels, _ = (t.clone() for t in next(iter(feed)))

    def resident() -> float:
        for _ in range(steps):
            step(clips, labels)
        _sync(device)
        return steps * len(labels)

    resident_rate = Rate.measure(resident, config.repeat, "clips/s")
    stalls = np.array(waits[1:]) / np.array(totals[1:])  # the first epoch is Rate.measure's warm-up
    return fed_rate, float(np.median(stalls)), resident_rate


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
