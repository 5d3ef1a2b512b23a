"""Training one model with Accelerate: the same code on a CPU, one GPU, several GPUs or several machines.

Clips reach the device as uint8 and become normalised (and, in training, augmented) floats there. The
best epoch is chosen on the validation split; the test split is evaluated once, at the end, with the
chosen weights, and never chooses anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.data_loader import DataLoaderStateMixin
from accelerate.utils import gather_object, set_seed
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm import tqdm

from cache.bucket import is_remote, store_location
from cache.shard_cache import ShardCacheConfig
from cache.store import clip_settings
from train.augment import ClipTransform
from train.checkpoint import checkpointing, load_last, load_weights, save_last, save_weights, write_json
from train.data import (
    BALANCE,
    BatchFeed,
    TimedBatches,
    UsageError,
    check_same_clips,
    class_weights,
    shard_feed,
    split_dataset,
    store_names,
    train_sampler,
)
from train.feature_cache import feature_split, find_entry, model_for_features
from train.metrics import SELECT_BY, better, choose_threshold, video_metrics, video_scores
from train.models import (
    ClipClassifier,
    ModelConfig,
    build_model,
    check_start,
    count_parameters,
    default_lr,
    family,
    folder_name,
)
from train.reporting import write_model_report
from train.run_config import RunConfig
from train.tracking import epoch_scalars, final_scalars, tracking

LR_FACTOR = 0.5  # the seed's ReduceLROnPlateau
LR_PATIENCE = 1
SPLITS = (("train", True), ("val", True), ("test", False))  # and whether the split needs both classes


@dataclass(frozen=True)
class TrainConfig:
    cache: tuple[Path, ...]  # one store, or several trained on as one (a single path is taken too)
    out: Path
    model: str  # a registered model, or timm/NAME
    epochs: int = 2
    batch_size: int = 4
    lr: float | None = None
    weight_decay: float = 1e-4
    dropout: float = 0.5
    lstm_hidden: int = 128
    temporal: str | None = None  # a timm/NAME model's head: mean (default), lstm or attention
    balance: str = "weights"
    select_by: str = "roc_auc"
    frame_size: int | None = None
    workers: int = 2
    seed: int = 42
    max_grad_norm: float | None = None  # clip the gradients' total norm to this before each optimiser step
    pretrained: bool = False
    weights: Path | None = None
    resume: bool = False
    from_features: str | None = None  # a feature entry of the store, or "auto": train the head alone on it
    clip_frames: int | None = None  # frames per clip: every k-th stored frame (default: all the store holds)
    shard_cache: ShardCacheConfig | None = None  # this node's cache of a bucket's shards (None: the environment's)

    def __post_init__(self) -> None:
        caches = (self.cache,) if isinstance(self.cache, (str, Path)) else self.cache
        object.__setattr__(self, "cache", tuple(store_location(cache) for cache in caches))

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else default_lr(self.model)

    @property
    def model_dir(self) -> Path:
        return self.out / folder_name(self.model)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(
            self.model,
            self.dropout,
            self.pretrained,
            self.weights,
            self.lstm_hidden,
            self.temporal,
            self.frame_size,
        )

    def check(self) -> None:
        family(self.model, self.temporal)
        if self.balance not in BALANCE:
            raise UsageError(f"--balance must be one of {', '.join(BALANCE)}")
        if self.select_by not in SELECT_BY:
            raise UsageError(f"--select-by must be one of {', '.join(SELECT_BY)}")
        if min(self.epochs, self.batch_size, self.lstm_hidden) < 1 or self.workers < 0:
            raise UsageError("--epochs, --batch-size and --lstm-hidden must be at least 1, --workers at least 0")
        if self.weights is not None and not Path(self.weights).is_file():
            raise UsageError(f"--weights {self.weights}: no such file")
        if self.from_features and (self.pretrained or self.weights is not None):
            raise UsageError("--from-features takes the backbone the features were computed with: drop --weights")
        if self.from_features and len(self.cache) > 1:
            raise UsageError("--from-features reads one store's features: give one --cache")
        if not self.cache:
            raise UsageError("--cache: give at least one store")
        if len({cache if is_remote(cache) else cache.resolve() for cache in self.cache}) < len(self.cache):
            raise UsageError("--cache: a store is given twice")
        if self.clip_frames is not None and self.clip_frames < 1:
            raise UsageError("--clip-frames must be at least 1")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise UsageError("--max-grad-norm must be above 0")
        check_start(self.model, self.pretrained, self.weights)  # last: it may ask the Hub

    def as_dict(self) -> dict:
        values = {**dataclasses.asdict(self), "cache": [str(cache) for cache in self.cache]}
        values.pop("shard_cache")  # where this node keeps shards, not how the model was trained
        return {name: str(value) if isinstance(value, Path) else value for name, value in values.items()}


@dataclass
class Progress:
    """The epochs done, their records and the best so far: registered for checkpointing, so that `last/` resumes
    after the last completed epoch."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None

    def state_dict(self) -> dict:
        """Plain data, as metrics.json holds it (numpy's floats become floats), so that it reads back with
        torch.load(weights_only=True)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def load_state_dict(self, state: dict) -> None:
        for each in dataclasses.fields(self):
            setattr(self, each.name, state[each.name])


@dataclass
class Evaluation:
    """Every clip's fake probability, that of each of its frames scored alone, label and store row (a video's k
    clips share its row), in row order."""

    labels: np.ndarray
    probs: np.ndarray
    frame_probs: np.ndarray  # (clips, frames per clip)
    rows: np.ndarray
    loss: float

    def videos(self) -> tuple[np.ndarray, np.ndarray]:
        """Each video's label and score: the mean probability of its clips."""
        return video_scores(self.rows, self.labels, self.probs)

    def metrics(self, threshold: float = 0.5) -> dict:
        """Video-level metrics at `threshold`, with the clip- and frame-level AUC and the loss beside them."""
        return {**video_metrics(self.rows, self.labels, self.probs, self.frame_probs, threshold), "loss": self.loss}

    def labelled(self) -> Evaluation:
        """The clips of labelled videos only: an unlabelled Testing folder's have nothing to be scored against."""
        keep = self.labels >= 0
        return replace(
            self,
            labels=self.labels[keep],
            probs=self.probs[keep],
            frame_probs=self.frame_probs[keep],
            rows=self.rows[keep],
        )


