"""Accelerate's conventions in the trainer, on real runs: experiment trackers (`--log-with`), gradient accumulation
and gradient clipping."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import is_mlflow_available, is_wandb_available, set_seed
from conftest import as_a_new_process, one_line, run_cli, scalars, train_args
from test_tune import tune_args
from torch import nn

from train.augment import ClipTransform
from train.checkpoint import load_weights
from train.data import shard_feed, split_dataset
from train.loop import Step, train_epoch
from train.models import ModelConfig, build_model

EPOCH_TAGS = {  # tag -> where metrics.json's history holds the same figure
    "train/loss": ("train_loss",),
    "train/optimizer_steps": ("optimizer_steps",),
    "val/loss": ("val_loss",),
    "lr": ("lr",),
    "val/roc_auc": ("val", "roc_auc"),
    "val/balanced_accuracy": ("val", "balanced_accuracy"),
    "val/frame_roc_auc": ("val", "frame_roc_auc"),
}
TEST_TAGS = ("roc_auc", "frame_roc_auc", "average_precision", "eer", "balanced_accuracy", "threshold")


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def hparams(folder: Path) -> dict:
    """The hyperparameters Accelerate's TensorBoard tracker stored beside the run's events."""
    (path,) = folder.glob("*/hparams.yml")
    return yaml.safe_load(path.read_text())


def field(record: dict, path: tuple[str, ...]) -> float:
    for key in path:
        record = record[key]
    return record


def test_tensorboard_holds_each_epochs_figures_and_the_final_test_metrics(tiny_cache, tmp_path):
    run_cli(*train_args(tiny_cache, tmp_path, "simple_cnn", "--epochs", "2", "--log-with", "tensorboard"))
    folder = tmp_path / "simple_cnn"
    logged, written = scalars(folder), metrics(folder)
    for tag, path in EPOCH_TAGS.items():
        assert [step for step, _ in logged[tag]] == [1, 2], tag
        expected = [field(record, path) for record in written["history"]]
        assert [value for _, value in logged[tag]] == pytest.approx(expected, rel=1e-6), tag
    for name in TEST_TAGS:
        assert logged[f"test/{name}"] == [(2, pytest.approx(written["final"]["test"][name], rel=1e-6))], name
    stored = hparams(folder)
    assert (stored["model"], stored["lr"], stored["epochs"], stored["gradient_accumulation_steps"]) == (
        "simple_cnn",
        0.001,
        2,
        1,
    )
    assert stored["cache"] == str(tiny_cache)


@pytest.mark.slow
def test_each_trial_of_a_study_logs_to_a_tracker_run_of_its_own(tiny_cache, tmp_path):
    run_cli(*tune_args(tiny_cache, tmp_path, "--trials", "2", "--epochs", "1", "--log-with", "tensorboard"))
    for trial in ("trial-0", "trial-1"):
        folder = tmp_path / trial / "simple_cnn"
        written = metrics(folder)
        assert scalars(folder)["val/roc_auc"] == [(1, pytest.approx(written["history"][0]["val"]["roc_auc"]))], trial
        assert hparams(folder)["lr"] == written["config"]["lr"], "each trial's own parameters"


@pytest.mark.parametrize(
    ("tracker", "line"),
    [
        pytest.param(
            "wandb",
            "--log-with wandb: wandb is not installed",
            marks=pytest.mark.skipif(is_wandb_available(), reason="wandb is installed"),
        ),
        pytest.param(
            "mlflow",
            "--log-with mlflow: mlflow is not installed",
            marks=pytest.mark.skipif(is_mlflow_available(), reason="mlflow is installed"),
        ),
        ("comet", "--log-with comet: choose one of tensorboard, wandb, mlflow or all"),
    ],
)
@pytest.mark.parametrize("command", ["train.run", "train.tune"])
def test_a_tracker_not_installed_or_unknown_ends_before_training_in_one_line(
    tiny_cache, tmp_path, command, tracker, line
):
    args = train_args(tiny_cache, tmp_path, "simple_cnn", "--log-with", tracker)[1:]
    result = run_cli(command, *args, *(["--trials", "1"] if command == "train.tune" else []), check=False)
    assert result.returncode == 2
    one_line(result.stderr, f"{'tune' if command == 'train.tune' else 'train'}: error: {line}")
    assert not (tmp_path / "simple_cnn").exists() and not (tmp_path / "trial-0").exists()


def optimizer_steps(folder: Path) -> int:
    """How often Adam stepped, from its own count in the checkpoint."""
    state = torch.load(folder / "last" / "optimizer.bin", weights_only=True)["state"]
    return int(state[0]["step"])


@pytest.mark.slow
def test_accumulating_three_batches_steps_the_optimiser_once_per_window_and_at_each_epochs_end(tiny_cache, tmp_path):
    """7 training clips in batches of 1: 7 steps an epoch, or 3 windows of 3, 3 and 1 batches with accumulation."""
    for name, extra in (("plain", []), ("accumulated", ["--gradient-accumulation-steps", "3"])):
        run_cli(*train_args(tiny_cache, tmp_path / name, "simple_cnn", "--epochs", "2", "--batch-size", "1", *extra))
    plain, accumulated = tmp_path / "plain" / "simple_cnn", tmp_path / "accumulated" / "simple_cnn"
    assert (optimizer_steps(plain), optimizer_steps(accumulated)) == (14, 6)
    history = metrics(accumulated)["history"]
    assert [epoch["optimizer_steps"] for epoch in history] == [3, 3]
    assert [epoch["train_clips"] for epoch in history] == [7, 7], "every clip still trains"
    assert metrics(accumulated)["gradient_accumulation_steps"] == 3


def one_pass(cache: Path, batch_size: int, accumulate: int) -> tuple[int, dict[str, torch.Tensor]]:
    """`train_epoch` of a linear clip classifier (no BatchNorm, no dropout: nothing that sees the batch's size) by
    plain SGD over the first 4 training clips, unweighted: its optimiser steps and its weights after them."""
    with as_a_new_process():
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulate)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(4 * 3 * 32 * 32, 2))
        model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
        feed = shard_feed(split_dataset([cache], "train", True), batch_size, accelerator, even=False)
        feed.sampler = [0, 1, 2, 3]
        step = Step(optimizer, nn.CrossEntropyLoss(reduction="none"))
        summary = train_epoch(model, feed, step, ClipTransform(), accelerator, "linear")
        return summary["optimizer_steps"], {
            k: v.clone() for k, v in accelerator.unwrap_model(model).state_dict().items()
        }


def test_two_accumulated_batches_of_two_step_as_one_batch_of_four(tiny_cache):
    steps, accumulated = one_pass(tiny_cache, 2, 2)
    whole_steps, whole = one_pass(tiny_cache, 4, 1)
    plain_steps, plain = one_pass(tiny_cache, 2, 1)
    assert (steps, whole_steps, plain_steps) == (1, 1, 2)
    for name, value in whole.items():
        torch.testing.assert_close(accumulated[name], value, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(plain[name], value) for name, value in whole.items()), "two steps differ from one"


def moved(folder: Path) -> float:
    """The largest change of any parameter from the run's initial weights (drawn from --seed 42, as the run drew
    them), leaving out BatchNorm's running statistics, which no gradient moves."""
    set_seed(42)
    start = build_model(ModelConfig("simple_cnn"))
    trained = load_weights(folder / "best.safetensors")
    return max(float((trained[name] - value.detach()).abs().max()) for name, value in start.named_parameters())


@pytest.mark.slow
def test_max_grad_norm_clips_the_gradients_before_each_step(tiny_cache, tmp_path):
    """Adam divides by the gradients' own scale, down to its eps of 1e-8: gradients clipped to a total norm of
    1e-12 move no weight by more than a hair, where unclipped ones move them by about the learning rate a step."""
    common = ("--epochs", "1", "--lr", "0.01", "--weight-decay", "0")
    run_cli(*train_args(tiny_cache, tmp_path / "free", "simple_cnn", *common))
    run_cli(*train_args(tiny_cache, tmp_path / "clipped", "simple_cnn", *common, "--max-grad-norm", "1e-12"))
    assert moved(tmp_path / "free" / "simple_cnn") > 1e-3
    assert moved(tmp_path / "clipped" / "simple_cnn") < 1e-5
    (epoch,) = metrics(tmp_path / "clipped" / "simple_cnn")["history"]
    assert epoch["grad_norm"] > 1e-6, "the norm logged is the one before clipping"
    assert "grad_norm" not in metrics(tmp_path / "free" / "simple_cnn")["history"][0]
