"""Training one model with Accelerate: the same code on a CPU, one GPU, several GPUs or several machines.

Clips reach the device as uint8 and become normalised (and, in training, augmented) floats there. The
best epoch is chosen on the validation split; the test split is evaluated once, at the end, with the
chosen weights, and never chooses anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from train.augment import ClipTransform
from train.checkpoint import find_last, load_last, load_weights, save_last, save_weights, write_json
from train.data import (
    BALANCE,
    TimedBatches,
    UsageError,
    class_weights,
    make_loader,
    shard_loader,
    split_dataset,
    train_sampler,
)
from train.inference import ClipSettings
from train.metrics import SELECT_BY, better, choose_threshold, evaluate
from train.models import DEFAULT_LR, MODEL_NAMES, ModelConfig, build_model, count_parameters

LR_FACTOR = 0.5  # the seed's ReduceLROnPlateau
LR_PATIENCE = 1


@dataclass(frozen=True)
class TrainConfig:
    cache: Path
    out: Path
    model: str
    epochs: int = 2
    batch_size: int = 4
    lr: float | None = None
    weight_decay: float = 1e-4
    dropout: float = 0.5
    balance: str = "weights"
    select_by: str = "roc_auc"
    frame_size: int | None = None
    workers: int = 2
    seed: int = 42
    pretrained: bool = False
    weights: Path | None = None
    resume: bool = False

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.model]

    def check(self) -> None:
        if self.model not in MODEL_NAMES:
            raise UsageError(f"--model must be one of {', '.join(MODEL_NAMES)}, not {self.model!r}")
        if self.balance not in BALANCE:
            raise UsageError(f"--balance must be one of {', '.join(BALANCE)}")
        if self.select_by not in SELECT_BY:
            raise UsageError(f"--select-by must be one of {', '.join(SELECT_BY)}")
        if self.epochs < 1 or self.batch_size < 1 or self.workers < 0:
            raise UsageError("--epochs and --batch-size must be at least 1, --workers at least 0")
        if self.weights is not None and not Path(self.weights).is_file():
            raise UsageError(f"--weights {self.weights}: no such file")

    def as_dict(self) -> dict:
        values = dataclasses.asdict(self)
        return {name: str(value) if isinstance(value, Path) else value for name, value in values.items()}


@dataclass
class Progress:
    """What `last/progress.json` records: enough to resume after the last completed epoch."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None


@dataclass
class Evaluation:
    labels: np.ndarray
    probs: np.ndarray
    rows: np.ndarray
    loss: float


def fit(config: TrainConfig, accelerator: Accelerator) -> dict:
    """Train `config.model`, write RUN_DIR/MODEL/{best.safetensors,last/,metrics.json}; return the metrics."""
    config.check()
    model_dir = config.out / config.model
    train_set = split_dataset(config.cache, "train", need_both_classes=True)
    val_set = split_dataset(config.cache, "val", need_both_classes=True)
    test_set = split_dataset(config.cache, "test", need_both_classes=False)
    if accelerator.is_main_process:
        model_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    model = build_model(ModelConfig(config.model, config.dropout, config.pretrained, config.weights))
    parameters = count_parameters(model)
    channels_last = accelerator.device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=LR_FACTOR, patience=LR_PATIENCE)
    weight = class_weights(train_set.labels) if config.balance == "weights" else None
    criterion = nn.CrossEntropyLoss(weight=weight, reduction="none").to(accelerator.device)

    progress = restore(model_dir / "last", model, optimizer, scheduler) if config.resume else Progress()
    if progress.epoch:
        accelerator.print(f"{config.model}: resuming after epoch {progress.epoch}")
    model, optimizer = accelerator.prepare(model, optimizer)

    evaluate_transform = ClipTransform(train=False, size=config.frame_size, channels_last=channels_last)
    val_loader = shard_loader(make_loader(val_set, config.batch_size, config.workers), accelerator, True)
    for epoch in range(progress.epoch + 1, config.epochs + 1):
        torch.manual_seed(config.seed * 1_000_003 + epoch * 101 + accelerator.process_index)
        augment = ClipTransform(
            train=True,
            seed=config.seed + 7919 * epoch + accelerator.process_index,
            size=config.frame_size,
            channels_last=channels_last,
        )
        sampler = train_sampler(train_set, config.balance, config.seed, epoch)
        train_loader = shard_loader(
            make_loader(train_set, config.batch_size, config.workers, sampler), accelerator, False
        )
        started = time.perf_counter()
        trained = train_epoch(
            model, train_loader, optimizer, criterion, augment, accelerator, f"{config.model} {epoch}"
        )
        val = run_evaluation(model, val_loader, criterion, evaluate_transform, accelerator)
        scheduler.step(val.loss)
        val_metrics = evaluate(val.labels, val.probs)
        record = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - started, 3),
            **trained,
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
            checkpoint(model_dir, accelerator.unwrap_model(model), optimizer, scheduler, progress, improved)
        accelerator.wait_for_everyone()
        accelerator.print(epoch_line(config.model, record, config.select_by))

    accelerator.unwrap_model(model).load_state_dict(load_weights(model_dir / "best.safetensors"))
    threshold, final = final_evaluation(model, val_loader, test_set, criterion, evaluate_transform, accelerator, config)
    metrics = {
        "model": config.model,
        "parameters": parameters,
        "config": config.as_dict(),
        "clip": ClipSettings.of_store(config.cache).as_dict(),
        "processes": accelerator.num_processes,
        "select_by": config.select_by,
        "best_epoch": progress.best_epoch,
        "threshold": threshold,
        "history": progress.history,
        "final": final,
    }
    if accelerator.is_main_process:
        write_json(model_dir / "metrics.json", metrics)
    accelerator.wait_for_everyone()
    return metrics