def fit(config: TrainConfig, accelerator: Accelerator, on_epoch: Callable[[int, dict], None] | None = None) -> dict:
    """Train `config.model`, write RUN_DIR/MODEL/{best.safetensors,config.json,last/,metrics.json}; return the
    metrics. config.json is what rebuilds the model from the folder alone (`train.run_config`).

    `on_epoch(epoch, val_metrics)` runs after each epoch's checkpoint, so an exception it raises (a search
    pruning a poor trial) stops training between epochs and leaves a `last/` that `resume` continues from.
    """
    config.check()
    model_dir = config.model_dir
    data = training_data(config)
    config = data.config
    if accelerator.is_main_process:
        model_dir.mkdir(parents=True, exist_ok=True)

    model = data.model
    parameters = count_parameters(model)
    channels_last = accelerator.device.type == "cuda" and data.transform is None
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # From features only the head learns; its backbone stays as it was when the features were computed.
    trained = model.head if config.from_features else model
    optimizer = torch.optim.Adam(trained.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=LR_FACTOR, patience=LR_PATIENCE)
    train_set, val_set = data.train, data.val
    weight = class_weights(train_set.labels) if config.balance == "weights" else None
    criterion = nn.CrossEntropyLoss(weight=weight, reduction="none").to(accelerator.device)

    trained, optimizer = accelerator.prepare(trained, optimizer)
    normalization = {"mean": model.input.mean, "std": model.input.std}  # the backbone's own
    evaluate_transform = data.transform or ClipTransform(
        train=False, size=config.frame_size, channels_last=channels_last, **normalization
    )
    val_feed = shard_feed(val_set, config.batch_size, accelerator, True, data.workers)
    train_feed = shard_feed(train_set, config.batch_size, accelerator, False, data.workers)
    progress = Progress()
    settings = {
        "clip_frames": data.clip_frames,
        "processes": accelerator.num_processes,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
    }
    logged = {**config.as_dict(), "lr": config.learning_rate, **settings}  # the learning rate it trains at
    with tracking(accelerator, config.model, config.out, logged), checkpointing(accelerator, progress, scheduler):
        if config.resume and load_last(model_dir / "last", accelerator):
            accelerator.print(f"{config.model}: resuming after epoch {progress.epoch}")
        for epoch in range(progress.epoch + 1, config.epochs + 1):
            # Seeded anew each epoch (and apart in each process), so that a resumed run draws as an uninterrupted one.
            set_seed(config.seed * 1_000_003 + epoch * 101, device_specific=True)
            augment = data.transform or ClipTransform(
                train=True,
                seed=config.seed + 7919 * epoch + accelerator.process_index,
                size=config.frame_size,
                channels_last=channels_last,
                **normalization,
            )
            train_feed.sampler = train_sampler(train_set, config.balance, config.seed, epoch)
            started = time.perf_counter()
            summary = train_epoch(
                trained,
                train_feed,
                Step(optimizer, criterion, config.max_grad_norm),
                augment,
                accelerator,
                f"{config.model} {epoch}",
            )
            val = run_evaluation(trained, val_feed, criterion, evaluate_transform, accelerator)
            scheduler.step(val.loss)
            val_metrics = val.metrics()
            record = {
                "epoch": epoch,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(time.perf_counter() - started, 3),
                **summary,
                "val_loss": val.loss,
                "val": val_metrics,
            }
            progress.history.append(record)
            progress.epoch = epoch
            score = val_metrics[config.select_by]
            improved = progress.best_epoch is None or better(config.select_by, score, progress.best_score)
            if improved:
                progress.best_epoch, progress.best_score = epoch, score
                if accelerator.is_main_process:
                    save_weights(model_dir / "best.safetensors", model.state_dict())
            save_last(model_dir / "last", accelerator)
            accelerator.log(epoch_scalars(record), step=epoch)
            accelerator.print(epoch_line(config.model, record, config.select_by))
            if on_epoch is not None:
                on_epoch(epoch, val_metrics)

        model.load_state_dict(load_weights(model_dir / "best.safetensors"))
        threshold, final = final_evaluation(
            trained, val_feed, data.tests, criterion, evaluate_transform, accelerator, config, data.workers
        )
        accelerator.log(final_scalars(final), step=progress.epoch)
    clip = clip_settings(config.cache[0])
    metrics = {
        "model": config.model,
        "parameters": parameters,
        "config": config.as_dict(),
        "clip": clip.as_dict(),
        **settings,
        "select_by": config.select_by,
        "best_epoch": progress.best_epoch,
        "threshold": threshold,
        "history": progress.history,
        "final": final,
    }
    if accelerator.is_main_process:
        write_json(model_dir / "metrics.json", metrics)
        rebuild = RunConfig(
            model=config.model,
            temporal=config.temporal,
            dropout=config.dropout,
            lstm_hidden=config.lstm_hidden,
            frame_size=config.frame_size or clip.size,
            mean=model.input.mean,
            std=model.input.std,
            clip=clip,
            clip_frames=data.clip_frames,
            threshold=threshold,
        )
        rebuild.write(model_dir)
    accelerator.wait_for_everyone()
    return metrics


