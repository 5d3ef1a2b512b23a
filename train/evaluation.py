"""Scoring a finished run on stores it never saw: the field's cross-dataset table.

Each model's chosen weights score every video of a store's split (the mean of its k clips, as in training)
at the threshold the run chose on its own validation split; nothing is chosen on these stores. A store made
with other preprocessing than the run's (frames, size, resize mode, face margin) is refused: its clips are
not what the model learned from.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator

from cache.dataset import ClipDataset, StoreUnion
from cache.shard_cache import ShardCacheConfig
from cache.store import clip_settings
from train.data import BatchFeed, UsageError, shard_feed, split_dataset
from train.inference import TrainedModel
from train.loop import Evaluation, run_evaluation
from train.models import MODEL_NAMES, folder_name
from train.run_config import CONFIG_FILE


def model_folders(run: Path) -> list[Path]:
    """RUN_DIR/MODEL itself, or every trained model of RUN_DIR: the registry's in its order, then timm's by name. A
    trained model's folder has its config.json (metrics.json, before config.json was written)."""
    if trained(run):
        return [run]
    order = {folder_name(name): i for i, name in enumerate(MODEL_NAMES)}
    found = [folder for folder in run.iterdir() if trained(folder)] if run.is_dir() else []
    if not found:
        raise UsageError(f"--run {run}: no trained model (no {CONFIG_FILE} in it or in its model folders)")
    return sorted(found, key=lambda folder: (order.get(folder.name, len(order)), folder.name))


def trained(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() or (folder / "metrics.json").is_file()


def check_store(trained: TrainedModel, cache: Path) -> None:
    difference = trained.clip.difference(clip_settings(cache))
    if difference is not None:
        raise UsageError(f"{cache}: its clips were made otherwise than {trained.name}'s training clips: {difference}")


def score_store(
    trained: TrainedModel,
    cache: Path,
    split: str,
    accelerator: Accelerator,
    batch_size: int,
    workers: int,
    shard_cache: ShardCacheConfig | None = None,
) -> dict | None:
    """Video-level metrics of `trained` on the labelled ok videos of a store's split (`all`: every split), at the
    run's threshold; None where none is labelled."""
    dataset = split_clips(trained, cache, split, shard_cache)
    if not len(dataset) or (dataset.labels < 0).all():
        return None
    return feed_metrics(trained, shard_feed(dataset, batch_size, accelerator, even=True, threads=workers), accelerator)


def split_clips(
    trained: TrainedModel, cache: Path, split: str, shard_cache: ShardCacheConfig | None = None
) -> ClipDataset | StoreUnion:
    """The ok videos of a store's split (`all`: every split), cut into the clips `trained` was fed."""
    return split_dataset([cache], None if split == "all" else split, False, trained.clip_frames, shard_cache)


def score_feed(trained: TrainedModel, feed: BatchFeed, accelerator: Accelerator) -> Evaluation:
    """Every clip of a feed scored by `trained` as its evaluation scores it: the tables' and the review page's."""
    return run_evaluation(trained.model, feed, None, trained.transform, accelerator)


def feed_metrics(trained: TrainedModel, feed: BatchFeed, accelerator: Accelerator) -> dict:
    """Video-level metrics (and the frame-level AUC) of `trained` on the labelled videos of a feed's clips, at the
    run's threshold: the one scoring of the cross-dataset and robustness tables."""
    scored = score_feed(trained, feed, accelerator).labelled()
    return {key: value for key, value in scored.metrics(trained.threshold).items() if key != "loss"}


def load_models(run: Path, device: torch.device) -> list[TrainedModel]:
    return [TrainedModel.load(folder, device) for folder in model_folders(run)]


def evaluate_models(
    models: Sequence[TrainedModel],
    stores: dict[str, Path],
    split: str,
    accelerator: Accelerator,
    batch_size: int = 8,
    workers: int = 2,
    shard_cache: ShardCacheConfig | None = None,
) -> dict[str, dict[str, dict | None]]:
    """model -> store name -> video-level metrics, for every model on every store (`store_names` names them);
    stores are checked against every model before any is scored, so a refusal costs no time."""
    for model in models:
        for cache in stores.values():
            check_store(model, cache)
    return {
        model.name: {
            name: score_store(model, cache, split, accelerator, batch_size, workers, shard_cache)
            for name, cache in stores.items()
        }
        for model in models
    }


def threshold_note(models: Sequence[TrainedModel], what: str) -> str:
    thresholds = ", ".join(f"{model.name} {model.threshold:.4f}" for model in models)
    return (
        f"Video-level metrics (each video's score is the mean fake probability of its clips) on {what}, at the "
        f"threshold each model chose on its run's validation split ({thresholds}); nothing was chosen on them."
    )
