"""Prediction as users run it: the demo's real videos and broken files, through a model trained on their store."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import run_cli, write_broken
from torch import nn

from cache import open_store
from cache.dataset import ClipDataset
from cache.store import clip_settings
from train import predict
from train.data import UsageError, shard_feed
from train.evaluation import score_store
from train.inference import TrainedModel, decode_videos
from train.loop import run_evaluation
from train.prediction import CSV_COLUMNS


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("broken")
    write_broken(folder)
    return folder


@pytest.fixture(scope="module")
def predicted(all_run, demo_root, broken, tmp_path_factory) -> tuple:
    """`train.predict` on the demo folder and the broken files: (process, CSV rows by path)."""
    table = tmp_path_factory.mktemp("predict") / "predictions.csv"
    run, _ = all_run
    result = run_cli(
        "train.predict", "--run", str(run / "simple_cnn"), str(demo_root), str(broken), "--csv", str(table)
    )
    with open(table, newline="") as file:
        rows = list(csv.DictReader(file))
    return result, {row["path"]: row for row in rows}


def source_videos(cache: Path, demo_root: Path) -> dict[int, Path]:
    """Store row -> the video it was decoded from."""
    with open_store(cache) as store:
        return {int(row): demo_root / store.path[row] for row in store.rows()}


def trainer_probabilities(cache: Path, trained: TrainedModel) -> dict[int, float]:
    """Store row -> fake probability, by the trainer's own evaluation of the stored clips."""
    accelerator = Accelerator(cpu=True)
    feed = shard_feed(ClipDataset(cache), 4, accelerator, True)
    criterion = nn.CrossEntropyLoss(reduction="none")
    result = run_evaluation(trained.model, feed, criterion, trained.transform, accelerator)
    return dict(zip(result.rows.tolist(), result.probs.tolist(), strict=True))


@pytest.mark.slow
def test_prediction_is_the_trainers_evaluation_of_the_stored_clip(all_run, tiny_cache, demo_root, predicted):
    result, rows = predicted
    trained = TrainedModel.load(all_run[0] / "simple_cnn")
    expected = trainer_probabilities(tiny_cache, trained)
    videos = source_videos(tiny_cache, demo_root)
    assert len(expected) == len(videos) > 10
    for row, video in videos.items():
        printed = rows[str(video)]
        probability = float(printed["probability"])
        assert probability == pytest.approx(expected[row], abs=1e-4), video
        assert printed["verdict"] == ("fake" if probability >= trained.threshold else "real")
        assert f"{probability:6.4f}  {printed['verdict']:<5}  {video}" in result.stdout.splitlines()


def test_decoding_a_video_again_gives_its_stored_clip(tiny_cache, demo_root):
    videos = source_videos(tiny_cache, demo_root)
    rows, paths = list(videos), list(videos.values())
    outcomes = sorted(decode_videos(paths, clip_settings(tiny_cache), workers=2), key=lambda o: o.row)
    with open_store(tiny_cache) as store:
        stored = store.read(rows)
        for outcome, clip, indices in zip(outcomes, stored, store.frame_index[rows], strict=True):
            assert outcome.error == ""
            np.testing.assert_array_equal(outcome.clip, clip)
            np.testing.assert_array_equal(outcome.indices, indices)


@pytest.mark.slow
def test_broken_files_are_rows_with_their_error(predicted, broken):
    result, rows = predicted
    assert result.returncode == 0
    names = sorted(path.name for path in broken.iterdir())
    assert len(names) == 4
    for name in names:
        row = rows[str(broken / name)]
        assert row["probability"] == "" and row["verdict"] == "" and row["error"], name
        assert f"error  {broken / name}: {row['error']}" in result.stdout
    fake, real = (sum(row["verdict"] == kind for row in rows.values()) for kind in ("fake", "real"))
    assert result.stdout.splitlines()[-1] == f"{len(rows)} videos: {fake} fake, {real} real, 4 error"


@pytest.mark.slow
def test_the_csv_has_one_row_per_video_with_its_columns(predicted, demo_root, broken):
    _, rows = predicted
    videos = [*demo_root.rglob("*.mp4"), *broken.iterdir()]
    assert sorted(rows) == sorted(map(str, videos))
    assert all(list(row) == list(CSV_COLUMNS) for row in rows.values())


