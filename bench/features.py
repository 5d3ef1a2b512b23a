"""The `features` stage: computing the feature cache once, and a head-only training step beside the whole
model's step of the train stage."""

from __future__ import annotations

import time

import torch

from bench.context import BenchConfig, Context
from bench.timing import Rate, Row
from bench.train import CPU_SMALL_SIZE, train_rates, train_setting
from cache.dataset import FeatureDataset
from train.data import BatchFeed
from train.feature_cache import FeatureConfig, compute_features, model_for_features
from train.loop import as_float
from train.models import REGISTRY, SEED_MODELS, ModelConfig


def features(config: BenchConfig, context: Context) -> list[Row]:
    """The feature cache: computing it once, then a training step of the head alone beside the full model's."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trained = train_setting(config, device)
    # A CPU computes 512 clips' features at 224 px in about 20 minutes: it computes them at the size of a small
    # model of the train stage, and says so.
    cpu_sized = device.type == "cpu" and not config.quick
    size = CPU_SMALL_SIZE if cpu_sized or config.quick else config.size
    steps = 20 if config.quick else 100
    rows = []
    for name, backbone in seed_backbones().items():
        started = time.perf_counter()
        spec = compute_features(FeatureConfig(config.cache, backbone, frame_size=size), log=lambda _: None)
        dataset = FeatureDataset(config.cache, spec.name, "train")
        rows.append(
            Row(
                "feature cache",
                f"{backbone}, compute once, {len(dataset)} clips at {size}px, {device.type}",
                Rate.of_seconds((time.perf_counter() - started) / len(dataset), "clips/s"),
                note="one run, not repeated: the second finds every clip done"
                + (f"; cpu-sized: at {size}px, not {config.size}px" if cpu_sized else ""),
            )
        )
        head = model_for_features(spec, ModelConfig(name)).head.to(device)
        optimizer = torch.optim.Adam(head.parameters(), lr=1e-4)
        # Features in memory are read in the training thread, as the trainer reads them.
        fed, waited, _ = train_rates(
            head, optimizer, BatchFeed(dataset, 4, device=device), as_float, "fp32", steps, config.repeat
        )
        rows.append(
            Row(
                "train step from features",
                f"{name}'s head, fp32, batch 4 x {config.frames} frames, {device.type}",
                fed,
                context.rates.get(f"train/{name}/fp32"),
                f"the whole {name}'s step on clips at {trained.sizes[name]}px (train stage)",
                note=f"data stall: {100 * waited:.1f}% of the step waiting for data",
            )
        )
    return rows


def seed_backbones() -> dict[str, str]:
    """The seed models standing on a timm backbone, and that backbone: what the stage computes features of."""
    return {name: REGISTRY[name].backbone for name in SEED_MODELS if REGISTRY[name].backbone is not None}
