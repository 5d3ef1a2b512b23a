"""A run's models scored on stores whose clips are distorted as DeeperForensics-1.0 distorts videos.

Each video's stored frames are distorted together (`train.perturb`, on the model's device), then cut into the
model's phase clips and scored by the same evaluation as the cross-dataset table (`train.evaluation.feed_metrics`),
clean first: so a clean row is that table's figure, and each distorted row differs from it by the distortion
alone. The distortions apply to the stored crops, not to the source video before cropping.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from matplotlib.figure import Figure
from tqdm import tqdm

from cache.dataset import Phases
from cache.shard_cache import ShardCacheConfig
from train.data import BatchFeed, shard_feed, split_dataset
from train.evaluation import check_store, feed_metrics
from train.inference import TrainedModel
from train.perturb import DISTORTIONS, LEVELS, clip_generator
from train.reporting import DPI, cell, number

CLEAN = "clean"
METRICS = ("roc_auc", "average_precision", "eer", "balanced_accuracy", "accuracy")
COLUMNS = ("model", "perturbation", "level", "roc_auc", "clean_roc_auc", *METRICS[1:], "videos", "store", "code")


@dataclass(frozen=True)
class Variant:
    """The clean clips (level 0) or one distortion at one level."""

    perturbation: str = CLEAN
    level: int = 0

    @property
    def clean(self) -> bool:
        return self.perturbation == CLEAN

    def distort(self, video: torch.Tensor, row: int, seed: int) -> torch.Tensor:
        """A video's stored frames (T, H, W, 3) distorted with a generator of their own, on their device."""
        generator = clip_generator(seed, self.perturbation, self.level, row, video.device)
        return DISTORTIONS[self.perturbation](video, self.level, generator)


@dataclass(frozen=True)
class PerturbSettings:
    """What `--perturb` asks for: the distortions by name, each at every level, and the seed of their draws."""

    names: tuple[str, ...]
    seed: int = 0

    def variants(self) -> list[Variant]:
        return [Variant(), *(Variant(name, level) for name in self.names for level in LEVELS)]


@dataclass(frozen=True)
class ClipItems:
    """What a perturbed feed's clips count: run_evaluation cuts the gathered clips back to this length."""

    count: int

    def __len__(self) -> int:
        return self.count