def one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("predict: error: "), result.stderr
    return lines[0]


@pytest.mark.slow
def test_a_missing_run_exits_2_with_one_line(demo_root, tmp_path):
    result = run_cli("train.predict", "--run", str(tmp_path / "none"), str(demo_root), check=False)
    assert "no config.json" in one_line_error(result)


@pytest.mark.slow
def test_bad_arguments_exit_2_with_one_line(all_run, demo_root, tmp_path, capsys):
    run = str(all_run[0] / "simple_cnn")
    (tmp_path / "empty").mkdir()
    cases = {
        "no such file or folder": [str(tmp_path / "missing.mp4")],
        "no video files": [str(tmp_path / "empty")],
        "does not exist": [str(demo_root), "--csv", str(tmp_path / "nowhere" / "out.csv")],
        "at least 1": [str(demo_root), "--workers", "0"],
    }
    for message, argv in cases.items():
        assert predict.main(["--run", run, *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("predict: error: ") and message in lines[0], lines


@pytest.mark.slow
def test_the_run_records_how_its_clips_were_made(all_run, tiny_cache, tmp_path):
    run = all_run[0] / "simple_cnn"
    settings = clip_settings(tiny_cache)
    assert json.loads((run / "metrics.json").read_text())["clip"] == settings.as_dict()
    assert TrainedModel.load(run).clip == settings
    # A run from before config.json and the clip settings were recorded reads them from its store, while the store
    # is there.
    old = tmp_path / "simple_cnn"
    shutil.copytree(run, old)
    (old / "config.json").unlink()
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["clip"]
    (old / "metrics.json").write_text(json.dumps(metrics))
    assert TrainedModel.load(old).clip == settings
    metrics["config"]["cache"] = str(tmp_path / "gone.zarr")
    (old / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(UsageError, match="does not record its clip settings"):
        TrainedModel.load(old)


@pytest.mark.slow
def test_a_run_folder_alone_rebuilds_the_model_it_trained(vit_run, tiny_cache, demo_root, tmp_path):
    """config.json and best.safetensors are all that prediction and evaluation need. A timm model with its own mean
    and std (not ImageNet's), a ViT built for the run's frame size, an attention head over 2-frame clips of every 2nd
    stored frame: scored from a copy of those two files, it gives the trainer's own test metrics, and `predict` on the
    videos gives its probabilities of their stored clips."""
    folder = vit_run
    metrics = json.loads((folder / "metrics.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    assert (config["model"], config["temporal"], config["dropout"]) == ("timm/test_vit", "attention", 0.5)
    assert config["mean"] == config["std"] == [0.5, 0.5, 0.5]
    assert (config["frame_size"], config["clip_frames"], config["stride"]) == (32, 2, 2)
    assert config["threshold"] == metrics["threshold"]
    assert config["clip"] == clip_settings(tiny_cache).as_dict() and config["clip"]["resize"] == "squash"

    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("config.json", "best.safetensors"):
        shutil.copy(folder / name, alone / name)
    trained = TrainedModel.load(alone, torch.device("cpu"))
    assert trained.transform.mean == (0.5, 0.5, 0.5) and trained.clip_frames == 2
    scored = score_store(trained, tiny_cache, "test", Accelerator(cpu=True), 4, 0)
    test = metrics["final"]["test"]
    for key, value in scored.items():
        if isinstance(value, float):
            assert value == pytest.approx(test[key], abs=1e-6), key

    table = tmp_path / "predictions.csv"
    run_cli("train.predict", "--run", str(alone), str(demo_root), "--csv", str(table))
    with open(table, newline="") as file:
        printed = {row["path"]: float(row["probability"]) for row in csv.DictReader(file)}
    videos = source_videos(tiny_cache, demo_root)
    with open_store(tiny_cache) as store:
        rows = sorted(videos)
        expected = trained.probabilities(store.read(rows))
    for row, probability in zip(rows, expected, strict=True):
        assert printed[str(videos[row])] == pytest.approx(probability, abs=1e-4), videos[row]
