"""The `train` stage: a training step of every model fed by the trainer's feed, beside the same step on a batch
already on the device, with the share of the step spent waiting for data."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import RandomSampler

from bench.context import BenchConfig, Context
from bench.feed import TRAINER_THREADS
from bench.timing import Rate, Row
from cache.dataset import ClipDataset
from train.augment import ClipTransform
from train.data import BatchFeed, TimedBatches
from train.models import MODEL_NAMES, ModelConfig, build_model

# On a CPU the full setting (every model at 224 px in fp32 and bf16, 288 clips of steps each: 1,728 clips) would
# take the whole bench past 15 minutes on 2 cores by itself: resnet18 stepped 0.31-0.33 clips/s at 224 px there
# (RESULTS.md, 2026-11-29T22:57 and 23:18, shared cores). There one model is timed at full size, once, the
# others at 64 px.
CPU_FULL_SIZE_MODEL = "resnet18"
CPU_SMALL_SIZE = 64


@dataclass(frozen=True)
class TrainSetting:
    """What the train stage times: each model's frame size, steps per timed epoch, precisions and repeats, and the
    words its rows say where that is less than the full setting."""

    sizes: dict[str, int]
    steps: int
    precisions: tuple[str, ...]
    repeat: int
    note: str = ""


def train_setting(config: BenchConfig, device: torch.device) -> TrainSetting:
    """On a GPU, 50 steps of bf16 at full size, enough for the data stall to show; on a CPU, the CPU-sized one."""
    if config.quick:
        return TrainSetting(dict.fromkeys(MODEL_NAMES, 64), 2, ("fp32",), config.repeat)
    if device.type == "cuda":
        return TrainSetting(dict.fromkeys(MODEL_NAMES, config.size), 50, ("bf16",), config.repeat)
    sizes = {name: config.size if name == CPU_FULL_SIZE_MODEL else CPU_SMALL_SIZE for name in MODEL_NAMES}
    note = f"cpu-sized: {CPU_FULL_SIZE_MODEL} at {config.size}px, others at {CPU_SMALL_SIZE}px, fp32, 3 steps, 1 repeat"
    return TrainSetting(sizes, 3, ("fp32",), 1, note)


def train(config: BenchConfig, context: Context) -> list[Row]:
    """clips/s of a training step fed by the trainer's feed, beside the same step on a batch already there."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    setting = train_setting(config, device)
    dataset = ClipDataset(config.cache, "train")
    rows = []
    for name in MODEL_NAMES:
        size = setting.sizes[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(ModelConfig(name)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        for precision in setting.precisions:
            fed, waited, resident = train_rates(
                model,
                optimizer,
                BatchFeed(dataset, 4, device=device, threads=TRAINER_THREADS),
                ClipTransform(train=True, seed=0, size=size),
                precision,
                setting.steps,
                setting.repeat,
            )
            context.rates[f"train/{name}/{precision}"] = fed
            stall = f"data stall: {100 * waited:.1f}% of the step waiting for data"
            rows.append(
                Row(
                    "train step",
                    f"{name}, {precision}, batch 4 x {config.frames} frames at {size}px, {device.type}",
                    fed,
                    limit=resident,
                    limit_name="the same step on a batch already on the device",
                    note="; ".join(filter(None, [stall, setting.note])),
                )
            )
    return rows


def train_rates(model, optimizer, feed: BatchFeed, transform, precision: str, steps: int, repeat: int):
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
    fed_rate = Rate.measure(fed, repeat, "clips/s")
    clips, labels, _ = (t.clone() for t in next(iter(feed)))

    def resident() -> float:
        for _ in range(steps):
            step(clips, labels)
        _sync(device)
        return steps * len(labels)

    resident_rate = Rate.measure(resident, repeat, "clips/s")
    stalls = np.array(waits[1:]) / np.array(totals[1:])  # the first epoch is Rate.measure's warm-up
    return fed_rate, float(np.median(stalls)), resident_rate


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