def train_one(
    config: TrainConfig, accelerator: Accelerator, on_epoch: Callable[[int, dict], None] | None = None
) -> dict:
    """`fit` and the model's report; the accelerator lets go of the model afterwards, so the next one starts clean."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if not accelerator.is_main_process else "default")
            metrics = fit(config, accelerator, on_epoch)
    finally:
        accelerator.free_memory()
    if accelerator.is_main_process:
        write_model_report(config.model_dir, metrics)
    return metrics


@dataclass
class TrainingData:
    """What one run trains on: clips, or a feature entry's embeddings with the model whose backbone made them."""

    config: TrainConfig
    model: ClipClassifier
    train: Dataset
    val: Dataset
    tests: dict[str, Dataset]  # each store's test split, scored apart, by the store's name in reports
    transform: Callable[[torch.Tensor], torch.Tensor] | None  # None: clips, through a ClipTransform
    workers: int  # reader threads per process

    @property
    def clip_frames(self) -> int:
        return self.train.phases.clip_frames


def training_data(config: TrainConfig) -> TrainingData:
    set_seed(config.seed)  # the model's initial weights
    names = store_names(config.cache)
    if not config.from_features:
        check_same_clips(config.cache)
        # The frames the model will see: a backbone made for one size (a ViT) is built for them.
        frame_size = config.frame_size or clip_settings(config.cache[0]).size
        model = build_model(replace(config.model_config, frame_size=frame_size))
        train, val = (
            split_dataset(config.cache, split, True, config.clip_frames, config.shard_cache)
            for split in ("train", "val")
        )
        tests = {
            name: split_dataset([cache], "test", False, config.clip_frames, config.shard_cache)
            for name, cache in names.items()
        }
        return TrainingData(config, model, train, val, tests, transform=None, workers=config.workers)
    (cache,) = config.cache
    entry = find_entry(cache, config.model, config.from_features)
    if config.frame_size not in (None, entry.frame_size):
        raise UsageError(f"features/{entry.name} are of {entry.frame_size}px frames, not {config.frame_size}px")
    # The run records the entry and its frame size, so that prediction feeds the model what it was trained on.
    config = replace(config, from_features=entry.name, frame_size=entry.frame_size)
    model = model_for_features(entry, config.model_config)
    train, val, test = (feature_split(cache, entry, split, need, config.clip_frames) for split, need in SPLITS)
    # The features sit in memory: the training thread indexes them faster than it could hand the work to a thread.
    return TrainingData(config, model, train, val, dict.fromkeys(names, test), transform=as_float, workers=0)


