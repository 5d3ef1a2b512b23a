"""Explanations of the seed's three trained models and a timm ViT on clips of the tiny store and on a real video."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_broken
from matplotlib.image import imread

from cache import open_store
from train import explain
from train.explanation import explain as explain_clip
from train.inference import TrainedModel
from train.models import SEED_MODELS


def stored_clips(cache: Path, count: int) -> tuple[list[int], np.ndarray]:
    with open_store(cache) as store:
        rows = store.rows()[:count].tolist()
        return rows, store.read(rows)


@pytest.mark.slow
@pytest.mark.parametrize("model", [*SEED_MODELS, "timm/test_vit"])
def test_heatmaps_cover_every_frame_and_contributions_every_step(all_run, vit_run, tiny_cache, model):
    """A ViT's map is of its patch tokens, laid out on their grid; its clips are every 2nd frame."""
    trained = TrainedModel.load(vit_run if model.startswith("timm/") else all_run[0] / model)
    _, clips = stored_clips(tiny_cache, 3)
    for clip in clips:
        explanation = explain_clip(trained, clip)
        assert explanation.heatmap.shape == (trained.clip_frames, *clip.shape[1:3])
        assert np.isfinite(explanation.heatmap).all()
        assert explanation.heatmap.min() >= 0 and explanation.heatmap.max() <= 1
        assert explanation.contributions.shape == (trained.clip_frames,)
        assert np.isfinite(explanation.contributions).all() and np.abs(explanation.contributions).max() > 0
        assert explanation.probability == pytest.approx(trained.probabilities(clip[None])[0], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["simple_cnn", "resnet18"])
def test_each_frames_explanation_is_its_own(all_run, tiny_cache, model):
    # These heads pool over time, so reversing the frames must reverse the explanations: a heatmap or a
    # contribution that mixed frames up would not follow its frame.
    trained = TrainedModel.load(all_run[0] / model)
    _, clips = stored_clips(tiny_cache, 2)
    for clip in clips:
        forward, backward = explain_clip(trained, clip), explain_clip(trained, clip[::-1].copy())
        np.testing.assert_allclose(backward.heatmap, forward.heatmap[::-1], atol=1e-5)
        np.testing.assert_allclose(backward.contributions, forward.contributions[::-1], rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_heatmaps_come_back_at_the_clips_size_when_the_model_saw_smaller_frames(all_run, tiny_cache, tmp_path):
    # As `--frame-size` trains: the store's 32 x 32 frames reach simple_cnn (any size fits it) at 16 x 16.
    run = tmp_path / "simple_cnn"
    shutil.copytree(all_run[0] / "simple_cnn", run)
    config = json.loads((run / "config.json").read_text())
    config["frame_size"] = 16
    (run / "config.json").write_text(json.dumps(config))
    trained = TrainedModel.load(run)
    _, clips = stored_clips(tiny_cache, 1)
    assert trained.inputs(clips).shape[-2:] == (16, 16)
    heatmap = explain_clip(trained, clips[0]).heatmap
    assert heatmap.shape == clips.shape[1:4] and heatmap.min() >= 0 and heatmap.max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("model", SEED_MODELS)
def test_a_png_for_each_row(all_run, tiny_cache, tmp_path, model, capsys):
    rows, _ = stored_clips(tiny_cache, 2)
    argv = ["--run", str(all_run[0] / model), "--cache", str(tiny_cache), "--rows", *map(str, rows)]
    assert explain.main([*argv, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    pngs = [tmp_path / f"{model}_row{row}.png" for row in rows]
    assert printed == [*map(str, pngs), f"2 explanations in {tmp_path}"]
    for png in pngs:
        image = imread(png)
        assert image.ndim == 3 and min(image.shape[:2]) > 200


@pytest.mark.slow
def test_videos_are_explained_and_broken_ones_reported(all_run, demo_root, tmp_path):
    video = next(demo_root.glob("Celeb-real/*.mp4"))
    broken = sorted(write_broken(tmp_path / "broken"))[0]
    out = tmp_path / "out"
    argv = ["--run", str(all_run[0] / "effnet_lstm"), "--out", str(out), "--video", str(video)]
    result = run_cli("train.explain", *argv, str(tmp_path / "broken" / broken))
    png = out / f"effnet_lstm_{video.stem}.png"
    assert str(png) in result.stdout.splitlines() and imread(png).ndim == 3
    assert f"explain: cannot decode {tmp_path / 'broken' / broken}" in result.stderr
    assert sorted(path.name for path in out.iterdir()) == [png.name]


@pytest.mark.slow
def test_bad_arguments_exit_2_with_one_line(all_run, tiny_cache, tmp_path, capsys):
    run = ["--run", str(all_run[0] / "simple_cnn"), "--out", str(tmp_path / "out")]
    with open_store(tiny_cache) as store:
        rows = len(store)
    cases = {
        "--rows goes with --cache": ["--video", str(tmp_path / "a.mp4"), "--rows", "1"],
        "no such file": ["--video", str(tmp_path / "a.mp4")],
        "not a decoded clip": ["--cache", str(tiny_cache), "--rows", str(rows)],
        "no such store": ["--cache", str(tmp_path / "none.zarr"), "--rows", "0"],
    }
    for message, argv in cases.items():
        assert explain.main([*run, *argv]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("explain: error: ") and message in lines[0], lines
    assert not (tmp_path / "out").exists()
