"""Training from the store as users run it: real processes, real checkpoints, two gloo ranks, SIGKILL."""

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import build_args, encode_numbered, launch_two, one_line, run_cli, run_process, stop_mid_run, train_args

import train
from cache import open_store
from train.augment import ClipTransform
from train.checkpoint import load_weights
from train.data import shard_feed, split_dataset, train_sampler
from train.loop import run_evaluation
from train.models import ModelConfig, build_model

RUN_SCRIPT = str(Path(train.__file__).parent / "run.py")
PARAMETERS = {"simple_cnn": 422_530, "resnet18": 11_603_650, "effnet_lstm": 5_619_966}


def read_metrics(run: Path, model: str) -> dict:
    return json.loads((run / model / "metrics.json").read_text())


@pytest.mark.parametrize("model", list(PARAMETERS))
def test_each_model_trains_and_reports_honest_metrics(tiny_cache, all_run, model):
    run, stdout = all_run
    assert f"{model} epoch 1:" in stdout and "always-fake" in stdout
    folder = run / model
    for name in ("metrics.json", "history.csv", "curves.png", "confusion.png", "best.safetensors", "last"):
        assert (folder / name).exists(), name
    metrics = read_metrics(run, model)
    assert metrics["parameters"] == PARAMETERS[model]
    assert metrics["best_epoch"] == 1 and len(metrics["history"]) == 1
    with open_store(tiny_cache) as store:
        for split in ("val", "test"):
            final = metrics["final"][split]
            labels = store.label[store.rows(split)]
            assert final["n"] == len(labels)
            assert final["majority_baseline"] == max(np.mean(labels), 1 - np.mean(labels))
            for key in ("accuracy", "balanced_accuracy", "roc_auc", "average_precision", "eer", "acc_real", "acc_fake"):
                assert final[key] is not None and 0 <= final[key] <= 1, key
            assert np.array(final["confusion"]).sum() == len(labels)


def test_all_models_are_compared(all_run):
    run, stdout = all_run
    table = (run / "comparison.md").read_text()
    for model, parameters in PARAMETERS.items():
        assert f"| {model} | {parameters} |" in table and f"| {model} | {parameters} |" in stdout
    assert "majority" in table
    assert (run / "comparison.png").stat().st_size > 1000
    assert len((run / "comparison.csv").read_text().splitlines()) == 4


def test_balanced_sampling_draws_each_class_equally_often(tiny_cache, tmp_path):
    dataset = split_dataset([tiny_cache], "train", True)
    draws = np.concatenate([list(train_sampler(dataset, "sampler", 42, epoch)) for epoch in range(300)])
    assert abs(np.mean(dataset.labels == 0) - 0.5) > 0.05
    assert np.mean(dataset.labels[draws] == 0) == pytest.approx(0.5, abs=0.03)
    assert sorted(train_sampler(dataset, "weights", 42, 1)) == list(range(len(dataset)))
    run_cli(*train_args(tiny_cache, tmp_path, "simple_cnn", "--epochs", "1", "--balance", "sampler"))
    assert read_metrics(tmp_path, "simple_cnn")["history"][0]["train_clips"] == len(dataset)


def test_bf16_mixed_precision_runs_on_the_cpu(tiny_cache, tmp_path):
    run_cli(*train_args(tiny_cache, tmp_path, "simple_cnn", "--epochs", "1", "--mixed-precision", "bf16"))
    assert read_metrics(tmp_path, "simple_cnn")["final"]["val"]["roc_auc"] is not None


def evaluate_alone(cache: Path, folder: Path, split: str, threshold: float) -> dict:
    """A one-process evaluation of saved weights, through the same evaluation code."""
    model = build_model(ModelConfig("simple_cnn"))
    model.load_state_dict(load_weights(folder / "best.safetensors"))
    accelerator = Accelerator(cpu=True)
    feed = shard_feed(split_dataset([cache], split, True), 3, accelerator, True)
    criterion = torch.nn.CrossEntropyLoss(reduction="none")
    result = run_evaluation(accelerator.prepare(model), feed, criterion, ClipTransform(), accelerator)
    return {key: value for key, value in result.metrics(threshold).items() if key != "loss"}


@pytest.mark.slow
def test_two_processes_see_each_clip_once_and_report_what_one_process_does(tiny_cache, tmp_path):
    # 15 training clips in batches of 3: one rank gets 3 batches, the other 2, so DDP's join is needed.
    result = run_process(
        *launch_two(
            RUN_SCRIPT, *train_args(tiny_cache, tmp_path, "simple_cnn", "--epochs", "2", "--batch-size", "3")[1:]
        )
    )
    assert result.stdout.count("simple_cnn epoch 2:") == 1, "only the main process prints"
    metrics = read_metrics(tmp_path, "simple_cnn")
    assert metrics["processes"] == 2
    with open_store(tiny_cache) as store:
        train_clips = len(store.rows("train"))
    for epoch in metrics["history"]:
        assert epoch["train_clips"] == epoch["train_unique_clips"] == train_clips
    for split in ("val", "test"):
        alone = evaluate_alone(tiny_cache, tmp_path / "simple_cnn", split, metrics["threshold"])
        together = {k: v for k, v in metrics["final"][split].items() if k != "loss"}
        assert together.keys() == alone.keys()
        assert together.pop("confusion") == alone.pop("confusion")
        for key, value in together.items():
            assert value == pytest.approx(alone[key], abs=1e-9), key


