"""The field's protocol: stores of more frames than a clip, video-level scores, several stores in one run, and
models scored on stores they never saw."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import build_both_formats, one_line, run_cli, train_args

from cache import open_store
from cache.dataset import ClipDataset, StoreUnion
from train.data import shard_feed, train_sampler
from train.explanation import explain
from train.inference import TrainedModel
from train.loop import run_evaluation
from train.metrics import video_scores

STORED, CLIP = 8, 4  # the protocol's 32 stored frames and 16-frame clips, scaled down for a CPU


@pytest.fixture(scope="module")
def phased(demo_root, tmp_path_factory) -> dict[str, Path]:
    """The demo videos as 8-frame 32 x 32 clips, in Zarr and HDF5."""
    folder = tmp_path_factory.mktemp("phased")
    return build_both_formats(demo_root, folder, "phased", "--frames", str(STORED), "--size", "32", "--workers", "1")


@pytest.fixture(scope="module")
def twin(phased, tmp_path_factory) -> Path:
    """A second store holding the same clips under another name: what one model scores on it must agree."""
    path = tmp_path_factory.mktemp("twin") / "twin.zarr"
    shutil.copytree(phased["zarr"], path)
    return path


def split_videos(cache: Path, split: str) -> np.ndarray:
    with open_store(cache) as store:
        return store.rows(split)


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_a_phase_clip_holds_every_kth_stored_frame_from_its_phase(phased, fmt):
    dataset = ClipDataset(phased[fmt], "train", clip_frames=CLIP)
    k = STORED // CLIP
    assert len(dataset) == k * dataset.videos and dataset.sample_shape[0] == CLIP
    items = np.array([0, 1, 2 * k + 1, len(dataset) - 1])
    out = torch.empty((len(items), *dataset.sample_shape), dtype=torch.uint8)
    dataset.read_into(items, out)
    with open_store(phased[fmt]) as store:
        whole = store.read(dataset.rows[items])
    for i, item in enumerate(items):
        np.testing.assert_array_equal(out[i].numpy(), whole[i, item % k :: k])
    np.testing.assert_array_equal(dataset[1][0].numpy(), whole[1, 1::k])


def test_clip_frames_that_do_not_divide_the_stored_frames_are_refused(phased, tmp_path):
    result = run_cli(*train_args(phased["zarr"], tmp_path, "simple_cnn", "--clip-frames", "3"), check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"train: error: --clip-frames 3 does not divide the store's {STORED} frames per video"
    )


def test_each_epoch_takes_one_clip_of_each_video_at_a_phase_drawn_anew(phased):
    dataset = ClipDataset(phased["zarr"], "train", clip_frames=CLIP)
    k = STORED // CLIP
    seen = np.zeros((dataset.videos, k), bool)
    for epoch in range(1, 21):
        order = np.array(train_sampler(dataset, "weights", 42, epoch))
        assert sorted(order // k) == list(range(dataset.videos)), "one clip of each video"
        assert train_sampler(dataset, "weights", 42, epoch) == order.tolist(), "an epoch's draw is repeatable"
        seen[order // k, order % k] = True
    assert seen.all(), "over 20 epochs every video showed every phase"


def test_a_videos_score_is_the_mean_of_its_clips():
    labels, scores = video_scores(
        np.array([7, 3, 7, 3, 9]), np.array([1, 0, 1, 0, 1]), np.array([0.2, 0.5, 0.6, 0.1, 1])
    )
    np.testing.assert_array_equal(labels, [0, 1, 1])
    np.testing.assert_allclose(scores, [0.3, 0.4, 1.0])


@pytest.fixture(scope="module")
def phased_run(phased, twin, tmp_path_factory) -> tuple[Path, str]:
    """simple_cnn trained on 4-frame clips of the 8-frame store, then scored on its twin (--eval-cache)."""
    out = tmp_path_factory.mktemp("phased-run")
    args = train_args(phased["zarr"], out, "simple_cnn", "--epochs", "2", "--clip-frames", str(CLIP))
    return out, run_cli(*args, "--eval-cache", str(twin)).stdout


@pytest.mark.slow
def test_a_store_of_more_frames_trains_on_clips_and_counts_each_video_once(phased, phased_run):
    run, _ = phased_run
    metrics = json.loads((run / "simple_cnn" / "metrics.json").read_text())
    assert metrics["clip_frames"] == CLIP and metrics["config"]["clip_frames"] == CLIP
    assert all(epoch["train_clips"] == len(split_videos(phased["zarr"], "train")) for epoch in metrics["history"])
    for split in ("val", "test"):
        final = metrics["final"][split]
        assert final["n"] == len(split_videos(phased["zarr"], split)), "each video counted once"
        assert final["clips"] == STORED // CLIP * final["n"]
        assert final["clip_roc_auc"] is not None and 0 <= final["roc_auc"] <= 1


@pytest.mark.slow
def test_eval_cache_scores_a_store_as_the_run_scores_its_own_test_split(phased_run):
    run, stdout = phased_run
    table = json.loads((run / "cross_dataset.json").read_text())
    own, twin = table["models"]["simple_cnn"]["phased"], table["models"]["simple_cnn"]["twin"]
    assert own.pop("confusion") == twin.pop("confusion")
    for key in ("n", "roc_auc", "frame_roc_auc", "average_precision", "eer", "balanced_accuracy"):
        assert own[key] == pytest.approx(twin[key]), key
    assert "| model | phased AUC |" in (run / "cross_dataset.md").read_text() and "twin AUC" in stdout


@pytest.mark.slow
def test_prediction_scores_a_video_as_the_mean_of_its_clips_as_evaluation_does(phased, phased_run, demo_root, tmp_path):
    run, _ = phased_run
    trained = TrainedModel.load(run / "simple_cnn")
    accelerator = Accelerator(cpu=True)
    dataset = ClipDataset(phased["zarr"], "test", with_rows=True, clip_frames=trained.clip_frames)
    scored = run_evaluation(
        trained.model, shard_feed(dataset, 3, accelerator, True), None, trained.transform, accelerator
    )
    _, scores = scored.videos()
    with open_store(phased["zarr"]) as store:
        paths = [demo_root / store.path[row] for row in np.unique(scored.rows)]
    table = tmp_path / "predictions.csv"
    run_cli("train.predict", "--run", str(run / "simple_cnn"), *map(str, paths), "--csv", str(table))
    with open(table, newline="") as file:
        predicted = [float(row["probability"]) for row in csv.DictReader(file)]
    np.testing.assert_allclose(predicted, scores, atol=1e-5)


@pytest.mark.slow
def test_evaluate_writes_the_cross_dataset_table_at_the_runs_threshold(phased, twin, phased_run, tmp_path):
    run, _ = phased_run
    result = run_cli(
        "train.evaluate", "--run", str(run), "--cache", str(phased["zarr"]), str(twin), "--out", str(tmp_path)
    )
    for suffix in ("md", "csv", "json", "png"):
        assert (tmp_path / f"cross_dataset.{suffix}").stat().st_size > 100, suffix
    table = json.loads((tmp_path / "cross_dataset.json").read_text())
    metrics = json.loads((run / "simple_cnn" / "metrics.json").read_text())
    for store in ("phased", "twin"):
        scored = table["models"]["simple_cnn"][store]
        assert scored["threshold"] == metrics["threshold"], "the run's own threshold, never one chosen here"
        for key in ("n", "roc_auc", "frame_roc_auc", "balanced_accuracy", "eer"):
            assert scored[key] == pytest.approx(metrics["final"]["test"][key]), key
        assert 0 <= scored["frame_roc_auc"] <= 1
    assert "simple_cnn" in result.stdout and "threshold each model chose" in table["note"]
    header = (tmp_path / "cross_dataset.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == [
        "model",
        "phased AUC",
        "phased frame AUC",
        "phased AP",
        "phased EER",
        "phased bal. acc",
        "phased videos",
    ]


@pytest.mark.slow
def test_evaluate_on_a_full_disk_ends_with_one_line_and_writes_the_table_once_space_is_freed(
    phased, phased_run, small_disk
):
    run, _ = phased_run
    filler = small_disk.fill()
    out = small_disk.path / "table"
    args = ("train.evaluate", "--run", str(run), "--cache", str(phased["zarr"]), "--out", str(out))
    result = run_cli(*args, check=False)
    assert result.returncode == 4
    line = one_line(result.stderr, f"evaluate: error: no space left on the device of {out}: ")
    assert line.endswith("no complete table was written; run the same command again once space is freed")
    filler.unlink()
    run_cli(*args)
    assert all((out / f"cross_dataset.{suffix}").stat().st_size for suffix in ("md", "csv", "png"))
    assert json.loads((out / "cross_dataset.json").read_text())["models"]["simple_cnn"]["phased"]["n"] > 0


@pytest.mark.slow
def test_evaluate_refuses_a_store_of_other_preprocessing(phased_run, tiny_cache, tmp_path):
    run, _ = phased_run
    result = run_cli("train.evaluate", "--run", str(run), "--cache", str(tiny_cache), check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        f"evaluate: error: {tiny_cache}: its clips were made otherwise than simple_cnn's training clips: "
        f"frames {STORED} against 4"
    ]


@pytest.mark.slow
def test_several_stores_train_as_one_and_each_test_split_is_scored_apart(phased, twin, tmp_path):
    args = train_args(phased["zarr"], tmp_path, "simple_cnn", "--epochs", "1", "--cache", str(twin))
    stdout = run_cli(*args).stdout
    metrics = json.loads((tmp_path / "simple_cnn" / "metrics.json").read_text())
    train_videos = len(split_videos(phased["zarr"], "train"))
    assert metrics["history"][0]["train_clips"] == metrics["history"][0]["train_unique_clips"] == 2 * train_videos
    assert metrics["final"]["val"]["n"] == 2 * len(split_videos(phased["zarr"], "val"))
    assert metrics["final"]["test"] is None, "data sets are not pooled into one test figure"
    by_store = metrics["final"]["test_by_store"]
    assert list(by_store) == ["phased", "twin"] and by_store["phased"] == by_store["twin"]
    assert by_store["phased"]["n"] == len(split_videos(phased["zarr"], "test"))
    assert "phased AUC" in stdout and (tmp_path / "cross_dataset.md").is_file()


def test_stores_of_other_preprocessing_are_not_trained_on_together(phased, tiny_cache, tmp_path):
    args = train_args(phased["zarr"], tmp_path, "simple_cnn", "--cache", str(tiny_cache))
    result = run_cli(*args, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"train: error: {tiny_cache} and {phased['zarr']} hold clips of other preprocessing: frames {STORED} against 4"
    )


def test_a_union_reads_each_stores_clips_and_keeps_rows_apart(phased, twin):
    parts = [ClipDataset(path, "val", clip_frames=CLIP) for path in (phased["zarr"], twin)]
    union = StoreUnion(parts)
    assert len(union) == 2 * len(parts[0]) and len(set(union.rows.tolist())) == 2 * parts[0].videos
    items = np.array([len(parts[0]) + 1, 0, 1, len(parts[0])])  # mixed: the twin's, ours, ours, the twin's
    out = torch.empty((len(items), *union.sample_shape), dtype=torch.uint8)
    union.read_into(items, out)
    alone = torch.empty((2, *union.sample_shape), dtype=torch.uint8)
    parts[0].read_into(np.array([1, 0]), alone)
    np.testing.assert_array_equal(out[0].numpy(), alone[0].numpy())
    np.testing.assert_array_equal(out[1].numpy(), alone[1].numpy())
    np.testing.assert_array_equal(out[3].numpy(), alone[1].numpy())


@pytest.mark.slow
def test_explain_shows_the_first_clip_and_the_videos_probability(phased, phased_run):
    trained = TrainedModel.load(phased_run[0] / "simple_cnn")
    with open_store(phased["zarr"]) as store:
        whole = store.read(store.rows("test")[:1])[0]
    explanation = explain(trained, whole)
    assert explanation.clips == STORED // CLIP and explanation.heatmap.shape == (CLIP, *whole.shape[1:3])
    assert explanation.contributions.shape == (CLIP,)
    clips = [whole[0::2], whole[1::2]]
    assert explanation.probability == pytest.approx(trained.probabilities(whole[None])[0])
    assert explanation.probability == pytest.approx(float(np.mean([trained.probabilities(c[None])[0] for c in clips])))


@pytest.mark.slow
def test_an_eval_store_named_as_a_training_store_gets_a_column_of_its_own(phased, twin, tmp_path):
    namesake = tmp_path / "other" / "phased.zarr"
    shutil.copytree(twin, namesake)
    args = train_args(phased["zarr"], tmp_path / "run", "simple_cnn", "--epochs", "1", "--clip-frames", str(CLIP))
    run_cli(*args, "--eval-cache", str(namesake))
    columns = json.loads((tmp_path / "run" / "cross_dataset.json").read_text())["models"]["simple_cnn"]
    assert list(columns) == [str(phased["zarr"]), str(namesake)]
    assert columns[str(phased["zarr"])]["roc_auc"] == pytest.approx(columns[str(namesake)]["roc_auc"])


def test_a_store_given_twice_is_refused(phased, tmp_path):
    args = train_args(phased["zarr"], tmp_path, "simple_cnn", "--cache", str(phased["zarr"]))
    result = run_cli(*args, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "train: error: --cache: a store is given twice"
