"""DeeperForensics-1.0's distortions: each level does what its perturbation code does, measured on real frames."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import one_line, run_cli
from skimage import data

from cache import open_store
from cache.dataset import Phases
from train.data import UsageError, shard_feed, split_dataset
from train.inference import TrainedModel
from train.loop import run_evaluation
from train.metrics import video_scores
from train.perturb import (
    BLOCK_GREY,
    BLOCK_SIDE,
    CHROMA_UNIT,
    DISTORTIONS,
    LUMA,
    LUMA_UNIT,
    block_corners,
    clip_generator,
    gaussian_kernel,
    parse_perturb,
)
from train.robustness import PerturbedFeed, Variant

# perturbation/add_distortion_to_video.py, get_distortion_parameter
DEEPERFORENSICS_LEVELS = {
    "CS": [0.4, 0.3, 0.2, 0.1, 0.0],
    "CC": [0.85, 0.725, 0.6, 0.475, 0.35],
    "BW": [16, 32, 48, 64, 80],
    "GNC": [0.001, 0.002, 0.005, 0.01, 0.05],
    "GB": [7, 9, 13, 17, 21],
    "JPEG": [2, 3, 4, 5, 6],
    "VC": [30, 32, 35, 38, 40],
}


def photo_clip(frames: int = 4, side: int = 96) -> torch.Tensor:
    """A face photograph panning right: real texture, edges and colour."""
    face = data.astronaut()[24 : 24 + side, 180 : 180 + side + 3 * frames]
    return torch.from_numpy(np.stack([face[:, 3 * t : 3 * t + side] for t in range(frames)]))


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def apply(name: str, clip: torch.Tensor, level: int, seed: int = 0) -> np.ndarray:
    return DISTORTIONS[name](clip, level, generator(seed)).numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(255**2 / np.mean((a.astype(np.float64) - b) ** 2))


def test_every_level_is_deeperforensics_parameter():
    assert {d.code: list(d.parameters) for d in DISTORTIONS.values()} == DEEPERFORENSICS_LEVELS
    with pytest.raises(ValueError, match="1-5"):
        DISTORTIONS["contrast"](photo_clip(), 6, generator())


def deeperforensics_saturation(bgr: np.ndarray, factor: float) -> np.ndarray:
    """distortions.py's color_saturation, as it runs: OpenCV's float YCrCb of 0-255 values in studio swing,
    chroma scaled around 0.5, back, truncated."""
    ycc = cv2.cvtColor(bgr.astype(np.float32), cv2.COLOR_BGR2YCrCb)
    swing = np.array([219, 224, 224], np.float32)
    ycc = (ycc * swing + 16) / 255
    ycc[..., 1:] = 0.5 + (ycc[..., 1:] - 0.5) * factor
    return cv2.cvtColor((ycc * 255 - 16) / swing, cv2.COLOR_YCrCb2BGR).astype(np.uint8)


@pytest.mark.parametrize("level", [1, 3, 5])
def test_saturation_is_deeperforensics_chroma_scaling(level):
    clip = photo_clip()
    ours = apply("saturation", clip, level)
    factor = DISTORTIONS["saturation"].parameter(level)
    for frame, original in zip(ours, clip.numpy(), strict=True):
        reference = deeperforensics_saturation(original[..., ::-1], factor)[..., ::-1]
        difference = np.abs(frame.astype(int) - reference)
        assert difference.max() <= 1 and (difference > 0).mean() < 0.02


def test_saturation_level_5_leaves_grey_frames_at_the_pixels_luma():
    clip = photo_clip()
    grey = apply("saturation", clip, 5)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    luma = clip.numpy().astype(np.float64) @ np.array(LUMA)
    assert np.abs(grey[..., 0] - np.floor(luma)).max() <= 1


def test_contrast_scales_every_value_toward_black_and_truncates():
    values = torch.tensor([0, 1, 2, 100, 200, 255], dtype=torch.uint8)
    clip = values.view(1, 2, 1, 3).expand(2, 2, 1, 3).contiguous()
    assert apply("contrast", clip, 1)[0].ravel().tolist() == [0, 0, 1, 85, 170, 216]  # 0.85: 216.75 -> 216
    assert apply("contrast", clip, 5)[1].ravel().tolist() == [0, 0, 0, 35, 70, 89]  # 0.35: 89.25 -> 89


@pytest.mark.parametrize(("side", "level", "count"), [(224, 1, 16), (224, 5, 80), (512, 3, 96)])
def test_block_paints_the_levels_count_of_grey_8px_squares_per_frame(side, level, count):
    clip = torch.zeros((3, side, side, 3), dtype=torch.uint8)
    out = apply("block", clip, level, seed=7)
    corners = block_corners(clip, DISTORTIONS["block"].parameter(level), generator(7)).numpy()
    assert corners.shape == (3, count, 2)
    assert corners.min() >= 0 and corners.max() <= side - BLOCK_SIDE - 1  # randint(0, side - 1 - 8)
    expected = np.zeros_like(out)
    for frame, squares in zip(expected, corners, strict=True):
        for top, left in squares:
            frame[top : top + BLOCK_SIDE, left : left + BLOCK_SIDE] = BLOCK_GREY
    assert (out == expected).all()
    assert not (corners[0] == corners[1]).all()  # drawn anew for every frame
    assert (clip == 0).all()  # the clip itself is left as it was


@pytest.mark.parametrize("level", [1, 2, 3])
def test_noise_has_the_levels_variance_in_deeperforensics_ycbcr_scale(level):
    grey = torch.full((16, 64, 64, 3), 128, dtype=torch.uint8)
    rgb = apply("noise", grey, level).astype(np.float64) + 0.5  # truncation took half a level on average
    luma = rgb @ np.array(LUMA)
    # OpenCV's YCrCb: Cb = (B - Y) 0.564, Cr = (R - Y) 0.713; its scale's unit is LUMA_UNIT, CHROMA_UNIT grey levels
    measured = [
        np.var(luma) / LUMA_UNIT**2,
        np.var((rgb[..., 2] - luma) * 0.564) / CHROMA_UNIT**2,
        np.var((rgb[..., 0] - luma) * 0.713) / CHROMA_UNIT**2,
    ]
    assert measured == pytest.approx([DISTORTIONS["noise"].parameter(level)] * 3, rel=0.03)
    assert abs(luma.mean() - 128) < 0.2


def test_noise_level_1_is_a_luma_deviation_of_nine_grey_levels():
    rgb = apply("noise", torch.full((8, 64, 64, 3), 128, dtype=torch.uint8), 1).astype(np.float64)
    assert np.std(rgb @ np.array(LUMA)) == pytest.approx(9.39, rel=0.03)


@pytest.mark.parametrize("size", [7, 13, 21])
def test_blur_kernel_is_opencvs_of_sigma_a_sixth_of_its_size(size):
    expected = cv2.getGaussianKernel(size, size / 6).ravel()
    np.testing.assert_allclose(gaussian_kernel(size).numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("level", [1, 3, 5])
def test_blur_is_opencvs_gaussian_blur(level):
    clip = photo_clip()
    clip[:, 40, 40] = 255  # a single bright pixel, spread to the kernel's size and no further
    size = int(DISTORTIONS["blur"].parameter(level))
    ours = apply("blur", clip, level)
    for frame, original in zip(ours, clip.numpy(), strict=True):
        reference = cv2.GaussianBlur(original, (size, size), size / 6)
        assert np.abs(frame.astype(int) - reference).max() <= 1


def test_blur_spreads_a_bright_pixel_over_the_kernel_and_no_further():
    clip = torch.zeros((1, 64, 64, 3), dtype=torch.uint8)
    clip[0, 32, 32] = 255
    for level in (1, 5):
        size = int(DISTORTIONS["blur"].parameter(level))
        taps = gaussian_kernel(size)
        spread = torch.outer(taps, taps) * 255
        out = DISTORTIONS["blur"](clip, level, generator()).numpy()[0, ..., 0]
        half = size // 2
        np.testing.assert_array_equal(out[32 - half : 33 + half, 32 - half : 33 + half], np.floor(spread.numpy() + 0.5))
        outside = out.copy()
        outside[32 - half : 33 + half, 32 - half : 33 + half] = 0
        assert (outside == 0).all()


@pytest.mark.parametrize("level", [1, 2, 5])
def test_jpeg_is_deeperforensics_shrink_and_enlarge(level):
    clip = photo_clip()
    factor = int(DISTORTIONS["jpeg"].parameter(level))
    ours = apply("jpeg", clip, level).astype(int)
    side = clip.shape[1]
    reference = np.stack([cv2.resize(cv2.resize(f, (side // factor,) * 2), (side, side)) for f in clip.numpy()])
    difference = np.abs(ours - reference)
    assert difference.max() <= 2 and difference.mean() < 0.3  # OpenCV's fixed-point arithmetic on uint8


def test_stronger_levels_lose_more():
    clip = photo_clip(frames=8)
    for name in ("jpeg", "blur", "video"):
        quality = [psnr(apply(name, clip, level), clip.numpy()) for level in (1, 3, 5)]
        assert quality == sorted(quality, reverse=True), name


def test_video_compresses_at_the_levels_crf_and_keeps_every_frame_in_order():
    clip = photo_clip(frames=12)
    at_30, at_40 = apply("video", clip, 1), apply("video", clip, 5)
    assert at_30.shape == at_40.shape == clip.shape
    assert psnr(at_30, clip.numpy()) > 27 and psnr(at_40, clip.numpy()) < psnr(at_30, clip.numpy()) - 3
    for t, frame in enumerate(at_30):
        nearest = min(range(len(clip)), key=lambda u: np.abs(frame.astype(int) - clip[u].numpy()).mean())
        assert nearest == t


def test_video_keeps_odd_sides():
    clip = photo_clip(frames=3)[:, :33, :47]
    out = apply("video", clip, 1)
    assert out.shape == (3, 33, 47, 3) and psnr(out, clip.numpy()) > 25


@pytest.mark.parametrize("name", ["block", "noise"])
def test_same_seed_same_draws_other_row_other_draws(name):
    clip = photo_clip()
    first, again = (DISTORTIONS[name](clip, 3, clip_generator(0, name, 3, 5, clip.device)) for _ in range(2))
    other = DISTORTIONS[name](clip, 3, clip_generator(0, name, 3, 6, clip.device))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_every_distortion_returns_a_uint8_clip_of_the_same_shape_on_its_device():
    clip = photo_clip(frames=2, side=48)
    for name, distortion in DISTORTIONS.items():
        out = distortion(clip, 2, generator())
        assert out.dtype == torch.uint8 and out.shape == clip.shape and out.device == clip.device, name


def test_parse_perturb_takes_all_or_names_and_refuses_others_in_one_line():
    assert parse_perturb("all") == ["saturation", "contrast", "block", "noise", "blur", "jpeg", "video"]
    assert parse_perturb("contrast,jpeg,contrast") == ["contrast", "jpeg"]
    with pytest.raises(UsageError) as refused:
        parse_perturb("contrast,sharpen")
    message = str(refused.value)
    assert "\n" not in message and "sharpen" in message
    assert "saturation,contrast,block,noise,blur,jpeg,video" in message


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_on_a_gpu_the_torch_distortions_stay_there_and_agree_with_the_cpu():
    clip = photo_clip(frames=4)
    device = torch.device("cuda")
    for name, distortion in DISTORTIONS.items():
        out = distortion(clip.to(device), 3, torch.Generator(device).manual_seed(0))
        assert out.device.type == "cuda" and out.shape == clip.shape, name
        if name not in ("block", "noise"):  # a GPU generator draws other numbers
            cpu = distortion(clip, 3, generator()).int()
            assert (out.cpu().int() - cpu).abs().max() <= 1, name


def test_a_clean_perturbed_feed_gives_the_phase_clips_of_the_phased_dataset(tiny_cache):
    whole = split_dataset([tiny_cache], "test", False)
    phases = Phases.of(whole.phases.stored, 2)
    phased = split_dataset([tiny_cache], "test", False, clip_frames=2)
    accelerator = Accelerator(cpu=True)
    clean = PerturbedFeed(shard_feed(whole, 2, accelerator, even=True), phases, Variant(), seed=0)
    expected = shard_feed(phased, 4, accelerator, even=True)
    assert len(clean.dataset) == len(phased) and phases.count == 2
    for (clips, labels, rows), (want, want_labels, want_rows) in zip(clean, expected, strict=True):
        assert torch.equal(clips, want) and torch.equal(labels, want_labels) and torch.equal(rows, want_rows)


def test_a_perturbed_feed_scores_the_clips_distorted_by_hand(tiny_cache, all_run):
    run, _ = all_run
    trained = TrainedModel.load(run / "simple_cnn", torch.device("cpu"))
    accelerator = Accelerator(cpu=True)
    whole = split_dataset([tiny_cache], "test", False)
    feed = shard_feed(whole, 3, accelerator, even=True)
    with open_store(tiny_cache) as store:
        videos = store.rows("test")
        clips = store.read(videos)
    clean = trained.probabilities(clips)
    for level in (1, 5):
        variant = Variant("contrast", level)
        scored = run_evaluation(
            trained.model, PerturbedFeed(feed, whole.phases, variant, 3), None, trained.transform, accelerator
        )
        by_hand = [variant.distort(torch.from_numpy(c), int(r), 3).numpy() for c, r in zip(clips, videos, strict=True)]
        expected = trained.probabilities(np.stack(by_hand))
        np.testing.assert_allclose(video_scores(scored.rows, scored.labels, scored.probs)[1], expected, rtol=1e-5)
        assert np.abs(expected - clean).max() > 1e-3  # the distortion reached the model


def read_csv(path: Path) -> list[dict]:
    with path.open() as file:
        return list(csv.DictReader(file))


def test_evaluate_perturb_writes_the_robustness_table_beside_the_clean_figure(tiny_cache, all_run, tmp_path):
    run, _ = all_run
    args = ["train.evaluate", "--run", str(run), "--cache", str(tiny_cache), "--out", str(tmp_path)]
    run_cli(*args, "--perturb", "contrast,jpeg")
    assert {p.name for p in tmp_path.glob("robustness.*")} == {f"robustness.{s}" for s in ("md", "csv", "json", "png")}
    rows = read_csv(tmp_path / "robustness.csv")
    assert list(rows[0])[:4] == ["model", "perturbation", "level", "roc_auc"]
    variants = [("clean", "0")] + [(name, str(level)) for name in ("contrast", "jpeg") for level in range(1, 6)]
    models = ["simple_cnn", "resnet18", "effnet_lstm"]
    assert [(r["model"], r["perturbation"], r["level"]) for r in rows] == [(m, *v) for m in models for v in variants]
    cross = json.loads((tmp_path / "cross_dataset.json").read_text())["models"]
    for r in rows:
        clean = cross[r["model"]]["tiny"]["roc_auc"]
        assert float(r["clean_roc_auc"]) == clean
        if r["perturbation"] == "clean":
            assert float(r["roc_auc"]) == clean and int(r["videos"]) == cross[r["model"]]["tiny"]["n"]
    table = (tmp_path / "robustness.md").read_text()
    assert "| simple_cnn | jpeg |" in table and "not to the source video before cropping" in table


def test_evaluate_refuses_an_unknown_distortion_in_one_line_before_scoring(tiny_cache, all_run, tmp_path):
    run, _ = all_run
    args = ["train.evaluate", "--run", str(run), "--cache", str(tiny_cache), "--out", str(tmp_path)]
    result = run_cli(*args, "--perturb", "jpeg,sharpen", check=False)
    assert result.returncode == 2
    assert "sharpen" in one_line(result.stderr, "evaluate: error: --perturb jpeg,sharpen: unknown distortion")
    assert not list(tmp_path.iterdir())
