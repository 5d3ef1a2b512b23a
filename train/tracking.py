"""What a training run tells Accelerate's experiment trackers (`--log-with`): its hyperparameters once, each
epoch's figures, and the final test metrics.

Accelerate names a tracker's run by a project name and writes local logs under its logging folder: here the model
is the project (wandb's project, MLflow's experiment), and each training writes TensorBoard's events in its own
model folder, RUN_DIR/MODEL (a study's OUT/trial-N/MODEL), so that `tensorboard --logdir RUN_DIR` shows the models,
or a study's trials, side by side.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

from train.data import UsageError
from train.metrics import SELECT_BY

TRACKERS: dict[str, Callable[[], bool]] = {
    "tensorboard": is_tensorboard_available,
    "wandb": is_wandb_available,
    "mlflow": is_mlflow_available,
}
ALL = "all"
EPOCH_SCALARS = {  # tag -> the epoch record's field
    "train/loss": "train_loss",
    "train/accuracy": "train_accuracy",
    "train/grad_norm": "grad_norm",
    "train/optimizer_steps": "optimizer_steps",
    "train/clips_per_second": "clips_per_second",
    "train/data_wait_fraction": "data_wait_fraction",
    "val/loss": "val_loss",
    "lr": "lr",
}
SCORED = (*SELECT_BY, "frame_roc_auc", "clip_roc_auc", "eer")  # the val metrics of each epoch, and test's at the end
FINAL_SCORED = (*SCORED, "loss", "threshold")


def trackers(log_with: str | None) -> list[str] | None:
    """The trackers `--log-with` names: one, or `all` three that are installed (TensorBoard, a dependency, at
    least). One named but not installed is refused here, before anything trains: Accelerate would leave it out
    with a debug message alone."""
    if log_with is None:
        return None
    if log_with == ALL:
        return [name for name, installed in TRACKERS.items() if installed()]
    if log_with not in TRACKERS:
        raise UsageError(f"--log-with {log_with}: choose one of {', '.join(TRACKERS)} or {ALL}")
    if not TRACKERS[log_with]():
        raise UsageError(
            f"--log-with {log_with}: {log_with} is not installed (pip install {log_with}), or log with tensorboard"
        )
    return [log_with]


def hyperparameters(values: dict) -> dict[str, str | int | float | bool | None]:
    """`values` as every tracker stores them: TensorBoard's hparams take numbers, strings and booleans, not lists."""
    return {name: ",".join(map(str, v)) if isinstance(v, list | tuple) else v for name, v in values.items()}


@contextlib.contextmanager
def tracking(accelerator: Accelerator, project: str, logging_dir: Path, config: dict) -> Iterator[None]:
    """One run of each of the accelerator's trackers for the block, in `project` (TensorBoard's in
    `logging_dir`/`project`), with `config` as its hyperparameters. Finished on leaving, and let go of: `end_training`
    would also end the process group a launch's next model trains in, and trackers left registered would log that
    model's epochs too."""
    settings = accelerator.project_configuration
    before, settings.logging_dir = settings.logging_dir, str(logging_dir)
    try:
        accelerator.init_trackers(project, config=hyperparameters(config))
        yield
    finally:
        for tracker in accelerator.trackers:
            tracker.finish()
        accelerator.trackers.clear()
        settings.logging_dir = before


def epoch_scalars(record: dict) -> dict[str, float]:
    """An epoch's record as scalars: train loss and accuracy, val loss and metrics (the one choosing the best epoch
    among them), learning rate, throughput; a metric undefined this epoch is left out."""
    scalars = {tag: record.get(field) for tag, field in EPOCH_SCALARS.items()}
    scalars |= {f"val/{name}": record["val"].get(name) for name in SCORED}
    return defined(scalars)


def final_scalars(final: dict) -> dict[str, float]:
    """The test metrics of the chosen weights: `test/METRIC`, or `test/STORE/METRIC` for a run on several stores."""
    by_store = final["test_by_store"]
    scalars = {}
    for store, metrics in by_store.items():
        prefix = "test" if len(by_store) == 1 else f"test/{store}"
        scalars |= {f"{prefix}/{name}": (metrics or {}).get(name) for name in FINAL_SCORED}
    return defined(scalars)


def defined(scalars: dict[str, float | int | None]) -> dict[str, float]:
    return {tag: float(value) for tag, value in scalars.items() if value is not None and math.isfinite(value)}