def restore(folder: Path, model: nn.Module, optimizer, scheduler) -> Progress:
    """Load the last whole checkpoint into model, optimiser and scheduler; a fresh start if there is none."""
    last = find_last(folder)
    if last is None:
        return Progress()
    weights, optimizer_state, scheduler_state, saved = load_last(last)
    model.load_state_dict(weights)
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    return Progress(**saved)


def checkpoint(model_dir: Path, model: nn.Module, optimizer, scheduler, progress: Progress, improved: bool) -> None:
    """The main process's files after an epoch: best.safetensors when it improved, and always last/."""
    state = model.state_dict()
    if improved:
        save_weights(model_dir / "best.safetensors", state)
    save_last(model_dir / "last", state, optimizer.state_dict(), scheduler.state_dict(), dataclasses.asdict(progress))


def final_evaluation(
    model: nn.Module, val_loader, test_set, criterion, transform: ClipTransform, accelerator: Accelerator, config
) -> tuple[float, dict]:
    """The chosen weights on val (which also picks the verdict threshold), then on test, once."""
    val = run_evaluation(model, val_loader, criterion, transform, accelerator)
    threshold = choose_threshold(val.labels, val.probs)
    final = {"val": {**evaluate(val.labels, val.probs, threshold), "loss": val.loss}, "test": None}
    if len(test_set) and (test_set.labels >= 0).all():  # an unlabelled Testing folder has nothing to score
        test_loader = shard_loader(make_loader(test_set, config.batch_size, config.workers), accelerator, True)
        test = run_evaluation(model, test_loader, criterion, transform, accelerator)
        final["test"] = {**evaluate(test.labels, test.probs, threshold), "loss": test.loss}
    return threshold, final


def train_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    transform: ClipTransform,
    accelerator: Accelerator,
    label: str,
) -> dict:
    """One pass over this process's share of the training clips; counts are summed over all processes."""
    model.train()
    rows: list[int] = []
    loss_sum = weight_sum = correct = 0.0
    started = time.perf_counter()
    # DDP's join lets a process that runs out of batches first shadow the others' gradient reductions.
    # (Accelerate's join_uneven_inputs does this for GPUs only; gloo ranks on CPUs need it too.)
    join = model.join() if isinstance(model, DistributedDataParallel) else contextlib.nullcontext()
    bar = tqdm(total=len(loader), desc=f"train {label}", unit="batch", disable=not accelerator.is_main_process)
    batches = TimedBatches(loader)
    with join, bar:
        for clips, labels, batch_rows in batches:
            logits = model(transform(clips))
            losses = criterion(logits, labels)
            weights = criterion.weight[labels] if criterion.weight is not None else torch.ones_like(losses)
            loss = losses.sum() / weights.sum()
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            loss_sum += float(losses.detach().sum())
            weight_sum += float(weights.sum())
            correct += float((logits.argmax(dim=1) == labels).sum())
            rows.extend(batch_rows.tolist())
            bar.update(1)
            bar.set_postfix(clips_per_s=f"{len(rows) / (time.perf_counter() - started):.1f}")
    seconds = time.perf_counter() - started
    totals = accelerator.reduce(
        torch.tensor([loss_sum, weight_sum, correct, batches.waited, seconds], device=accelerator.device), "sum"
    ).tolist()
    every_row = gather_object(rows)
    return {
        "train_loss": totals[0] / max(totals[1], 1e-12),
        "train_accuracy": totals[2] / max(len(every_row), 1),
        "train_clips": len(every_row),
        "train_unique_clips": len(set(every_row)),
        "clips_per_second": len(every_row) / max(seconds, 1e-12),
        "data_wait_fraction": totals[3] / max(totals[4], 1e-12),
    }


@torch.no_grad()
def run_evaluation(
    model: nn.Module, loader, criterion: nn.Module, transform: ClipTransform, accelerator: Accelerator
) -> Evaluation:
    """Fake probabilities of every clip of a split, gathered from all processes without the padding."""
    model.eval()
    labels, probs, rows, losses, weights = [], [], [], [], []
    for clips, batch_labels, batch_rows in loader:
        logits = model(transform(clips))
        loss = criterion(logits, batch_labels)
        weight = criterion.weight[batch_labels] if criterion.weight is not None else torch.ones_like(loss)
        gathered = accelerator.gather_for_metrics(
            (logits.float().softmax(dim=1)[:, 1], batch_labels, batch_rows, loss.float(), weight.float())
        )
        for bucket, values in zip((probs, labels, rows, losses, weights), gathered, strict=True):
            bucket.append(values.cpu())
    order = np.argsort(torch.cat(rows).numpy(), kind="stable")
    total_loss = float(torch.cat(losses).sum() / torch.cat(weights).sum())
    return Evaluation(
        labels=torch.cat(labels).numpy()[order],
        probs=torch.cat(probs).double().numpy()[order],
        rows=torch.cat(rows).numpy()[order],
        loss=total_loss if math.isfinite(total_loss) else float("nan"),
    )


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