def progress_epoch(folder: Path) -> int:
    try:
        return json.loads((folder / "last" / "progress.json").read_text())["epoch"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_resume_after_a_kill_or_preemption_ends_as_an_uninterrupted_run(tiny_cache, tmp_path, stop):
    args = train_args(tiny_cache, tmp_path / "killed", "simple_cnn", "--epochs", "3")
    line = "train: interrupted: simple_cnn's last checkpoint is after epoch"
    stop_mid_run(args, lambda: progress_epoch(tmp_path / "killed" / "simple_cnn") >= 1, stop, line, tmp_path / "err")
    assert 1 <= progress_epoch(tmp_path / "killed" / "simple_cnn") < 3
    resumed = run_cli(*args, "--resume")
    assert "resuming after epoch" in resumed.stdout
    run_cli(*train_args(tiny_cache, tmp_path / "whole", "simple_cnn", "--epochs", "3"))
    killed, whole = read_metrics(tmp_path / "killed", "simple_cnn"), read_metrics(tmp_path / "whole", "simple_cnn")
    assert [e["epoch"] for e in killed["history"]] == [1, 2, 3]
    for a, b in zip(killed["history"], whole["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val"]["roc_auc"] == pytest.approx(b["val"]["roc_auc"])
    assert killed["final"]["test"]["roc_auc"] == pytest.approx(whole["final"]["test"]["roc_auc"])


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("train: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_missing_or_foreign_store_exits_2_with_one_line(tiny_cache, tmp_path):
    missing = run_cli(*train_args(tmp_path / "none.zarr", tmp_path / "r", "simple_cnn"), check=False)
    assert "no such store" in one_line_error(missing)
    import zarr

    zarr.open_group(tmp_path / "other.zarr", mode="w").attrs["schema"] = "other/1"
    assert "not a clipcache/1" in one_line_error(
        run_cli(*train_args(tmp_path / "other.zarr", tmp_path / "r", "simple_cnn"), check=False)
    )
    assert "--weights" in one_line_error(
        run_cli(*train_args(tiny_cache, tmp_path / "r", "all", "--weights", str(tmp_path / "other.zarr")), check=False)
    )


def test_a_val_split_of_one_class_or_no_ok_clip_exits_2_with_one_line(tmp_path):
    # A val split whose only real video is broken: the store builds, its ok val clips are all fake.
    root = tmp_path / "data"
    rows = ["path,label,split"]
    for i in range(2):
        for label in (0, 1):
            encode_numbered(root / f"train_{i}_{label}.mp4", 8)
            rows.append(f"train_{i}_{label}.mp4,{label},train")
    encode_numbered(root / "val_fake.mp4", 8)
    (root / "val_real.mp4").write_text("not a video")
    rows += ["val_fake.mp4,1,val", "val_real.mp4,0,val"]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    store = tmp_path / "oneclass.zarr"
    run_cli(*build_args(root, store, "--workers", "1", "--manifest", str(tmp_path / "manifest.csv")))
    one_class = run_cli(*train_args(store, tmp_path / "r", "simple_cnn"), check=False)
    assert "val split holds one class" in one_line_error(one_class)
    # With the val fake broken too, the val split has no ok clip at all.
    (root / "val_fake.mp4").write_text("not a video either")
    empty = tmp_path / "emptyval.zarr"
    run_cli(*build_args(root, empty, "--workers", "1", "--manifest", str(tmp_path / "manifest.csv")))
    assert "val split holds no ok clips" in one_line_error(
        run_cli(*train_args(empty, tmp_path / "r", "simple_cnn"), check=False)
    )


@pytest.mark.slow
def test_a_full_disk_ends_with_one_line_and_resume_finishes_once_space_is_freed(tiny_cache, small_disk):
    args = train_args(tiny_cache, small_disk.path / "run", "simple_cnn", "--epochs", "2")
    result = run_cli(*args, check=False)
    assert result.returncode == 4, result.stderr
    one_line(result.stderr, f"train: error: no space left on the device of {small_disk.path / 'run'}: ")
    small_disk.resize(64 * 2**20)
    run_cli(*args, "--resume")
    assert [e["epoch"] for e in read_metrics(small_disk.path / "run", "simple_cnn")["history"]] == [1, 2]
