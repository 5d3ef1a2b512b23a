"""Training from the store as users run it: real processes, real checkpoints, two gloo ranks, SIGKILL."""

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import (
    as_a_new_process,
    build_args,
    encode_numbered,
    launch_two,
    one_line,
    run_cli,
    run_process,
    scalars,
    stop_mid_run,
    train_args,
)
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score

import train
from cache import open_store
from train.augment import ClipTransform
from train.checkpoint import find_last, load_weights, read_progress
from train.data import shard_feed, split_dataset, train_sampler
from train.inference import TrainedModel
from train.loop import TrainConfig, fit, run_evaluation
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
            keys = ("accuracy", "balanced_accuracy", "roc_auc", "frame_roc_auc", "average_precision", "eer", "acc_real")
            for key in (*keys, "acc_fake"):
                assert final[key] is not None and 0 <= final[key] <= 1, key
            assert np.array(final["confusion"]).sum() == len(labels)


def test_all_models_are_compared(all_run):
    run, stdout = all_run
    table = (run / "comparison.md").read_text()
    for model, parameters in PARAMETERS.items():
        assert f"| {model} | {parameters} |" in table and f"| {model} | {parameters} |" in stdout
    assert "majority" in table and "| val frame AUC |" in table and "| test frame AUC |" in table
    assert (run / "comparison.png").stat().st_size > 1000
    assert len((run / "comparison.csv").read_text().splitlines()) == 4


@pytest.mark.parametrize("model", list(PARAMETERS))
def test_each_frame_is_scored_as_the_model_scores_it_as_a_clip_of_one_frame(tiny_cache, all_run, model):
    trained = TrainedModel.load(all_run[0] / model, torch.device("cpu"))
    accelerator = Accelerator(cpu=True)
    feed = shard_feed(split_dataset([tiny_cache], "test", True), 3, accelerator, True)
    scored = run_evaluation(trained.model, feed, None, trained.transform, accelerator)
    alone = {}
    with torch.no_grad():
        for clips, _, rows in feed:
            inputs = trained.transform(clips)
            frames = [trained.model(inputs[:, t : t + 1]).softmax(dim=1)[:, 1] for t in range(inputs.shape[1])]
            alone |= dict(zip(rows.tolist(), torch.stack(frames, dim=1).double().numpy(), strict=True))
    assert scored.frame_probs.shape == (len(feed.dataset), 4)
    np.testing.assert_allclose(scored.frame_probs, [alone[row] for row in scored.rows], atol=1e-5)
    frame_auc = scored.metrics()["frame_roc_auc"]
    assert frame_auc == pytest.approx(roc_auc_score(np.repeat(scored.labels, 4), scored.frame_probs.reshape(-1)))


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


def two_ranks_args(cache: Path, out: Path, *extra: str) -> list[str]:
    """`accelerate launch` of train/run.py as two gloo ranks, simple_cnn in batches of 3: the 7 training clips make
    2 batches for one rank and 1 for the other, so DDP's join is needed; accumulated in windows of 2 batches, which
    the rank of one batch leaves unfinished, and logged to TensorBoard."""
    accumulated = ("--gradient-accumulation-steps", "2", "--log-with", "tensorboard")
    return launch_two(RUN_SCRIPT, *train_args(cache, out, "simple_cnn", "--batch-size", "3", *accumulated, *extra)[1:])


@pytest.fixture(scope="module")
def two_ranks(tiny_cache, tmp_path_factory) -> tuple[Path, str]:
    """A run of two epochs on two ranks, uninterrupted: its folder and stdout."""
    out = tmp_path_factory.mktemp("two-ranks")
    return out, run_process(*two_ranks_args(tiny_cache, out, "--epochs", "2")).stdout