def as_float(features: torch.Tensor) -> torch.Tensor:
    return features.float()


def final_evaluation(
    model: nn.Module,
    val_feed,
    tests: dict[str, Dataset],
    criterion,
    transform,
    accelerator: Accelerator,
    config,
    workers: int,
) -> tuple[float, dict]:
    """The chosen weights on val (which also picks the verdict threshold, on video scores), then on each store's
    test split, once. `test` holds the one store's test metrics; a run on several stores has them in
    `test_by_store` alone, since pooling data sets into one figure hides how each fares."""
    val = run_evaluation(model, val_feed, criterion, transform, accelerator)
    threshold = choose_threshold(*val.videos())
    by_store = {}
    for name, test_set in tests.items():
        by_store[name] = None
        if len(test_set) and (test_set.labels >= 0).all():  # an unlabelled Testing folder has nothing to score
            test_feed = shard_feed(test_set, config.batch_size, accelerator, True, workers)
            by_store[name] = run_evaluation(model, test_feed, criterion, transform, accelerator).metrics(threshold)
    test = next(iter(by_store.values())) if len(by_store) == 1 else None
    return threshold, {"val": val.metrics(threshold), "test": test, "test_by_store": by_store}


@dataclass(frozen=True)
class Step:
    """What turns a window of batches into an optimiser step: the loss, the optimiser and the gradient clipping."""

    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    max_grad_norm: float | None = None


class EpochBatches(DataLoaderStateMixin):
    """A training feed's pass that tells Accelerate's gradient accumulation where the epoch ends, as its own
    DataLoader does: the epoch's last, shorter window steps the optimiser too, and each epoch starts a new window,
    so that a resumed run accumulates as an uninterrupted one.

    The end is the last batch of the process dealt the most, so that every process syncs its gradients at the
    same step, as DDP needs; a process with a batch fewer waits in DDP's join, its unfinished window left out.
    """

    def __init__(self, feed: BatchFeed, accelerator: Accelerator):
        self.feed = feed
        self.accelerator = accelerator
        self.gradient_state = accelerator.gradient_state
        self.last = feed.most_batches()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        self.accelerator.step = 0  # the batches of the window under way
        self.begin()
        try:
            for number, batch in enumerate(self.feed, 1):
                self.end_of_dataloader = number == self.last
                yield batch
        finally:
            self.end()


