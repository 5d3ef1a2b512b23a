"""The registry's classifiers: exact sizes, shapes, the backbone/head split, each backbone's own input, timm/NAME
with each temporal head, and loading local backbone weights."""

from __future__ import annotations

import warnings

import huggingface_hub.constants
import pytest
import timm
import torch
from conftest import run_cli
from safetensors.torch import save_file

from train.augment import IMAGENET_MEAN, IMAGENET_STD
from train.data import UsageError
from train.models import (
    MODEL_NAMES,
    SEED_MODELS,
    TEMPORAL,
    ModelConfig,
    build_model,
    check_start,
    count_parameters,
    default_lr,
    registry_lines,
)
from train.pretrained import hub_repo, pretrained_overlay, url_cache

# The seed's three, to the parameter, as before the registry; then the field's backbones with a linear frame head.
PARAMETERS = {
    "simple_cnn": 422_530,
    "resnet18": 11_603_650,
    "effnet_lstm": 5_619_966,
    "xception": 20_811_050,
    "efficientnet_b4": 17_552_202,
    "clip_vit_b16": 85_800_962,
}
INPUT = {  # each backbone's own input size and normalisation, from timm's data config
    "xception": (299, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "efficientnet_b4": (380, IMAGENET_MEAN, IMAGENET_STD),
    "clip_vit_b16": (224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
FEATURES = {"simple_cnn": 256, "resnet18": 512, "effnet_lstm": 1280}
INPUTS = {"simple_cnn": (2, 4, 3, 32, 32), "resnet18": (2, 3, 3, 64, 64), "effnet_lstm": (2, 3, 3, 64, 64)}


def quiet_build(config: ModelConfig) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_model(config)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_registered_model_has_its_size_and_input(name):
    """Built on the meta device, which allocates nothing: CLIP ViT-B/16's 86 M parameters cost no time."""
    with torch.device("meta"):
        model = quiet_build(ModelConfig(name))
    assert count_parameters(model) == PARAMETERS[name]
    if name in INPUT:
        size, mean, std = INPUT[name]
        assert (model.input.size, model.input.mean, model.input.std) == (size, pytest.approx(mean), pytest.approx(std))
    assert default_lr(name) == (1e-3 if name == "simple_cnn" else 1e-4)


def test_list_models_prints_the_registry_and_exits_0():
    result = run_cli("train.run", "--list-models")
    lines = result.stdout.splitlines()
    assert lines == registry_lines()
    for name in MODEL_NAMES:
        (line,) = [line for line in lines if line.split()[0] == name]
        assert f"{PARAMETERS[name]:,}" in line
    assert "299x299" in next(line for line in lines if line.startswith("xception"))
    assert lines[-1].startswith("timm/NAME")


@pytest.mark.parametrize("name", SEED_MODELS)
def test_sizes_shapes_and_split(name):
    torch.manual_seed(0)
    model = quiet_build(ModelConfig(name))
    assert count_parameters(model) == PARAMETERS[name]

    clips = torch.randn(INPUTS[name])
    model.train()
    assert model(clips).shape == (2, 2)

    model.eval()
    with torch.no_grad():
        logits = model(clips)
        features = model.forward_features(clips)
        assert features.shape == (*INPUTS[name][:2], FEATURES[name])
        assert model.feature_dim == FEATURES[name]
        torch.testing.assert_close(model.forward_head(features), logits)
        # The backbone sees frames independently: frame t's features do not depend on the other frames.
        torch.testing.assert_close(model.forward_features(clips[:, :1]), features[:, :1], rtol=1e-4, atol=1e-5)
    assert torch.isfinite(logits).all()


def test_dropout_and_lstm_hidden_are_used():
    model = quiet_build(ModelConfig("effnet_lstm", dropout=0.25, lstm_hidden=64))
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(p == 0.25 for p in dropouts)
    assert model.head.lstm.hidden_size == 64
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 2, 3, 32, 32)).shape == (1, 2)


def test_effnet_lstm_runs_its_lstm_in_fp32_under_mixed_precision():
    head = quiet_build(ModelConfig("effnet_lstm")).head.eval()
    seen = []
    head.lstm.register_forward_hook(lambda module, inputs, outputs: seen.append((inputs[0].dtype, outputs[0].dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        logits = head(torch.randn(2, 3, FEATURES["effnet_lstm"]))
    assert seen == [(torch.float32, torch.float32)]
    assert logits.shape == (2, 2)


def test_unknown_model_and_simple_cnn_pretrained_are_refused():
    with pytest.raises(UsageError, match="unknown model"):
        build_model(ModelConfig("vit"))
    with pytest.raises(UsageError, match="timm has no model 'no_such_net'"):
        build_model(ModelConfig("timm/no_such_net"))
    with pytest.raises(UsageError, match="--temporal is for timm/NAME"):
        build_model(ModelConfig("resnet18", temporal="lstm"))
    with pytest.raises(ValueError, match="no pretrained"):
        build_model(ModelConfig("simple_cnn", pretrained=True))


@pytest.mark.parametrize("name", ["resnet18", "effnet_lstm"])
def test_random_backbone_warns(name):
    with pytest.warns(UserWarning, match="random weights"):
        build_model(ModelConfig(name))


def test_simple_cnn_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_model(ModelConfig("simple_cnn"))


def assert_same_backbone(a: torch.nn.Module, b: torch.nn.Module) -> None:
    state_a, state_b = a.backbone.state_dict(), b.backbone.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", ["resnet18", "simple_cnn"])
def test_weights_file_of_backbone_keys(tmp_path, name):
    torch.manual_seed(1)
    source = quiet_build(ModelConfig(name))
    path = tmp_path / "backbone.safetensors"
    save_file(source.backbone.state_dict(), str(path))

    torch.manual_seed(2)
    fresh = quiet_build(ModelConfig(name))
    first = next(iter(source.backbone.state_dict()))
    assert not torch.equal(source.backbone.state_dict()[first], fresh.backbone.state_dict()[first])

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # weights given: no random-weights warning
        loaded = build_model(ModelConfig(name, weights=path))
    assert_same_backbone(source, loaded)


def test_weights_file_of_whole_timm_model_ignores_classifier(tmp_path):
    torch.manual_seed(3)
    full = timm.create_model("efficientnet_b0", num_classes=1000)
    state = full.state_dict()
    assert "classifier.weight" in state
    path = tmp_path / "effnet.safetensors"
    save_file(state, str(path))

    loaded = build_model(ModelConfig("effnet_lstm", weights=path))
    backbone = loaded.backbone.state_dict()
    assert "classifier.weight" not in backbone
    for key, value in backbone.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)


def test_weights_file_with_missing_or_foreign_keys_is_refused(tmp_path):
    source = quiet_build(ModelConfig("resnet18"))
    state = source.backbone.state_dict()

    missing = tmp_path / "missing.safetensors"
    save_file({key: value for key, value in state.items() if key != "layer1.0.conv1.weight"}, str(missing))
    with pytest.raises(ValueError, match="missing.*layer1.0.conv1.weight"):
        build_model(ModelConfig("resnet18", weights=missing))

    other = tmp_path / "effnet.safetensors"
    save_file(quiet_build(ModelConfig("effnet_lstm")).backbone.state_dict(), str(other))
    with pytest.raises(ValueError, match="does not fit"):
        build_model(ModelConfig("resnet18", weights=other))


def test_pretrained_and_weights_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        build_model(ModelConfig("resnet18", pretrained=True, weights=tmp_path / "w.safetensors"))


@pytest.mark.parametrize("temporal", TEMPORAL)
def test_any_timm_model_with_each_temporal_head(temporal):
    """timm's test_vit: its own mean and std (not ImageNet's), built for the frames it is given (a ViT's position
    embeddings fit one size), with each head over time."""
    torch.manual_seed(0)
    model = quiet_build(ModelConfig("timm/test_vit", temporal=temporal, frame_size=32))
    assert model.input.mean == pytest.approx((0.5, 0.5, 0.5)) and model.input.size == 160
    clips = torch.randn(2, 3, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        features = model.forward_features(clips)
        logits = model(clips)
        assert features.shape == (2, 3, model.feature_dim) and logits.shape == (2, 2)
        torch.testing.assert_close(model.forward_head(features), logits)
        # A clip is scored by its frames as a set or a sequence: the head sees time, not just the first frame.
        assert not torch.allclose(model(clips[:, :1]), logits)
    if temporal == "lstm":
        assert model.head.lstm.hidden_size == 128
    if temporal == "mean":  # the clip's logits are the mean of its frames' logits
        frames = torch.stack([model(clips[:, t : t + 1]) for t in range(3)]).mean(dim=0)
        with torch.no_grad():
            torch.testing.assert_close(frames, model(clips))


def test_attention_weighs_the_frames():
    """Attention pooling of identical frames is the frame alone; a frame unlike the others moves the clip."""
    torch.manual_seed(0)
    model = quiet_build(ModelConfig("timm/test_resnet", temporal="attention")).eval()
    frame = torch.randn(1, 1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(frame.repeat(1, 4, 1, 1, 1)), model(frame), rtol=1e-4, atol=1e-5)


def test_the_backbone_is_the_same_whatever_head_follows():
    """The feature cache draws a backbone from a seed and trains any head on its features: the head is built after."""
    states = []
    for config in (ModelConfig("timm/test_resnet"), ModelConfig("timm/test_resnet", temporal="lstm")):
        torch.manual_seed(5)
        states.append(quiet_build(config).backbone.state_dict())
    for key, value in states[0].items():
        torch.testing.assert_close(states[1][key], value, rtol=0, atol=0)


def test_pretrained_weights_resolve_for_any_timm_model_and_fail_at_once_offline(tmp_path, monkeypatch):
    """Hub-hosted weights (a timm/NAME model's, CLIP's) and URL-hosted ones (legacy_xception's) alike: where they
    cannot be had, one UsageError naming --weights before anything is built; a URL's file in torch's hub cache,
    which timm takes without asking the network, is no reason to stop."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch"))
    assert hub_repo("resnet10t") == "timm/resnet10t.c3_in1k"
    assert hub_repo("vit_base_patch16_clip_224").startswith("timm/vit_base_patch16_clip_224.")
    url = hub_repo("legacy_xception")
    assert url.startswith("https://") and url.endswith(".pth")
    for name in ("timm/resnet10t", "clip_vit_b16", "xception"):
        with pytest.raises(UsageError, match=r"pretrained weights \(.+\) are not in the cache, and HF_HUB_OFFLINE"):
            check_start(name, True, None)
    with pytest.raises(UsageError, match="simple_cnn has no pretrained weights"):
        check_start("simple_cnn", True, None)
    with pytest.raises(UsageError, match="timm has no model 'no_such_net'"):
        hub_repo("no_such_net")
    cached = url_cache(url)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert pretrained_overlay("legacy_xception") is None
    check_start("xception", True, None)


def test_a_vits_weights_file_fits_the_frame_size_it_is_built_for(tmp_path):
    """Published ViT weights are of 224 px (test_vit's of 160 px): built for 32 px frames, the backbone takes them
    with its position embeddings resampled to its 2 x 2 grid of patches, every other weight as saved."""
    torch.manual_seed(4)
    source = quiet_build(ModelConfig("timm/test_vit"))
    path = tmp_path / "vit.safetensors"
    save_file(source.backbone.state_dict(), str(path))
    loaded = build_model(ModelConfig("timm/test_vit", weights=path, frame_size=32))
    state = loaded.backbone.state_dict()
    assert state["pos_embed"].shape == (1, 1 + 2 * 2, source.feature_dim)
    for key, value in source.backbone.state_dict().items():
        if key != "pos_embed":
            torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    with torch.no_grad():
        assert torch.isfinite(loaded.eval()(torch.randn(1, 2, 3, 32, 32))).all()