class PerturbedFeed:
    """The whole stored videos of `feed`, each distorted, then cut into the model's phase clips: batches as a
    phased dataset's feed gives them (video i's clips p = 0..k-1 in turn), so `run_evaluation` scores them."""

    def __init__(self, feed: BatchFeed, phases: Phases, variant: Variant, seed: int):
        self.feed, self.phases, self.variant, self.seed = feed, phases, variant, seed
        self.dataset = ClipItems(len(feed.dataset) * phases.count)

    def __len__(self) -> int:
        return len(self.feed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        k = self.phases.count
        for videos, labels, rows in self.feed:
            frames = torch.from_numpy(self.phases.frames(np.arange(k))).to(videos.device)
            if not self.variant.clean:
                videos = torch.stack(
                    [self.variant.distort(v, int(r), self.seed) for v, r in zip(videos, rows, strict=True)]
                )
            clips = videos[:, frames].flatten(0, 1)
            yield clips, labels.repeat_interleave(k), rows.repeat_interleave(k)


def row(model: str, store: str, variant: Variant, metrics: dict | None, clean: dict | None) -> dict:
    """One line of the table; metrics None where the store's split has no labelled video."""
    metrics, clean = metrics or {}, clean or {}
    return {
        "model": model,
        "perturbation": variant.perturbation,
        "level": variant.level,
        **{name: metrics.get(name) for name in METRICS},
        "clean_roc_auc": clean.get("roc_auc"),
        "videos": metrics.get("n"),
        "store": store,
        "code": "" if variant.clean else DISTORTIONS[variant.perturbation].code,
    }


def score_robustness(
    models: Sequence[TrainedModel],
    stores: dict[str, Path],
    split: str,
    settings: PerturbSettings,
    accelerator: Accelerator,
    batch_size: int = 8,
    workers: int = 2,
    shard_cache: ShardCacheConfig | None = None,
) -> list[dict]:
    """A row per store, model and variant (clean first): every model reads each store's split once per variant.

    A forward pass takes about `batch_size` clips: batch_size // k videos of k phase clips each. A store of other
    clips than a model's is refused before any is scored."""
    for trained in models:
        for cache in stores.values():
            check_store(trained, cache)
    rows = []
    for store, cache in stores.items():
        dataset = split_dataset([cache], None if split == "all" else split, False, None, shard_cache)
        labelled = len(dataset) > 0 and bool((dataset.labels >= 0).any())
        for trained in models:
            phases = Phases.of(dataset.phases.stored, trained.clip_frames)
            feed = shard_feed(dataset, max(1, batch_size // phases.count), accelerator, even=True, threads=workers)
            variants = tqdm(
                settings.variants(), desc=f"{trained.name} on {store}", disable=not accelerator.is_main_process
            )
            clean = None
            for variant in variants:
                perturbed = PerturbedFeed(feed, phases, variant, settings.seed)
                metrics = feed_metrics(trained, perturbed, accelerator) if labelled else None
                clean = metrics if variant.clean else clean
                rows.append(row(trained.name, store, variant, metrics, clean))
    return rows


def robustness_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["videos"] = frame["videos"].astype("Int64")
    return frame


def auc_table(frame: pd.DataFrame) -> str:
    """Markdown: a line per model and distortion, its AUC clean and at each level."""
    lines = ["| model | perturbation | clean | " + " | ".join(map(str, LEVELS)) + " |", "|:---|:---|" + "---:|" * 6]
    for model, by_model in frame.groupby("model", sort=False):
        clean = by_model.loc[by_model["perturbation"] == CLEAN, "roc_auc"].iloc[0]
        for name, rows in by_model[by_model["perturbation"] != CLEAN].groupby("perturbation", sort=False):
            cells = [cell(clean), *(cell(value) for value in rows.sort_values("level")["roc_auc"])]
            lines.append(f"| {model} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def levels_table(names: Sequence[str]) -> str:
    """Markdown: each distortion's DeeperForensics code and parameter at each level."""
    lines = ["| perturbation | DeeperForensics | parameter | " + " | ".join(map(str, LEVELS)) + " |"]
    lines.append("|:---|:---|:---|" + "---:|" * len(LEVELS))
    for name in names:
        d = DISTORTIONS[name]
        lines.append(f"| {name} | {d.code} | {d.meaning} | " + " | ".join(f"{p:g}" for p in d.parameters) + " |")
    return "\n".join(lines)


def format_robustness(frame: pd.DataFrame, names: Sequence[str]) -> str:
    """Per store, the AUC table; then the levels."""
    parts = [f"### {store}\n\n{auc_table(rows)}" for store, rows in frame.groupby("store", sort=False)]
    return "\n\n".join([*parts, f"Levels:\n\n{levels_table(names)}"])


def plot_robustness(path: Path, frame: pd.DataFrame, names: Sequence[str]) -> Path:
    """A panel per distortion: each model's AUC (on each store) against the level, clean at level 0."""
    columns = min(4, len(names))
    grid = (len(names) + columns - 1) // columns
    fig = Figure(figsize=(3.6 * columns, 3.2 * grid + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(grid, columns, squeeze=False).ravel())
    several = frame["store"].nunique() > 1
    for ax, name in zip(axes, names, strict=False):
        for (model, store), rows in frame.groupby(["model", "store"], sort=False):
            line = rows[rows["perturbation"].isin([CLEAN, name])].sort_values("level")
            auc = [number(value) for value in line["roc_auc"]]
            ax.plot(line["level"], auc, marker="o", label=f"{model} on {store}" if several else model)
        ax.axhline(0.5, color="black", linestyle="--", linewidth=0.8)
        ax.set_xticks([0, *LEVELS], [CLEAN, *map(str, LEVELS)])
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{name} ({DISTORTIONS[name].code})")
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    axes[0].set_ylabel("video-level ROC AUC")
    axes[0].legend(fontsize="small")
    fig.suptitle("robustness to DeeperForensics-1.0's distortions (chance dashed)")
    fig.savefig(path, dpi=DPI)
    return path


def write_robustness(out_dir: Path, rows: list[dict], settings: PerturbSettings, note: str) -> list[Path]:
    """robustness.{md,csv,json,png} in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = robustness_frame(rows)
    paths = [out_dir / f"robustness.{suffix}" for suffix in ("md", "csv", "json")]
    paths[0].write_text(f"{format_robustness(frame, settings.names)}\n\n{note}\n")
    frame.to_csv(paths[1], index=False)
    levels = {
        name: {"code": DISTORTIONS[name].code, "parameters": DISTORTIONS[name].parameters} for name in settings.names
    }
    paths[2].write_text(json.dumps({"note": note, "seed": settings.seed, "levels": levels, "rows": rows}, indent=2))
    return [*paths, plot_robustness(out_dir / "robustness.png", frame, settings.names)]


def robustness_note(settings: PerturbSettings) -> str:
    return (
        "DeeperForensics-1.0's distortions (perturbation/add_distortion_to_video.py) at its five levels, applied to "
        "the stored clips, that is to the crops or frames as stored, not to the source video before cropping; each "
        f"video's draws come from a generator of its own (seed {settings.seed}). Level 0 is the clean clips."
    )