def train_epoch(
    model: nn.Module,
    feed: BatchFeed,
    step: Step,
    transform: ClipTransform,
    accelerator: Accelerator,
    label: str,
) -> dict:
    """One pass over this process's share of the training clips; counts are summed over all processes.

    The optimiser steps once every `gradient_accumulation_steps` batches (Accelerate's `accumulate`), on gradients
    clipped first where `step.max_grad_norm` says. The loss, weight and hit counts add up on the device and are read
    once, at the end: a read per step would hold the CPU back until the GPU caught up, every step.
    """
    model.train()
    model.zero_grad(set_to_none=True)  # what a process that ran out of batches first left of the last epoch
    rows: list[torch.Tensor] = []
    sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # loss, weight, correct
    norms: list[torch.Tensor] = []  # the total gradient norm before clipping, of each step
    steps = seen = 0
    started = time.perf_counter()
    # DDP's join lets a process that runs out of batches first shadow the others' gradient reductions.
    # (Accelerate's join_uneven_inputs does this for GPUs only; gloo ranks on CPUs need it too.)
    join = model.join() if isinstance(model, DistributedDataParallel) else contextlib.nullcontext()
    bar = tqdm(total=len(feed), desc=f"train {label}", unit="batch", disable=not accelerator.is_main_process)
    batches = TimedBatches(EpochBatches(feed, accelerator))
    with join, bar:
        for clips, labels, batch_rows in batches:
            with accelerator.accumulate(model):
                synced = accelerator.sync_gradients  # this batch ends a window: the optimiser steps
                clip = accelerator.clip_grad_norm_ if synced else None
                logits, losses, weights, norm = train_step(
                    model, clips, labels, transform, step, accelerator.backward, clip
                )
            steps += synced
            if norm is not None:
                norms.append(norm)
            hits = (logits.argmax(dim=1) == labels).sum()
            sums += torch.stack([value.to(sums.dtype) for value in (losses.detach().sum(), weights.sum(), hits)])
            rows.append(batch_rows)
            seen += len(batch_rows)
            bar.update(1)
            bar.set_postfix(clips_per_s=f"{seen / (time.perf_counter() - started):.1f}")
    seconds = time.perf_counter() - started
    timing = torch.tensor([batches.waited, seconds], dtype=torch.float64, device=accelerator.device)
    totals = accelerator.reduce(torch.cat([sums, timing]), "sum").tolist()
    every_row = gather_object(torch.cat(rows).tolist() if rows else [])
    summary = {
        "train_loss": totals[0] / max(totals[1], 1e-12),
        "train_accuracy": totals[2] / max(len(every_row), 1),
        "train_clips": len(every_row),
        "train_unique_clips": len(set(every_row)),
        "clips_per_second": len(every_row) / max(seconds, 1e-12),
        "data_wait_fraction": totals[3] / max(totals[4], 1e-12),
        "optimizer_steps": steps,  # the main process's, the most of any
    }
    if norms:
        summary["grad_norm"] = float(torch.stack(norms).float().mean())
    return summary


