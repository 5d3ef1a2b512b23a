"""Clip preprocessing: exact normalisation, and augmentations drawn per clip, shared by its frames."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from train.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentRanges,
    ClipAugment,
    ClipTransform,
    augment,
    normalize,
    per_channel,
    to_unit_float,
)

B, T, H, W = 6, 4, 24, 32


def random_clips(seed: int = 0, batch: int = B) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, T, H, W, 3), dtype=torch.uint8, generator=generator)


def manual_normalise(clips: torch.Tensor) -> torch.Tensor:
    out = torch.empty(clips.shape[0], clips.shape[1], 3, clips.shape[2], clips.shape[3])
    for c in range(3):
        out[:, :, c] = (clips[..., c].float() / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    return out


def test_eval_transform_is_plain_normalisation():
    clips = random_clips()
    out = ClipTransform(train=False, seed=0)(clips)
    assert out.dtype == torch.float32 and out.shape == (B, T, 3, H, W)
    torch.testing.assert_close(out, manual_normalise(clips))
    torch.testing.assert_close(ClipTransform(train=False, seed=1)(clips), out, rtol=0, atol=0)


def test_channels_last_keeps_values_and_shape():
    clips = random_clips()
    out = ClipTransform(channels_last=True)(clips)
    assert out.shape == (B, T, 3, H, W)
    assert out.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, manual_normalise(clips))


def test_rejects_wrong_input():
    with pytest.raises(ValueError, match="uint8"):
        ClipTransform()(torch.zeros(1, T, H, W, 3))
    with pytest.raises(ValueError, match="uint8"):
        ClipTransform()(torch.zeros(1, T, 3, H, W, dtype=torch.uint8))


def test_train_transform_treats_all_frames_of_a_clip_alike():
    frame = random_clips(batch=B)[:, :1]
    clips = frame.expand(B, T, H, W, 3).contiguous()
    out = ClipTransform(train=True, seed=0)(clips)
    assert out.dtype == torch.float32 and out.shape == (B, T, 3, H, W)
    for t in range(1, T):
        torch.testing.assert_close(out[:, t], out[:, 0], rtol=0, atol=0)
    assert not torch.allclose(out, manual_normalise(clips))


def test_train_transform_is_reproducible_and_varies():
    clips = random_clips()
    same = clips[:1].expand(B, T, H, W, 3).contiguous()  # one clip repeated: only the draws differ
    first = ClipTransform(train=True, seed=7)(same)
    torch.testing.assert_close(ClipTransform(train=True, seed=7)(same), first, rtol=0, atol=0)
    assert not torch.allclose(ClipTransform(train=True, seed=8)(same), first)
    for i in range(1, B):
        assert not torch.allclose(first[i], first[0]), f"clip {i} got the same augmentation as clip 0"

    transform = ClipTransform(train=True, seed=7)
    assert not torch.allclose(transform(same), transform(same)), "successive batches must draw afresh"


def test_draws_stay_in_the_seed_ranges_and_flips_happen():
    params = AugmentRanges().sample(2000, torch.Generator().manual_seed(0))
    assert 0.4 < params.flip.float().mean() < 0.6
    assert params.angle.abs().max() <= 10 and params.angle.min() < -9 and params.angle.max() > 9
    for factor in (params.brightness, params.contrast):
        assert factor.min() >= 0.8 and factor.max() <= 1.2 and factor.min() < 0.82 and factor.max() > 1.18


def test_flips_happen_in_the_transform():
    # With rotation and jitter switched off only the flip remains, so each clip is either unchanged or mirrored.
    clips = random_clips(batch=32)
    plain = manual_normalise(clips)
    out = ClipTransform(train=True, seed=3, ranges=AugmentRanges(degrees=0, brightness=0, contrast=0))(clips)
    flipped = [torch.allclose(out[i], plain[i].flip(-1), atol=1e-5) for i in range(32)]
    unchanged = [torch.allclose(out[i], plain[i], atol=1e-5) for i in range(32)]
    assert all(f != u for f, u in zip(flipped, unchanged, strict=True))
    assert 5 < sum(flipped) < 27


def one_param(flip=False, angle=0.0, brightness=1.0, contrast=1.0) -> ClipAugment:
    return ClipAugment(
        flip=torch.tensor([flip]),
        angle=torch.tensor([angle]),
        brightness=torch.tensor([brightness]),
        contrast=torch.tensor([contrast]),
    )


def test_each_augmentation_matches_torchvision():
    frames = to_unit_float(random_clips(batch=1))
    image = frames[0, 2]
    cases = {
        "flip": (one_param(flip=True), TF.hflip(image)),
        "rotate": (one_param(angle=7.5), TF.rotate(image, 7.5, interpolation=TF.InterpolationMode.BILINEAR)),
        "rotate_back": (one_param(angle=-9.0), TF.rotate(image, -9.0, interpolation=TF.InterpolationMode.BILINEAR)),
        "brightness": (one_param(brightness=1.15), TF.adjust_brightness(image, 1.15)),
        "contrast": (one_param(contrast=0.85), TF.adjust_contrast(image, 0.85)),
    }
    for name, (params, expected) in cases.items():
        torch.testing.assert_close(augment(frames, params)[0, 2], expected, atol=1e-5, rtol=0, msg=name)

    # Rotation fills the uncovered corners with black.
    turned = augment(frames, one_param(angle=10.0))[0, 2]
    assert turned[:, 0, 0].abs().max() == 0


def test_a_gradient_flows_through_the_transform_after_inference_mode_made_its_constants():
    clips = random_clips(batch=2)
    per_channel.cache_clear()
    with torch.inference_mode():
        ClipTransform(train=False)(clips)
    frames = to_unit_float(clips).requires_grad_()
    normalize(frames).sum().backward()
    torch.testing.assert_close(frames.grad[:, :, 0], torch.full_like(frames.grad[:, :, 0], 1 / IMAGENET_STD[0]))


def test_on_the_cpu_the_transform_draws_what_a_cpu_generator_seeded_alike_draws():
    clips = random_clips()
    params = AugmentRanges().sample(B, torch.Generator().manual_seed(5))
    expected = normalize(augment(to_unit_float(clips), params))
    torch.testing.assert_close(ClipTransform(train=True, seed=5)(clips), expected, rtol=0, atol=0)