@pytest.mark.slow
def test_two_processes_see_each_clip_once_and_report_what_one_process_does(tiny_cache, two_ranks):
    run, stdout = two_ranks
    assert stdout.count("simple_cnn epoch 2:") == 1, "only the main process prints"
    metrics = read_metrics(run, "simple_cnn")
    assert metrics["processes"] == 2
    with open_store(tiny_cache) as store:
        train_clips = len(store.rows("train"))
    for epoch in metrics["history"]:
        assert epoch["train_clips"] == epoch["train_unique_clips"] == train_clips
        assert epoch["optimizer_steps"] == 1, "one window of 2 batches an epoch"
    assert len(list((run / "simple_cnn").glob("events.out.tfevents.*"))) == 1, "the main process alone logs"
    for split in ("val", "test"):
        alone = evaluate_alone(tiny_cache, run / "simple_cnn", split, metrics["threshold"])
        together = {k: v for k, v in metrics["final"][split].items() if k != "loss"}
        assert together.keys() == alone.keys()
        assert together.pop("confusion") == alone.pop("confusion")
        for key, value in together.items():
            assert value == pytest.approx(alone[key], abs=1e-9), key


def same_epochs(resumed: dict, whole: dict) -> None:
    """A resumed run's epochs and test score are those of the run that was not stopped."""
    assert [e["epoch"] for e in resumed["history"]] == [e["epoch"] for e in whole["history"]]
    for a, b in zip(resumed["history"], whole["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val"]["roc_auc"] == pytest.approx(b["val"]["roc_auc"])
    assert resumed["final"]["test"]["roc_auc"] == pytest.approx(whole["final"]["test"]["roc_auc"])


@pytest.mark.slow
def test_two_ranks_resume_each_with_its_random_state_and_one_process_resumes_them_too(tiny_cache, two_ranks, tmp_path):
    run_process(*two_ranks_args(tiny_cache, tmp_path / "two", "--epochs", "1"))
    last = tmp_path / "two" / "simple_cnn" / "last"
    assert sorted(path.name for path in last.glob("random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]
    shutil.copytree(tmp_path / "two", tmp_path / "one")
    resumed = run_process(*two_ranks_args(tiny_cache, tmp_path / "two", "--epochs", "2", "--resume"))
    assert resumed.stdout.count("resuming after epoch 1") == 1
    same_epochs(read_metrics(tmp_path / "two", "simple_cnn"), read_metrics(two_ranks[0], "simple_cnn"))
    # TensorBoard reads the stopped and the resumed run's events as one run: each epoch once, as uninterrupted.
    logged, whole = scalars(tmp_path / "two" / "simple_cnn"), scalars(two_ranks[0] / "simple_cnn")
    for tag in ("train/loss", "val/roc_auc", "train/optimizer_steps"):
        assert [step for step, _ in logged[tag]] == [1, 2], tag
        assert [value for _, value in logged[tag]] == pytest.approx([value for _, value in whole[tag]], rel=1e-5), tag
    # One process takes up what two ranks saved: its batches differ, so its figures do too.
    alone = run_cli(
        *train_args(tiny_cache, tmp_path / "one", "simple_cnn", "--batch-size", "3", "--epochs", "2"), "--resume"
    )
    assert "resuming after epoch 1" in alone.stdout
    assert [e["epoch"] for e in read_metrics(tmp_path / "one", "simple_cnn")["history"]] == [1, 2]


def progress_epoch(folder: Path) -> int:
    """The epoch of the last whole checkpoint, 0 if none yet; read while the run may be swapping in the next."""
    last = find_last(folder / "last")
    try:
        return 0 if last is None else read_progress(last)["epoch"]
    except FileNotFoundError:
        return 0


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stop", "precision"),
    [(signal.SIGKILL, "no"), (signal.SIGTERM, "no"), (signal.SIGKILL, "bf16")],
    ids=["sigkill", "sigterm", "sigkill-bf16"],
)
def test_resume_after_a_kill_or_preemption_ends_as_an_uninterrupted_run(tiny_cache, tmp_path, stop, precision):
    args = train_args(tiny_cache, tmp_path / "killed", "simple_cnn", "--epochs", "3", "--mixed-precision", precision)
    line = "train: interrupted: simple_cnn's last checkpoint is after epoch"
    stop_mid_run(args, lambda: progress_epoch(tmp_path / "killed" / "simple_cnn") >= 1, stop, line, tmp_path / "err")
    assert 1 <= progress_epoch(tmp_path / "killed" / "simple_cnn") < 3
    resumed = run_cli(*args, "--resume")
    assert "resuming after epoch" in resumed.stdout
    run_cli(*train_args(tiny_cache, tmp_path / "whole", "simple_cnn", "--epochs", "3", "--mixed-precision", precision))
    killed, whole = read_metrics(tmp_path / "killed", "simple_cnn"), read_metrics(tmp_path / "whole", "simple_cnn")
    assert [e["epoch"] for e in killed["history"]] == [1, 2, 3]
    same_epochs(killed, whole)


GROWTH_INTERVAL = 3  # steps between the GradScaler's growths: an epoch here is 2 steps (7 clips in batches of 4)


def fp16_as_on_a_gpu() -> Accelerator:
    """Accelerate's fp16 as it trains on a GPU, autocast to float16 and its GradScaler, here on the CPU: Accelerate
    makes neither on a CPU, where `--mixed-precision fp16` trains in fp32. The scaler grows every GROWTH_INTERVAL
    steps (by default every 2000th), so that it grows in the second epoch only if its count of steps carried over
    the first epoch's end, as a long run's does."""
    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu", growth_interval=GROWTH_INTERVAL)
    return accelerator


class Stop(Exception):
    pass


def stop_after_first(epoch: int, _val_metrics: dict) -> None:
    raise Stop


@pytest.mark.slow
def test_an_fp16_run_resumes_with_its_gradscaler_as_an_uninterrupted_run(tiny_cache, tmp_path):
    config = TrainConfig(cache=tiny_cache, out=tmp_path / "stopped", model="simple_cnn", epochs=2, workers=0)
    with as_a_new_process(), pytest.raises(Stop):
        fit(config, fp16_as_on_a_gpu(), on_epoch=stop_after_first)
    saved = torch.load(tmp_path / "stopped" / "simple_cnn" / "last" / "scaler.pt", weights_only=True)
    assert saved != torch.amp.GradScaler("cpu", growth_interval=GROWTH_INTERVAL).state_dict()
    with as_a_new_process():
        resumed = fp16_as_on_a_gpu()
        resumed_metrics = fit(dataclasses.replace(config, resume=True), resumed)
    with as_a_new_process():
        whole = fp16_as_on_a_gpu()
        whole_metrics = fit(dataclasses.replace(config, out=tmp_path / "whole"), whole)
    assert resumed.scaler.state_dict() == whole.scaler.state_dict()
    same_epochs(resumed_metrics, whole_metrics)


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("train: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


class Runs:
    """A pickle that runs code as it is loaded: it makes the folder `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_checkpoint_holding_more_than_plain_data_is_refused_unloaded(tiny_cache, tmp_path):
    args = train_args(tiny_cache, tmp_path, "simple_cnn", "--epochs", "1")
    run_cli(*args)
    state = tmp_path / "simple_cnn" / "last" / "custom_checkpoint_1.pkl"
    torch.save(Runs(tmp_path / "ran"), state)
    refused = run_cli(*args, "--resume", check=False)
    assert f"{state} holds more than plain data" in one_line_error(refused)
    assert not (tmp_path / "ran").exists()


def test_a_checkpoint_of_the_layout_before_save_state_is_refused_in_one_line(tiny_cache, tmp_path):
    """The files that `last/` held before: the weights, the optimiser's and scheduler's states, the progress."""
    last = tmp_path / "simple_cnn" / "last"
    last.mkdir(parents=True)
    model = build_model(ModelConfig("simple_cnn"))
    optimizer = torch.optim.Adam(model.parameters())
    save_file(model.state_dict(), last / "model.safetensors")
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, last / "optimizer.pt")
    (last / "progress.json").write_text(json.dumps({"epoch": 1, "history": [], "best_epoch": 1, "best_score": 0.5}))
    old = run_cli(*train_args(tiny_cache, tmp_path, "simple_cnn", "--epochs", "2", "--resume"), check=False)
    assert f"{last} is a checkpoint of an earlier clipcache" in one_line_error(old)


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


def test_model_all_with_pretrained_is_refused_before_anything_trains(tiny_cache, tmp_path):
    result = run_cli(*train_args(tiny_cache, tmp_path / "r", "all", "--pretrained"), check=False)
    assert "simple_cnn has no pretrained weights" in one_line_error(result)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("model", "extra", "says"),
    [
        ("timm/no_such_net", (), "timm has no model 'no_such_net'"),
        ("resnet18", ("--temporal", "lstm"), "--temporal is for timm/NAME models: resnet18's head is part of it"),
        ("all", ("--temporal", "mean"), "--temporal is for timm/NAME models: simple_cnn's head is part of it"),
    ],
)
def test_a_model_the_registry_cannot_build_is_refused_before_anything_trains(tiny_cache, tmp_path, model, extra, says):
    result = run_cli(*train_args(tiny_cache, tmp_path / "r", model, *extra), check=False)
    assert says in one_line_error(result)
    assert not (tmp_path / "r").exists()


@contextlib.contextmanager
def hub(kind: str) -> Iterator[dict[str, str]]:
    """The environment of a machine that cannot have timm's weights: offline mode, or a Hub on 127.0.0.1 that
    takes connections and never answers (as a network that drops them does)."""
    if kind == "offline":
        yield {"HF_HUB_OFFLINE": "1"}
        return
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        yield {"HF_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}"}


CANNOT_HAVE = [("train.run", "offline"), ("train.run", "silent"), ("train.features", "offline")]  # (command, hub)
PRETRAINED = {  # a command asking for resnet18's ImageNet weights: train/run.py and train.features
    "train.run": lambda cache, out: train_args(cache, out / "r", "resnet18", "--pretrained"),
    "train.features": lambda cache, out: ["train.features", str(cache), "--backbone", "resnet18", "--pretrained"],
}


@pytest.mark.slow
@pytest.mark.parametrize(("command", "kind"), CANNOT_HAVE)
def test_pretrained_weights_that_cannot_be_had_end_at_once_in_one_line(tiny_cache, tmp_path, command, kind):
    """Where huggingface_hub retried for about 50 s (minutes, for a Hub that never answers) and raised a traceback:
    one request at most, then one line naming the way to train without network, before any work."""
    args, hf_home = PRETRAINED[command](tiny_cache, tmp_path), str(tmp_path / "hf")  # an empty cache
    with hub(kind) as environment:
        result = run_process(*args, check=False, env={"HF_HOME": hf_home, **environment})
    assert result.returncode == 2, result.stderr
    start = {"train.run": "train", "train.features": "features"}[command]
    line = one_line(result.stderr, f"{start}: error: --pretrained: resnet18's pretrained weights (timm/resnet18")
    assert "pass --weights FILE" in line
    assert ("HF_HUB_OFFLINE is set" in line) == (kind == "offline")
    assert not (tmp_path / "r").exists()


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
@pytest.mark.parametrize("size", [3 * 2**20, 5 * 2**20], ids=["full-at-the-weights", "full-at-the-optimizer"])
def test_a_full_disk_ends_with_one_line_and_resume_finishes_once_space_is_freed(tiny_cache, small_disk, size):
    # best.safetensors and the checkpoint's weights take 1.7 MB each, its optimiser's state 3.4 MB: the disk fills
    # as safetensors writes the weights, or as torch.save writes the optimiser's state, whose errors differ.
    small_disk.resize(size)
    args = train_args(tiny_cache, small_disk.path / "run", "simple_cnn", "--epochs", "2")
    result = run_cli(*args, check=False)
    assert result.returncode == 4, result.stderr
    one_line(result.stderr, f"train: error: no space left on the device of {small_disk.path / 'run'}: ")
    small_disk.resize(64 * 2**20)
    run_cli(*args, "--resume")
    assert [e["epoch"] for e in read_metrics(small_disk.path / "run", "simple_cnn")["history"]] == [1, 2]