def train_step(
    model: Callable[[torch.Tensor], torch.Tensor],
    clips: torch.Tensor,
    labels: torch.Tensor,
    transform: Callable[[torch.Tensor], torch.Tensor],
    step: Step,
    backward: Callable[[torch.Tensor], None],
    clip: Callable[[Iterable[nn.Parameter], float], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One batch of uint8 clips through the model, its loss backward, and the optimiser's step: the trainer's, and
    the one `bench` times. `backward` is the Accelerator's in training (gradient scaling, several processes,
    accumulation, under which the optimiser's step and zeroing wait for the window's last batch), plain autograd's
    in the bench. `clip` clips the gradients' total norm to `step.max_grad_norm` before the step, where both are
    given. Returns each clip's logits, loss and class weight, and the norm before clipping (None unclipped)."""
    logits = model(transform(clips))
    losses, weights = clip_losses(step.criterion, logits, labels)
    backward(losses.sum() / weights.sum())
    norm = None
    if clip is not None and step.max_grad_norm is not None:
        norm = clip(model.parameters(), step.max_grad_norm)
    step.optimizer.step()
    step.optimizer.zero_grad(set_to_none=True)
    return logits, losses, weights, norm


@torch.no_grad()
def run_evaluation(
    model: nn.Module, feed: BatchFeed, criterion: nn.Module | None, transform: ClipTransform, accelerator: Accelerator
) -> Evaluation:
    """Fake probabilities of every clip of a split, gathered from all processes without the padding; the loss
    is nan without a `criterion`.

    An even feed deals batch i to process i mod N and pads only the end, so the gathered batches come in
    split order and cutting them back to the split's length drops exactly the padding.
    """
    model.eval()
    columns: list[tuple[torch.Tensor, ...]] = []
    for clips, batch_labels, batch_rows in feed:
        logits, frame_logits = clip_and_frame_logits(model, transform(clips), accelerator)
        loss, weight = clip_losses(criterion, logits, batch_labels)
        rows = batch_rows.to(accelerator.device)
        probs = (fake_probability(logits), fake_probability(frame_logits))
        columns.append(accelerator.gather((*probs, batch_labels, rows, loss.float(), weight.float())))
    probs, frame_probs, labels, rows, losses, weights = (
        torch.cat(column)[: len(feed.dataset)].cpu() for column in zip(*columns, strict=True)
    )
    order = np.argsort(rows.numpy(), kind="stable")
    total_loss = float(losses.sum() / weights.sum())
    return Evaluation(
        labels=labels.numpy()[order],
        probs=probs.double().numpy()[order],
        frame_probs=frame_probs.double().numpy()[order],
        rows=rows.numpy()[order],
        loss=total_loss if math.isfinite(total_loss) else float("nan"),
    )


def fake_probability(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(dim=-1)[..., 1]


def clip_and_frame_logits(
    model: nn.Module, inputs: torch.Tensor, accelerator: Accelerator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of each clip (B, 2) and of each of its frames scored alone (B, T, 2), from one backbone pass.

    A frame alone is a 1-frame clip: the backbone's features of that frame through the head. For every head that is
    what the model makes of the frame by itself (the frame vote and the mean pool average over one frame, the LSTM
    reads a sequence of one), so the score means the same for the three models, as DeepfakeBench's frame-level AUC
    scores each frame independently; and the features the clip's forward pass computed serve, without a second pass
    of the backbone. The clip's logits come from the model's own forward, as before, so nothing else changes.
    """
    net = accelerator.unwrap_model(model)
    if not isinstance(net, ClipClassifier):  # a head trained on cached features: they are its input
        return model(inputs), frames_alone(net, inputs, accelerator)
    seen: list[torch.Tensor] = []
    hook = net.backbone.register_forward_hook(lambda _module, _args, output: seen.append(output))
    try:
        logits = model(inputs)
    finally:
        hook.remove()
    return logits, frames_alone(net.head, seen[0].reshape(*inputs.shape[:2], -1), accelerator)


def frames_alone(head: nn.Module, features: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """`head` on each frame's features (B, T, D) as a clip of its own: logits (B, T, 2)."""
    batch, frames = features.shape[:2]
    with accelerator.autocast():
        logits = head(features.reshape(batch * frames, 1, -1))
    return logits.reshape(batch, frames, -1)


def clip_losses(criterion: nn.Module | None, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each clip's loss and its class weight; nan losses without a criterion (scoring a finished model)."""
    if criterion is None:
        loss = torch.full(labels.shape, math.nan, device=logits.device)
        return loss, torch.ones_like(loss)
    loss = criterion(logits.float(), labels)  # a bf16 forward's logits: the loss in fp32, as Accelerate returns them
    return loss, criterion.weight[labels] if criterion.weight is not None else torch.ones_like(loss)


def epoch_line(model: str, record: dict, select_by: str) -> str:
    val = record["val"]

    def show(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    return (
        f"{model} epoch {record['epoch']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}, "
        f"val AUC {show(val['roc_auc'])}, balanced acc {show(val['balanced_accuracy'])}, "
        f"acc {show(val['accuracy'])} (always-fake {show(val['majority_baseline'])}), "
        f"{record['clips_per_second']:.1f} clips/s, data wait {100 * record['data_wait_fraction']:.0f}%"
    )
