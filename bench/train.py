"""The `train` stage: a training step of each of the seed's models fed by the trainer's feed, beside the same step on a
batch already on the device, with the share of the step spent waiting for data; then one step of every registered
model, to show what each costs. Every step is the trainer's own (`train.loop.train_step`)."""

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
from train.loop import Step, train_step
from train.models import MODEL_NAMES, SEED_MODELS, ModelConfig, build_model

# On a CPU the full setting (every model at 224 px in fp32 and bf16, 288 clips of steps each: 1,728 clips) would
# take the whole bench past 15 minutes on 2 cores by itself: resnet18 stepped 0.31-0.33 clips/s at 224 px there
# (RESULTS.md, 2026-11-29T22:57 and 23:18, shared cores). There one model is timed at full size, once, the
# others at 64 px.
CPU_FULL_SIZE_MODEL = "resnet18"
CPU_SMALL_SIZE = 64
# One step of every registered model: CLIP ViT-B/16 and EfficientNet-B4 at 224 px in fp32 would take minutes on 2
# cores, so a CPU steps each at this size, on this many clips of this many frames.
CPU_REGISTRY = (32, 2, 2)  # frame size, clips, frames per clip


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
        return TrainSetting(dict.fromkeys(SEED_MODELS, 64), 2, ("fp32",), config.repeat)
    if device.type == "cuda":
        return TrainSetting(dict.fromkeys(SEED_MODELS, config.size), 50, ("bf16",), config.repeat)
    sizes = {name: config.size if name == CPU_FULL_SIZE_MODEL else CPU_SMALL_SIZE for name in SEED_MODELS}
    note = f"cpu-sized: {CPU_FULL_SIZE_MODEL} at {config.size}px, others at {CPU_SMALL_SIZE}px, fp32, 3 steps, 1 repeat"
    return TrainSetting(sizes, 3, ("fp32",), 1, note)


def train(config: BenchConfig, context: Context) -> list[Row]:
    """clips/s of a training step fed by the trainer's feed, beside the same step on a batch already there."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    setting = train_setting(config, device)
    dataset = ClipDataset(config.cache, "train")
    rows = []
    for name in SEED_MODELS:
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
                ClipTransform(train=True, seed=0, size=size, mean=model.input.mean, std=model.input.std),
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
    return rows + registry_steps(config, dataset, device)


@dataclass(frozen=True)
class RegistrySetting:
    """How the stage steps every registered model: frame size, clips per batch, frames per clip, precision, and the
    words its rows say where that is less than the full setting."""

    size: int
    clips: int
    frames: int
    precision: str
    note: str = ""


def registry_setting(config: BenchConfig, device: torch.device) -> RegistrySetting:
    """On a GPU, batch 4 at full size in bf16 (as written; not yet run on one); on a CPU, the CPU_REGISTRY size."""
    if device.type == "cuda":
        return RegistrySetting(config.size, 4, config.frames, "bf16")
    size, clips, frames = CPU_REGISTRY
    note = (
        f"cpu-sized: {size}px, fp32, batch {clips} x {frames} frames, one step after one warm-up step; "
        f"a GPU steps {config.size}px in bf16 (written, not yet run on one)"
    )
    return RegistrySetting(size, clips, frames, "fp32", note)


def registry_steps(config: BenchConfig, dataset: ClipDataset, device: torch.device) -> list[Row]:
    """clips/s of one training step of every registered model, random weights, on the store's first clips."""
    setting = registry_setting(config, device)
    clips, labels, _ = next(iter(BatchFeed(dataset, setting.clips, device=device)))
    clips = clips[:, : setting.frames]
    rows = []
    for name in MODEL_NAMES:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = build_model(ModelConfig(name, frame_size=setting.size)).to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        transform = ClipTransform(train=True, seed=0, size=setting.size, mean=model.input.mean, std=model.input.std)
        step = trainer_step(model, optimizer, transform, setting.precision)

        def one(step=step) -> float:
            step(clips, labels)
            _sync(device)
            return len(labels)

        rows.append(
            Row(
                "train step, every model",
                f"{name}, {setting.precision}, batch {setting.clips} x {setting.frames} frames at {setting.size}px, "
                f"{device.type}",
                Rate.measure(one, 1, "clips/s"),
                note=setting.note,
            )
        )
    return rows


def trainer_step(model, optimizer, transform, precision: str):
    """The trainer's step (`train.loop.train_step`) on one batch, the model's forward under autocast for bf16 (as
    Accelerate runs it) and plain autograd's backward."""
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    criterion = torch.nn.CrossEntropyLoss(reduction="none")

    def forward(frames: torch.Tensor) -> torch.Tensor:
        with autocast:
            return model(frames)

    def step(clips: torch.Tensor, labels: torch.Tensor) -> None:
        train_step(forward, clips, labels, transform, Step(optimizer, criterion), torch.Tensor.backward)

    return step


def train_rates(model, optimizer, feed: BatchFeed, transform, precision: str, steps: int, repeat: int):
    """The step fed by the trainer's feed (rate and data stall), and the same step on one batch kept on the device."""
    device = feed.device
    step = trainer_step(model, optimizer, transform, precision)

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
